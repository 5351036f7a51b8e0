//! An entry a group member holds unsettled past `claim_idle` is not delivered to it a second
//! time by its own XAUTOCLAIM (which takes back idle entries, its own among them), and is
//! delivered once it is handed back; another member still takes over the entries of one that
//! died.

use std::time::Duration;

use futures::StreamExt;
use switchyard_core::message::Envelope;
use switchyard_core::testkit::require_server;
use switchyard_core::transport::{Publisher, SubscribeOptions, Subscriber, Subscription};
use switchyard_redis::RedisTransport;

const URL: &str = "redis://127.0.0.1:6379?claim_idle_ms=200";

/// The ids delivered to `sub` within `wait` (none settled).
async fn ids_within(sub: &mut Subscription, wait: Duration) -> Vec<String> {
    let mut ids = Vec::new();
    let until = tokio::time::Instant::now() + wait;
    while let Ok(Some(delivery)) = tokio::time::timeout_at(until, sub.next()).await {
        let delivery = delivery.expect("delivery");
        ids.push(delivery.envelope.id.clone());
        // Held, not settled: forgotten here without a hand-back (the member lives on).
        std::mem::forget(delivery);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_held_past_claim_idle_is_not_delivered_again_to_its_reader() {
    if !require_server(
        "an_entry_held_past_claim_idle_is_not_delivered_again_to_its_reader",
        "Redis",
        "127.0.0.1:6379",
    ) {
        return;
    }
    let topic = format!("held.{}", &switchyard_core::message::new_id()[..8]);
    let t = RedisTransport::from_url(URL).expect("url");
    let mut sub = t
        .subscribe(&topic, SubscribeOptions::group("g"))
        .await
        .expect("subscribe");
    t.publish(Envelope::new(&topic, b"{}".to_vec()))
        .await
        .expect("publish");
    let first = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("delivered in time")
        .expect("open")
        .expect("delivery");
    // Held for ten times `claim_idle`: the member claims idle entries every 100 ms.
    let again = ids_within(&mut sub, Duration::from_secs(2)).await;
    assert!(
        again.is_empty(),
        "{} delivered again while held: {again:?}",
        first.envelope.id
    );
    // Handed back, it comes back (to this member, the only one).
    let id = first.envelope.id.clone();
    first.nack(None).await.expect("hand back");
    let back = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("back in time")
        .expect("open")
        .expect("delivery");
    assert_eq!(back.envelope.id, id);
    back.ack().await.expect("ack");
    assert!(ids_within(&mut sub, Duration::from_millis(600))
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_member_takes_over_what_a_dead_one_held() {
    if !require_server(
        "another_member_takes_over_what_a_dead_one_held",
        "Redis",
        "127.0.0.1:6379",
    ) {
        return;
    }
    let topic = format!("held.{}", &switchyard_core::message::new_id()[..8]);
    // The stream key switchyard uses for a topic (docs/TRANSPORTS.md).
    let key = format!("sy:s:{topic}");
    let client = redis::Client::open("redis://127.0.0.1:6379").expect("client");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut con)
        .await
        .expect("group");
    let t = RedisTransport::from_url(URL).expect("url");
    t.publish(Envelope::new(&topic, b"{}".to_vec()))
        .await
        .expect("publish");
    // A member that read it and died: a plain XREADGROUP, never acknowledged nor renewed.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("dead")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&key)
        .arg(">")
        .query_async(&mut con)
        .await
        .expect("read by the member that dies");
    let mut taking_over = t
        .subscribe(&topic, SubscribeOptions::group("g"))
        .await
        .expect("subscribe");
    let d = tokio::time::timeout(Duration::from_secs(10), taking_over.next())
        .await
        .expect("taken over in time")
        .expect("open")
        .expect("delivery");
    assert_eq!(d.envelope.subject, topic);
    d.ack().await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_held_by_a_live_member_is_not_taken_over() {
    if !require_server(
        "an_entry_held_by_a_live_member_is_not_taken_over",
        "Redis",
        "127.0.0.1:6379",
    ) {
        return;
    }
    let topic = format!("held.{}", &switchyard_core::message::new_id()[..8]);
    let t = RedisTransport::from_url(URL).expect("url");
    // A prefetch of one: the member's only slot is taken by the entry it holds, so its own
    // reading loop claims nothing meanwhile; only its lease keeps the entry.
    let mut holder = t
        .subscribe(&topic, SubscribeOptions::group("g").prefetch(1))
        .await
        .expect("subscribe");
    t.publish(Envelope::new(&topic, b"{}".to_vec()))
        .await
        .expect("publish");
    let held = tokio::time::timeout(Duration::from_secs(10), holder.next())
        .await
        .expect("delivered in time")
        .expect("open")
        .expect("delivery");
    let other = RedisTransport::from_url(URL).expect("url");
    let mut waiting = other
        .subscribe(&topic, SubscribeOptions::group("g"))
        .await
        .expect("subscribe");
    // Held, alive, for ten times `claim_idle`: the other member never gets it.
    let taken = ids_within(&mut waiting, Duration::from_secs(2)).await;
    assert!(taken.is_empty(), "taken over from a live member: {taken:?}");
    held.ack().await.expect("ack");
    assert!(ids_within(&mut waiting, Duration::from_millis(600))
        .await
        .is_empty());
}
