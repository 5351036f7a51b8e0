//! A poison event larger than what can be dead-lettered or retried whole (over 1 MiB, put on
//! the topic by a client with a higher limit) must not pin its partition's offset: it is
//! dead-lettered without its payload, and the valid events behind it are handled once, not
//! again at every restart. Against Tansu on 127.0.0.1:9092.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard_core::message::{header, Envelope};
use switchyard_core::middleware::dead_letter::ORIGINAL_SIZE;
use switchyard_core::service::Service;
use switchyard_core::transport::{Publisher, SubscribeOptions, Subscriber, Transport};
use switchyard_kafka::KafkaTransport;

const KAFKA: &str = "127.0.0.1:9092";

#[derive(serde::Deserialize)]
struct Numbered {
    n: u32,
}

fn service(topic: &str, handled: Arc<Mutex<BTreeMap<u32, u32>>>) -> Service {
    Service::new("kafka-hostile").on_event(topic, move |m: Numbered| {
        let handled = handled.clone();
        async move {
            *handled
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(m.n)
                .or_default() += 1;
            Ok::<(), switchyard_core::HandlerError>(())
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_over_the_limit_does_not_pin_the_offset() {
    if !switchyard_core::testkit::require_server("kafka_hostile", "Kafka (Tansu)", KAFKA) {
        return;
    }
    let topic = format!("hostile.{}", &switchyard_core::message::new_id()[..8]);
    let url = format!("kafka://{KAFKA}");
    // What a raw client with a higher limit can put on the topic.
    let raw = KafkaTransport::from_url(&format!("{url}?max_message_bytes=4194304")).expect("url");
    let mut big = Envelope::new(topic.as_str(), vec![b'z'; 1536 * 1024]);
    big.headers.insert(header::CONTENT_TYPE, "application/json");
    raw.publish(big).await.expect("publish the poison event");
    for n in 1..=20 {
        raw.publish(Envelope::new(topic.as_str(), format!("{{\"n\":{n}}}")))
            .await
            .expect("publish");
    }
    let watcher = KafkaTransport::from_url(&url).expect("url");
    let mut dead = watcher
        .subscribe(&format!("{topic}.dlq"), SubscribeOptions::group("watch"))
        .await
        .expect("subscribe dlq");
    let handled = Arc::new(Mutex::new(BTreeMap::new()));
    let served = |handled| async {
        let t: Arc<dyn Transport> = Arc::new(KafkaTransport::from_url(&url).expect("url"));
        switchyard_core::server::serve(t, service(&topic, handled))
            .await
            .expect("serve")
    };
    let server = served(handled.clone()).await;
    let patience = Duration::from_secs(60);
    let d = tokio::time::timeout(patience, dead.next())
        .await
        .expect("the poison event dead-lettered")
        .expect("stream open")
        .expect("delivery");
    assert_eq!(
        d.envelope.headers.get(ORIGINAL_SIZE),
        Some((1536 * 1024).to_string().as_str())
    );
    assert!(d.envelope.payload.is_empty());
    let _ = d.ack().await;
    let deadline = Instant::now() + patience;
    while handled.lock().unwrap_or_else(|p| p.into_inner()).len() < 20 {
        assert!(Instant::now() < deadline, "valid events not all handled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Settled offsets are committed when a member leaves: a restart reads nothing again.
    server.shutdown().await;
    let server = served(handled.clone()).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    server.shutdown().await;
    let counts = handled.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        counts.values().all(|&c| c == 1),
        "valid events handled again after a restart: {counts:?}"
    );
    if let Ok(Some(Ok(extra))) = tokio::time::timeout(Duration::from_secs(1), dead.next()).await {
        panic!("dead-lettered again: {:?}", extra.envelope.headers);
    }
}

/// Topics whose name starts with `prefix`, as the broker lists them.
fn topics_starting(prefix: &str) -> usize {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", KAFKA)
        .create()
        .expect("client");
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    md.topics()
        .iter()
        .filter(|t| t.name().starts_with(prefix))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_subscriber_leaves_no_retry_topic_behind() {
    if !switchyard_core::testkit::require_server("kafka_hostile", "Kafka (Tansu)", KAFKA) {
        return;
    }
    const PREFIX: &str = "sy.retry.sy-broadcast-";
    let topic = format!("hostile.{}", &switchyard_core::message::new_id()[..8]);
    let t = KafkaTransport::from_url(&format!("kafka://{KAFKA}")).expect("url");
    let before = tokio::task::spawn_blocking(|| topics_starting(PREFIX))
        .await
        .expect("list");
    let sub = t
        .subscribe(&topic, SubscribeOptions::broadcast())
        .await
        .expect("subscribe");
    let during = tokio::task::spawn_blocking(|| topics_starting(PREFIX))
        .await
        .expect("list");
    assert_eq!(during, before + 1, "the subscriber's retry topic");
    drop(sub);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = tokio::task::spawn_blocking(|| topics_starting(PREFIX))
            .await
            .expect("list");
        if now <= before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "retry topic left behind: {now} > {before}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
