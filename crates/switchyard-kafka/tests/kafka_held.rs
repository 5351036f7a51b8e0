//! A member whose handlers hold every message it may have in flight (its prefetch) for longer
//! than `max.poll.interval.ms` stays in its group: it keeps polling with its partitions paused,
//! so what it holds is not given to another member (and handled twice) meanwhile, and it reads
//! on once a message is settled. Against Tansu on 127.0.0.1:9092.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use switchyard_core::message::{header, Envelope};
use switchyard_core::transport::{Publisher, SubscribeOptions, Subscriber, Subscription};
use switchyard_kafka::{KafkaOptions, KafkaTransport};

const KAFKA: &str = "127.0.0.1:9092";

/// The shortest the client allows (it must not be below the session timeout, 6 s).
const POLL_INTERVAL: Duration = Duration::from_secs(7);

/// What `sub` delivers within `wait`, each acknowledged, by payload.
async fn within(sub: &mut Subscription, wait: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let until = tokio::time::Instant::now() + wait;
    while let Ok(Some(delivery)) = tokio::time::timeout_at(until, sub.next()).await {
        let delivery = delivery.expect("delivery");
        got.push(String::from_utf8_lossy(&delivery.envelope.payload).into_owned());
        delivery.ack().await.expect("ack");
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_holding_its_whole_prefetch_stays_in_its_group() {
    if !switchyard_core::testkit::require_server("kafka_held", "Kafka (Tansu)", KAFKA) {
        return;
    }
    let topic = format!("held.{}", &switchyard_core::message::new_id()[..8]);
    let member = || {
        let options: KafkaOptions = format!("kafka://{KAFKA}").parse().expect("url");
        KafkaTransport::new(options.max_poll_interval(POLL_INTERVAL))
    };
    let (a, b) = (member(), member());
    let first = a
        .subscribe(&topic, SubscribeOptions::group("g").prefetch(1))
        .await
        .expect("subscribe");
    let second = b
        .subscribe(&topic, SubscribeOptions::group("g").prefetch(1))
        .await
        .expect("subscribe");
    let mut both: Subscription = Box::pin(futures::stream::select(first, second));
    a.publish(Envelope::new(topic.as_str(), b"{\"n\":0}".to_vec()))
        .await
        .expect("publish");
    let held = tokio::time::timeout(Duration::from_secs(60), both.next())
        .await
        .expect("delivered in time")
        .expect("open")
        .expect("delivery");
    // Held for three poll intervals while both members read on: had its member stopped
    // polling, it would have left the group and the other would read it again.
    let again = within(&mut both, 3 * POLL_INTERVAL).await;
    assert!(again.is_empty(), "read again while held: {again:?}");
    held.ack().await.expect("ack");
    // Its member reads again, on every partition (the keys spread them).
    for n in 1..=12 {
        a.publish(
            Envelope::new(topic.as_str(), format!("{{\"n\":{n}}}").into_bytes())
                .with_header(header::ORDERING_KEY, format!("k{n}")),
        )
        .await
        .expect("publish");
    }
    let mut counts = BTreeMap::<String, usize>::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while counts.len() < 12 && tokio::time::Instant::now() < until {
        for got in within(&mut both, Duration::from_secs(1)).await {
            *counts.entry(got).or_default() += 1;
        }
    }
    for got in within(&mut both, Duration::from_secs(2)).await {
        *counts.entry(got).or_default() += 1;
    }
    assert_eq!(counts.len(), 12, "read after the hold: {counts:?}");
    assert!(counts.values().all(|&c| c == 1), "read twice: {counts:?}");
}
