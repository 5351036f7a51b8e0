//! A group member that stops while its read is waiting on the server hands back what that
//! read brings: the entries go to another member at once, not after `claim_idle` (here 30 s,
//! far past what the test waits), when XAUTOCLAIM would take them over.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use switchyard_core::testkit::require_server;
use switchyard_core::transport::{SubscribeOptions, Subscriber};
use switchyard_redis::RedisTransport;

const URL: &str = "redis://127.0.0.1:6379?claim_idle_ms=30000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_stopped_members_last_read_brings_goes_to_another_member() {
    if !require_server("reader_stops", "Redis", "127.0.0.1:6379") {
        return;
    }
    let topic = format!("held.stops_{}", &switchyard_core::message::new_id()[..8]);
    let member = RedisTransport::from_url(URL).expect("url");
    let stopped = member
        .subscribe(&topic, SubscribeOptions::group("g"))
        .await
        .expect("subscribe");
    // Its reader waits in a blocking read of the group; it stops, and then the read returns
    // what is published.
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(stopped);
    // Ten entries in one transaction: the waiting read returns them all at once.
    let mut sent = HashSet::new();
    let client = redis::Client::open("redis://127.0.0.1:6379").expect("client");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let mut batch = redis::pipe();
    batch.atomic();
    for _ in 0..10 {
        let id = switchyard_core::message::new_id();
        batch
            .cmd("XADD")
            .arg(format!("sy:s:{topic}"))
            .arg("*")
            .arg("i")
            .arg(&id)
            .arg("h")
            .arg("{}")
            .arg("p")
            .arg("{}")
            .ignore();
        sent.insert(id);
    }
    batch.query_async::<()>(&mut con).await.expect("publish");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut other = RedisTransport::from_url(URL)
        .expect("url")
        .subscribe(&topic, SubscribeOptions::group("g"))
        .await
        .expect("subscribe");
    let mut got = HashSet::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while got.len() < sent.len() {
        let Ok(Some(delivery)) = tokio::time::timeout_at(until, other.next()).await else {
            break;
        };
        let delivery = delivery.expect("delivery");
        got.insert(delivery.envelope.id.clone());
        delivery.ack().await.expect("ack");
    }
    assert_eq!(
        got.len(),
        sent.len(),
        "{} of {} handed on within 5 s (claim_idle is 30 s)",
        got.len(),
        sent.len()
    );
}
