//! A durable consumer keeps the settings of the member that made it: a later member of the
//! group asking for more in flight (a dead-letter reader holding thousands unsettled) must
//! get them, not the first member's bound.

use std::time::Duration;

use futures::StreamExt;
use switchyard_core::message::Envelope;
use switchyard_core::testkit::require_server;
use switchyard_core::transport::{Publisher, SubscribeOptions, Subscriber};
use switchyard_nats::NatsTransport;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_member_asking_for_more_in_flight_gets_it() {
    if !require_server("nats_group_bound", "NATS", "127.0.0.1:4222") {
        return;
    }
    let id = &switchyard_core::message::new_id()[..8];
    let url = format!("nats://127.0.0.1:4222/bound{id}");
    let topic = format!("bound.{id}");
    let transport = NatsTransport::from_url(&url).expect("url");
    // The group's durable made by a member taking two at a time.
    let first = transport
        .subscribe(&topic, SubscribeOptions::group("readers").prefetch(2))
        .await
        .expect("subscribe");
    drop(first);
    for n in 0..50 {
        transport
            .publish(Envelope::new(&topic, n.to_string()))
            .await
            .expect("publish");
    }
    let mut second = transport
        .subscribe(&topic, SubscribeOptions::group("readers").prefetch(100))
        .await
        .expect("subscribe again");
    let mut held = Vec::new();
    while held.len() < 50 {
        match tokio::time::timeout(Duration::from_secs(5), second.next()).await {
            Ok(Some(Ok(d))) => held.push(d),
            other => panic!(
                "{} held unsettled, then {:?}",
                held.len(),
                other.map(|o| o.map(|r| r.map(|d| d.envelope.id.clone())))
            ),
        }
    }
    for d in held {
        d.ack().await.expect("ack");
    }
}
