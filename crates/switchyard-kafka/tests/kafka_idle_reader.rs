//! A group member's reader that comes back after a pause gets what arrives next, also when
//! the member's keeper (which polls in an idle reader's place, so that rebalances proceed)
//! reads it: the reader waited for the unit of prefetch the keeper held, the keeper kept the
//! message with that unit, and each waited on the other for good. Against Tansu on
//! 127.0.0.1:9092.

use std::time::Duration;

use futures::StreamExt;
use switchyard_core::message::Envelope;
use switchyard_core::transport::{Publisher, SubscribeOptions, Subscriber};
use switchyard_kafka::KafkaTransport;

const KAFKA: &str = "127.0.0.1:9092";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_back_from_a_pause_gets_what_the_keeper_read() {
    if !switchyard_core::testkit::require_server(
        "kafka_idle_reader",
        "Kafka (Tansu; scripts/tansu.sh starts it)",
        KAFKA,
    ) {
        return;
    }
    let topic = format!("idle.{}", &switchyard_core::message::new_id()[..8]);
    let kafka = KafkaTransport::from_url(&format!("kafka://{KAFKA}")).expect("url");
    let mut sub = kafka
        .subscribe(&topic, SubscribeOptions::group("g").prefetch(1))
        .await
        .expect("subscribe");
    // Each round the reader pauses long enough for the keeper to take over, and asks for the
    // next message while it is on its way: the rounds vary how long before it asks the message
    // was published (a message reaches the member some 100 ms after it is published here), so
    // that in some it lands in a poll of the keeper's that started before the reader asked.
    for round in 0..40u64 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let payload = format!("{{\"n\":{round}}}");
        kafka
            .publish(Envelope::new(topic.as_str(), payload.clone().into_bytes()))
            .await
            .expect("publish");
        tokio::time::sleep(Duration::from_millis(60 + round * 2)).await;
        let got = tokio::time::timeout(Duration::from_secs(10), sub.next()).await;
        let delivery = got
            .unwrap_or_else(|_| panic!("round {round}: nothing delivered within 10 s"))
            .expect("open")
            .expect("delivery");
        assert_eq!(
            delivery.envelope.payload,
            payload.as_bytes(),
            "round {round}"
        );
        delivery.ack().await.expect("ack");
    }
}
