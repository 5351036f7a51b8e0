//! Kafka transport for switchyard (`kafka://HOST:PORT[,HOST:PORT…]`), via rdkafka (the
//! bundled librdkafka). Not for direct use; see the `switchyard` crate.
//!
//! - **Events** go to the topic of the same name (created with `partitions` partitions when
//!   missing), acknowledged by all in-sync replicas (`acks=all`). The ordering key is the
//!   message key, so one key's messages stay on one partition, in order.
//! - A **consumer group** `G` of topic `T` is the Kafka consumer group `G.T`; offsets are stored only after the
//!   handler settled the message, and never past a message still in flight: the committed
//!   position of a partition is its lowest unsettled offset. Prefetch bounds the unsettled
//!   messages. Kafka has no per-message redelivery, so a nack (after its delay) or a dropped
//!   delivery goes, its attempt counted, to the retry topic `sy.retry.G.T` that
//!   only this group reads. A broadcast subscriber is a group of its own that starts at the end.
//! - Headers travel as Kafka headers; CloudEvents attributes as `ce_*` headers and the content
//!   type as `content-type` (the CloudEvents Kafka binding, binary mode).
//! - Kafka has no request/reply: `request` is unsupported (capabilities say so); `serve` runs
//!   a service's event handlers.

mod transport;

pub use transport::KafkaTransport;
