//! An entry written by a plain Redis client (XADD with its own fields) reaches a switchyard
//! group subscriber as a JSON object, is acknowledged like ours, and nothing stays pending.

use futures::StreamExt;
use switchyard_core::testkit::require_server;
use switchyard_core::transport::{SubscribeOptions, Subscriber};
use switchyard_redis::RedisTransport;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_xadd_entry_is_delivered_and_acked() {
    if !require_server(
        "a_plain_xadd_entry_is_delivered_and_acked",
        "Redis",
        "127.0.0.1:6379",
    ) {
        return;
    }
    let topic = format!("plain.{}", &switchyard_core::message::new_id()[..8]);
    let t = RedisTransport::from_url("redis://127.0.0.1:6379").expect("url");
    let mut sub = t
        .subscribe(&topic, SubscribeOptions::group("g"))
        .await
        .expect("subscribe");
    let client = redis::Client::open("redis://127.0.0.1:6379").expect("client");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    // The stream key switchyard uses for a topic (docs/TRANSPORTS.md).
    let key = format!("sy:s:{topic}");
    let entry: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("user")
        .arg("ann")
        .arg("action")
        .arg("login")
        .query_async(&mut con)
        .await
        .expect("xadd");
    let d = tokio::time::timeout(std::time::Duration::from_secs(10), sub.next())
        .await
        .expect("delivered in time")
        .expect("open")
        .expect("delivery");
    let body: serde_json::Value = serde_json::from_slice(&d.envelope.payload).expect("json");
    assert_eq!(body, serde_json::json!({"user": "ann", "action": "login"}));
    assert_eq!(d.envelope.id, format!("{key}/{entry}"), "id = the entry's");
    d.ack().await.expect("ack");
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(&key)
        .arg("g")
        .query_async(&mut con)
        .await
        .expect("xpending");
    let redis::Value::Array(summary) = pending else {
        panic!("unexpected XPENDING reply {pending:?}");
    };
    assert_eq!(
        summary.first(),
        Some(&redis::Value::Int(0)),
        "the entry stayed pending: {summary:?}"
    );
    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap_or(0);
}
