//! The Kafka transport passes the conformance suite against the real Kafka-compatible broker
//! (Tansu, started by scripts/tansu.sh) on 127.0.0.1:9092.

use std::sync::Arc;

use switchyard_core::testkit::Harness;
use switchyard_core::transport::Transport;
use switchyard_kafka::KafkaTransport;

fn harness() -> Harness {
    Harness::new(
        || "kafka://127.0.0.1:9092".to_string(),
        |url| Ok(Arc::new(KafkaTransport::from_url(url)?) as Arc<dyn Transport>),
    )
    .require_tcp(
        "Kafka (Tansu; scripts/tansu.sh starts it)",
        "127.0.0.1:9092",
    )
}

switchyard_core::conformance_suite!(harness());
