//! A bounded stream never drops an entry a group has not settled: at `max_len` the publisher
//! trims what every group settled, and refuses while what is left is that long. Redis' own
//! `XADD MAXLEN` dropped the oldest entries, read or not.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use switchyard_core::error::TransportError;
use switchyard_core::message::Envelope;
use switchyard_core::testkit::require_server;
use switchyard_core::transport::{Publisher, SubscribeOptions, Subscriber};
use switchyard_redis::RedisTransport;

const MAX_LEN: usize = 100;

fn event(topic: &str, n: usize) -> Envelope {
    Envelope::new(topic, serde_json::to_vec(&n).expect("json"))
}

/// Waits out the publisher's once-a-second look at the stream.
async fn next_look() {
    tokio::time::sleep(Duration::from_millis(1_100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_refuses_rather_than_dropping_unread_entries() {
    if !require_server("redis_bounded_stream", "Redis", "127.0.0.1:6379") {
        return;
    }
    let id = &switchyard_core::message::new_id()[..8];
    let url = format!("redis://127.0.0.1:6379?ns=bound{id}&max_len={MAX_LEN}");
    let transport = RedisTransport::from_url(&url).expect("url");
    let topic = format!("conformance.bounded.{id}");
    // A group that reads nothing yet.
    let reader = RedisTransport::from_url(&url).expect("url");
    let mut group = reader
        .subscribe(&topic, SubscribeOptions::group("slow").prefetch(10))
        .await
        .expect("subscribe");
    let total = MAX_LEN + MAX_LEN / 2;
    for n in 0..total {
        transport.publish(event(&topic, n)).await.expect("publish");
    }
    next_look().await;
    let refused = transport.publish(event(&topic, total)).await;
    match refused {
        Err(TransportError::Rejected(e)) => {
            assert!(e.message.contains("full"), "{e}");
        }
        other => panic!("a full stream of unread entries took a publish: {other:?}"),
    }
    // The group reads and settles everything: all there, nothing trimmed unread.
    let mut got = BTreeSet::new();
    while got.len() < total {
        let d = tokio::time::timeout(Duration::from_secs(10), group.next())
            .await
            .unwrap_or_else(|_| panic!("{} of {total} read", got.len()))
            .expect("open")
            .expect("delivery");
        got.insert(serde_json::from_slice::<usize>(&d.envelope.payload).expect("n"));
        d.ack().await.expect("ack");
    }
    assert_eq!(got, (0..total).collect(), "every entry kept until read");
    // Settled: trimmed at the next look, and publishing goes on.
    next_look().await;
    transport
        .publish(event(&topic, total))
        .await
        .expect("publish once the group settled");
    let d = tokio::time::timeout(Duration::from_secs(10), group.next())
        .await
        .expect("the next one")
        .expect("open")
        .expect("delivery");
    assert_eq!(
        serde_json::from_slice::<usize>(&d.envelope.payload).expect("n"),
        total
    );
    d.ack().await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_no_group_reads_keeps_its_newest_half() {
    if !require_server("redis_bounded_stream", "Redis", "127.0.0.1:6379") {
        return;
    }
    let id = &switchyard_core::message::new_id()[..8];
    let url = format!("redis://127.0.0.1:6379?ns=bound{id}&max_len={MAX_LEN}");
    let transport = RedisTransport::from_url(&url).expect("url");
    let topic = format!("conformance.unread.{id}");
    for n in 0..MAX_LEN {
        transport.publish(event(&topic, n)).await.expect("publish");
    }
    next_look().await;
    transport
        .publish(event(&topic, MAX_LEN))
        .await
        .expect("no group to wait for: room made");
    let client = redis::Client::open("redis://127.0.0.1:6379").expect("client");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let len: usize = redis::cmd("XLEN")
        .arg(format!("sy:s:{topic}"))
        .query_async(&mut con)
        .await
        .expect("xlen");
    assert_eq!(len, MAX_LEN / 2 + 1, "the newest half, and the new one");
}
