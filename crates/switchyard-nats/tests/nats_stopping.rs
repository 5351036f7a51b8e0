//! A reader that stops hands back what JetStream still sends it: the next member of its group
//! gets it at once, not after the ack wait (here 30 s, far past what the test waits).

use std::time::Duration;

use futures::StreamExt;
use switchyard_core::message::Envelope;
use switchyard_core::testkit::require_server;
use switchyard_core::transport::{Publisher, SubscribeOptions, Subscriber};
use switchyard_nats::NatsTransport;

const URL: &str = "nats://127.0.0.1:4222?ack_wait_ms=30000";

/// Rounds of each case: each is a race the broker may or may not run the bad way.
const ROUNDS: usize = 12;

async fn next_member_gets(reader: &NatsTransport, topic: &str, id: &str) {
    let mut next = reader
        .subscribe(topic, SubscribeOptions::group("g").prefetch(64))
        .await
        .expect("subscribe");
    let delivery = tokio::time::timeout(Duration::from_secs(5), next.next())
        .await
        .unwrap_or_else(|_| panic!("{id} not handed on within 5 s (the ack wait is 30 s)"))
        .expect("open")
        .expect("delivery");
    assert_eq!(delivery.envelope.id, id);
    delivery.ack().await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_sent_to_a_reader_that_stopped_goes_to_the_next_member_at_once() {
    if !require_server("nats_stopping", "NATS", "127.0.0.1:4222") {
        return;
    }
    let topic = format!("stopping_{}", &switchyard_core::message::new_id()[..8]);
    let reader = NatsTransport::from_url(URL).expect("url");
    let publisher = NatsTransport::from_url(URL).expect("url");
    for round in 0..2 * ROUNDS {
        let stopped = reader
            .subscribe(&topic, SubscribeOptions::group("g").prefetch(64))
            .await
            .expect("subscribe");
        // Its pull request is open on the server.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sent = Envelope::new(&topic, b"{}".to_vec());
        let id = sent.id.clone();
        if round % 2 == 0 {
            // Published just after the reader stopped (on another connection): the server
            // may not know yet that it is gone.
            drop(stopped);
            publisher.publish(sent).await.expect("publish");
        } else {
            // Published while it reads, and it stops before taking it (it may still be on
            // its way).
            publisher.publish(sent).await.expect("publish");
            drop(stopped);
        }
        next_member_gets(&reader, &topic, &id).await;
    }
}
