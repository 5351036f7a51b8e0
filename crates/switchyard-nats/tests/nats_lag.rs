//! Consumer lag as the broker tells it: messages of a topic a consumer group has not been
//! given yet, read with `Subscriber::lag`, and reported as `switchyard_consumer_lag` for a
//! served service while metrics are recorded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard_core::message::Envelope;
use switchyard_core::testkit::require_server;
use switchyard_core::transport::{Publisher, SubscribeOptions, Subscriber, Transport};
use switchyard_core::{server, Service};
use switchyard_nats::NatsTransport;

async fn lag_until(t: &dyn Transport, topic: &str, group: &str, ok: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lag = t
            .lag(topic, group)
            .await
            .expect("lag")
            .expect("the broker tells");
        if ok(lag) || Instant::now() > deadline {
            return lag;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_of_a_group_is_what_it_has_not_been_given() {
    if !require_server("nats_consumer_lag", "NATS", "127.0.0.1:4222") {
        return;
    }
    let id = &switchyard_core::message::new_id()[..8];
    let t =
        Arc::new(NatsTransport::from_url(&format!("nats://127.0.0.1:4222/lag{id}")).expect("url"));
    let topic = format!("lag.t{id}");
    let mut sub = t
        .subscribe(&topic, SubscribeOptions::group("lagging").prefetch(1))
        .await
        .expect("subscribe");
    for i in 0..5 {
        t.publish(Envelope::new(&topic, format!("{i}")))
            .await
            .expect("publish");
    }
    let first = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a delivery")
        .expect("open")
        .expect("delivery");
    let lag = lag_until(t.as_ref(), &topic, "lagging", |l| l <= 4).await;
    assert!(
        (3..=4).contains(&lag),
        "5 published, 1 or 2 given: lag {lag}"
    );
    first.ack().await.expect("ack");
    for _ in 0..4 {
        let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("a delivery")
            .expect("open")
            .expect("delivery");
        d.ack().await.expect("ack");
    }
    assert_eq!(
        lag_until(t.as_ref(), &topic, "lagging", |l| l == 0).await,
        0
    );

    // Served: the gauge follows, per service and topic.
    switchyard_core::observe::install_prometheus().expect("metrics");
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let service_topic = format!("lag.s{id}");
    // Two at a time: the rest of what is published waits at the broker, not given yet.
    let policy = switchyard_core::policy::ConsumerPolicy {
        concurrency: 2,
        ..Default::default()
    };
    let service = Service::new(format!("lagger{id}"))
        .consumer_policy(policy)
        .on_event(&service_topic, move |_: u32| {
            let g = g.clone();
            async move {
                // Held until the test lets it go: what is published meanwhile waits.
                let _ = g.acquire().await.map(|p| p.forget());
            }
        });
    let served = server::serve(t.clone(), service).await.expect("serve");
    for i in 0..40u32 {
        t.publish(Envelope::new(&service_topic, i.to_string()))
            .await
            .expect("publish");
    }
    let reported = || {
        switchyard_core::observe::render()
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("switchyard_consumer_lag{") && l.contains(&service_topic))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = reported();
    while seen.is_none_or(|l| l < 1.0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        seen = reported();
    }
    assert!(
        seen.is_some_and(|l| l >= 1.0),
        "a lag reported while the handler is held: {seen:?}"
    );
    gate.add_permits(1_000);
    served.shutdown().await;
}
