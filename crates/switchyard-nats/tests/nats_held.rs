//! A message a live group member holds past the ack wait (a slow handler) is neither
//! redelivered to another member nor to itself: the member renews it while it holds it. One
//! a member never settles and stops renewing (it died) is redelivered after the ack wait.

use std::time::Duration;

use futures::StreamExt;
use switchyard_core::message::Envelope;
use switchyard_core::testkit::require_server;
use switchyard_core::transport::{Publisher, SubscribeOptions, Subscriber, Subscription};
use switchyard_nats::NatsTransport;

const URL: &str = "nats://127.0.0.1:4222?ack_wait_ms=300";

/// The ids delivered to `sub` within `wait`, each acknowledged.
async fn ids_within(sub: &mut Subscription, wait: Duration) -> Vec<String> {
    let mut ids = Vec::new();
    let until = tokio::time::Instant::now() + wait;
    while let Ok(Some(delivery)) = tokio::time::timeout_at(until, sub.next()).await {
        let delivery = delivery.expect("delivery");
        ids.push(delivery.envelope.id.clone());
        delivery.ack().await.expect("ack");
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_held_by_a_live_member_past_the_ack_wait_is_not_redelivered() {
    if !require_server("nats_held", "NATS", "127.0.0.1:4222") {
        return;
    }
    let topic = format!("held_{}", &switchyard_core::message::new_id()[..8]);
    let t = NatsTransport::from_url(URL).expect("url");
    let holder = t
        .subscribe(&topic, SubscribeOptions::group("g").prefetch(1))
        .await
        .expect("subscribe");
    let other = NatsTransport::from_url(URL).expect("url");
    let waiting = other
        .subscribe(&topic, SubscribeOptions::group("g"))
        .await
        .expect("subscribe");
    t.publish(Envelope::new(&topic, b"{}".to_vec()))
        .await
        .expect("publish");
    // Whichever member got it holds it for seven ack waits; neither gets it again.
    let mut both: Subscription = Box::pin(futures::stream::select(holder, waiting));
    let held = tokio::time::timeout(Duration::from_secs(10), both.next())
        .await
        .expect("delivered in time")
        .expect("open")
        .expect("delivery");
    let again = ids_within(&mut both, Duration::from_millis(2_100)).await;
    assert!(
        again.is_empty(),
        "{} redelivered while held: {again:?}",
        held.envelope.id
    );
    held.ack().await.expect("ack");
    assert!(ids_within(&mut both, Duration::from_millis(900))
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_a_member_that_died_is_redelivered_after_the_ack_wait() {
    use async_nats::jetstream::consumer::{pull, AckPolicy};
    if !require_server("nats_held", "NATS", "127.0.0.1:4222") {
        return;
    }
    let topic = format!("held_{}", &switchyard_core::message::new_id()[..8]);
    let t = NatsTransport::from_url(URL).expect("url");
    t.publish(Envelope::new(&topic, b"{}".to_vec()))
        .await
        .expect("publish");
    // A member that fetched it and died: a plain client of the group's durable consumer (the
    // names docs/TRANSPORTS.md gives), that neither acknowledges nor renews it.
    let js = async_nats::jetstream::new(
        async_nats::connect("nats://127.0.0.1:4222")
            .await
            .expect("connect"),
    );
    let stream = js
        .get_stream(format!("SY_{topic}"))
        .await
        .expect("the topic's stream");
    let dead: async_nats::jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            "g",
            pull::Config {
                durable_name: Some("g".into()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_millis(300),
                ..Default::default()
            },
        )
        .await
        .expect("consumer");
    let mut fetched = dead
        .fetch()
        .max_messages(1)
        .messages()
        .await
        .expect("fetch");
    let taken = fetched.next().await.expect("one").expect("message");
    let mut taking_over = t
        .subscribe(&topic, SubscribeOptions::group("g"))
        .await
        .expect("subscribe");
    let d = tokio::time::timeout(Duration::from_secs(10), taking_over.next())
        .await
        .expect("redelivered in time")
        .expect("open")
        .expect("delivery");
    assert_eq!(d.envelope.subject, topic);
    d.ack().await.expect("ack");
    drop(taken);
}
