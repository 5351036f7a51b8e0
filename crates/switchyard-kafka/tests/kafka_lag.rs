//! Consumer lag as Kafka tells it (`Subscriber::lag`: high watermarks less the group's committed
//! offsets), and as `switchyard_consumer_lag` for a served service: the case is
//! `testkit::consumer_lag`.

use std::sync::Arc;

use switchyard_core::testkit::{consumer_lag, require_server};
use switchyard_kafka::KafkaTransport;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_of_a_group_is_what_it_has_not_been_given() {
    if !require_server(
        "kafka_consumer_lag",
        "Kafka (Tansu; scripts/tansu.sh starts it)",
        "127.0.0.1:9092",
    ) {
        return;
    }
    let id = &switchyard_core::message::new_id()[..8];
    let t = KafkaTransport::from_url("kafka://127.0.0.1:9092").expect("url");
    consumer_lag(Arc::new(t), id).await;
}
