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

mod binding;
mod connection;
mod events;
mod options;

pub use options::KafkaOptions;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use switchyard_core::error::{redact_url, TransportError};
use switchyard_core::transport::{
    Capabilities, DeliveryGuarantee, Ordering, Requester, Responder, Transport,
};

use crate::connection::*;

/// The Kafka transport.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use switchyard_core::transport::Publisher;
/// use switchyard_core::message::Envelope;
/// let kafka = switchyard_kafka::KafkaTransport::from_url("kafka://127.0.0.1:9092")?;
/// kafka.publish(Envelope::new("orders", br#"{"id":1}"#.to_vec())).await?;
/// # Ok(()) }
/// ```
pub struct KafkaTransport {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for KafkaTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTransport")
            .field("url", &redact_url(&self.inner.url))
            .finish()
    }
}

impl Transport for KafkaTransport {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: true,
            ordering: Ordering::PerKey,
            delivery: DeliveryGuarantee::AtLeastOnce,
            request_reply: false,
            consumer_groups: true,
            broadcast: true,
            redelivery: true,
            services_share_url: false,
            keeps_for_later_groups: true,
            replay: true,
        }
    }

    fn url(&self) -> String {
        redact_url(&self.inner.url)
    }

    /// Kafka has no request/reply: call services over http, amqp, nats, redis or mqtt.
    fn requester(&self) -> Option<&dyn Requester> {
        None
    }

    fn responder(&self) -> Option<&dyn Responder> {
        None
    }

    /// rdkafka keeps no connection state to ask: this is what the consumers' clients last
    /// said (a broker up in their statistics, every second; none after "all brokers down").
    fn connected(&self) -> bool {
        self.inner.links.connected()
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            // A client connects in the background: asking for the cluster's metadata is what
            // shows whether a broker answers.
            let producer = self.inner.producer().await?.clone();
            tokio::task::spawn_blocking(move || {
                rdkafka::producer::Producer::client(&producer)
                    .fetch_metadata(None, Duration::from_secs(5))
                    .map(drop)
            })
            .await
            .map_err(TransportError::other)?
            .map_err(|e| self.inner.unreachable(e))
        })
    }
}
