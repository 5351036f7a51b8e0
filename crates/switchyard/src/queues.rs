//! Named queues from configuration (the `[queues.NAME]` tables of `switchyard.toml`): a
//! producer and a consumer per queue, each on the transport its table names, mixed pairs
//! allowed — an HTTP producer feeding a Kafka-backed consumer is a change of the file, not of
//! the code.
//!
//! ```toml
//! [queues.orders]
//! producer = "http://127.0.0.1:9000"   # where producers publish
//! consumer = "kafka://127.0.0.1:9092"  # where the consumer reads
//! ```
//!
//! When the two differ, the consumer's side also runs a relay
//! ([`crate::relay`]) from the producer's transport to the consumer's for the queue's topic,
//! so what producers publish reaches the consumer, at least once, through the consumer's
//! transport (an HTTP producer is answered once the broker confirmed its event).

use std::future::Future;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use switchyard_core::service::EventOutcome;
use switchyard_core::transport::ServeHandle;

use crate::{Config, Envelope, Service, Transport, TransportError};

/// A queue could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// Neither the queue's table nor the configuration's `url` says where it is.
    #[error("queue {queue:?} has no {side} URL and the configuration no `url`")]
    Unconfigured {
        /// The queue.
        queue: String,
        /// `producer` or `consumer`.
        side: &'static str,
    },
    /// Its transport could not be opened or served.
    #[error("queue {queue:?}: {source}")]
    Transport {
        /// The queue.
        queue: String,
        /// Why.
        #[source]
        source: TransportError,
    },
}

/// Hands out the producer and the consumer of each configured queue.
#[derive(Debug, Clone)]
pub struct Queues {
    config: Config,
}

/// Publishes on one queue.
#[derive(Clone)]
pub struct QueueProducer {
    transport: Arc<dyn Transport>,
    topic: String,
}

/// A queue's consumer being served (and its relay, when the producer is elsewhere); stop it
/// with [`QueueConsumer::shutdown`].
pub struct QueueConsumer {
    consumer: ServeHandle,
    relay: Option<ServeHandle>,
}

impl Queues {
    /// The queues of `config`.
    pub fn new(config: Config) -> Self {
        Self { config }
    }

    /// The queues of the configuration in effect ([`Config::load`]).
    pub fn load() -> Result<Self, crate::ConfigError> {
        Ok(Self::new(Config::load()?))
    }

    /// The topic of `queue`: its table's `name`, else the queue's own name.
    pub fn topic(&self, queue: &str) -> String {
        self.config
            .queues
            .get(queue)
            .and_then(|q| q.name.clone())
            .unwrap_or_else(|| queue.to_string())
    }

    fn url(&self, queue: &str, side: &'static str) -> Result<String, QueueError> {
        let url = match side {
            "producer" => self.config.queue_producer(queue),
            _ => self.config.queue_consumer(queue),
        };
        url.map(str::to_string)
            .ok_or_else(|| QueueError::Unconfigured {
                queue: queue.to_string(),
                side,
            })
    }

    /// The producer of `queue`, on the transport its table names (else the `url`).
    pub fn producer(&self, queue: &str) -> Result<QueueProducer, QueueError> {
        let url = self.url(queue, "producer")?;
        let transport = crate::connect(&url).map_err(|source| QueueError::Transport {
            queue: queue.to_string(),
            source,
        })?;
        Ok(QueueProducer {
            transport,
            topic: self.topic(queue),
        })
    }

    /// Serves `handler` as the consumer of `queue` under the service name `name` (its
    /// consumer group), on the transport the queue's table names. When the producer is on
    /// another transport, what is published there is relayed to this one first.
    pub async fn consume<F, Fut, T, O>(
        &self,
        queue: &str,
        name: &str,
        handler: F,
    ) -> Result<QueueConsumer, QueueError>
    where
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = O> + Send + 'static,
        T: DeserializeOwned + Send + 'static,
        O: EventOutcome,
    {
        let failed = |source| QueueError::Transport {
            queue: queue.to_string(),
            source,
        };
        let (consumer_url, producer_url) =
            (self.url(queue, "consumer")?, self.url(queue, "producer")?);
        let topic = self.topic(queue);
        let transport = crate::connect(&consumer_url).map_err(failed)?;
        let consumer = crate::serve(&transport, Service::new(name).on_event(&topic, handler))
            .await
            .map_err(failed)?;
        let relay = if producer_url == consumer_url {
            None
        } else {
            let from = crate::connect(&producer_url).map_err(failed)?;
            let relay = crate::relay::relay(&format!("{name}-relay"), transport, &[topic]);
            Some(crate::serve(&from, relay).await.map_err(failed)?)
        };
        Ok(QueueConsumer { consumer, relay })
    }
}

impl QueueProducer {
    /// Publishes `value` (JSON) on the queue; returns once its transport took it.
    pub async fn publish<T: Serialize>(&self, value: &T) -> Result<(), TransportError> {
        let payload = serde_json::to_vec(value).map_err(TransportError::other)?;
        self.transport
            .publish(Envelope::new(&self.topic, payload))
            .await
    }

    /// The queue's topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

impl QueueConsumer {
    /// Stops the relay first (nothing more comes in), then the consumer, each finishing what
    /// it holds.
    pub async fn shutdown(self) {
        if let Some(relay) = self.relay {
            relay.shutdown().await;
        }
        self.consumer.shutdown().await;
    }
}
