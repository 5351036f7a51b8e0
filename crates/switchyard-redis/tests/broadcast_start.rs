//! A broadcast subscriber gets every message published once `subscribe` returned, the first
//! ones too: it reads from where the stream ended then, not from wherever it ends when its
//! reader's first read reaches the server (on a runtime of one thread, that is after the
//! test's next publish), nor from the end again after a read that timed out.

use std::time::Duration;

use futures::StreamExt;
use switchyard_core::message::Envelope;
use switchyard_core::testkit::require_server;
use switchyard_core::transport::{Publisher, SubscribeOptions, Subscriber};
use switchyard_redis::RedisTransport;

const URL: &str = "redis://127.0.0.1:6379";

#[tokio::test]
async fn what_is_published_once_subscribed_is_received() {
    if !require_server("broadcast_start", "Redis", "127.0.0.1:6379") {
        return;
    }
    let topic = format!(
        "broadcast_start_{}",
        &switchyard_core::message::new_id()[..8]
    );
    let subscriber = RedisTransport::from_url(URL).expect("url");
    let publisher = RedisTransport::from_url(URL).expect("url");
    publisher
        .publish(Envelope::new(topic.as_str(), b"{\"before\":true}".to_vec()))
        .await
        .expect("publish");
    let mut sub = subscriber
        .subscribe(&topic, SubscribeOptions::broadcast())
        .await
        .expect("subscribe");
    let first = Envelope::new(topic.as_str(), b"{}".to_vec());
    let first_id = first.id.clone();
    publisher.publish(first).await.expect("publish");
    let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("the first message published after subscribing, within 5 s")
        .expect("open")
        .expect("delivery");
    assert_eq!(got.envelope.id, first_id);
    got.ack().await.expect("ack");
    // A read that waited in vain (its 500 ms) and one published just after it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let later = Envelope::new(topic.as_str(), b"{}".to_vec());
    let later_id = later.id.clone();
    publisher.publish(later).await.expect("publish");
    let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("the message published after an idle read, within 5 s")
        .expect("open")
        .expect("delivery");
    assert_eq!(got.envelope.id, later_id);
}
