//! The producer and the group consumers' client settings, made on first use.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use switchyard_core::error::{redact_url, TransportError};
use switchyard_core::message::Envelope;
use switchyard_core::transport::get_or_init_boxed;
use tokio::sync::OnceCell;

use crate::binding::*;

pub(crate) struct Inner {
    pub(crate) url: String,
    pub(crate) brokers: String,
    pub(crate) partitions: i32,
    pub(crate) max_message: usize,
    pub(crate) max_poll_interval: Duration,
    pub(crate) producer: OnceCell<FutureProducer>,
    pub(crate) admin: OnceCell<AdminClient<DefaultClientContext>>,
    pub(crate) topics: Mutex<HashSet<String>>,
    // What the consumers' clients last said of their brokers (`connected`).
    pub(crate) links: switchyard_core::transport::LinkHealth,
}

impl Inner {
    pub(crate) fn base_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("socket.connection.setup.timeout.ms", "5000");
        c
    }

    pub(crate) fn unreachable(
        &self,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> TransportError {
        TransportError::Unreachable {
            url: redact_url(&self.url),
            source: Box::new(e),
        }
    }

    pub(crate) async fn producer(&self) -> Result<&FutureProducer, TransportError> {
        get_or_init_boxed(&self.producer, || async {
            self.base_config()
                .set("acks", "all")
                // Latency first; batches still form under load.
                .set("linger.ms", "1")
                .set("message.timeout.ms", "30000")
                .set(
                    "message.max.bytes",
                    (self.max_message + 64 * 1024).to_string(),
                )
                .create::<FutureProducer>()
                .map_err(|e| self.unreachable(e))
        })
        .await
    }

    pub(crate) async fn admin(&self) -> Result<&AdminClient<DefaultClientContext>, TransportError> {
        get_or_init_boxed(&self.admin, || async {
            self.base_config()
                .create::<AdminClient<DefaultClientContext>>()
                .map_err(|e| self.unreachable(e))
        })
        .await
    }

    /// Creates `topic` (with `partitions` partitions) unless this transport already did.
    /// Deletes `topic` (a broadcast subscriber's own retry topic, when it leaves).
    pub(crate) async fn delete_topic(&self, topic: &str) -> Result<(), TransportError> {
        let admin = self.admin().await?;
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        tokio::time::timeout(
            Duration::from_secs(15),
            admin.delete_topics(&[topic], &opts),
        )
        .await
        .map_err(|e| self.unreachable(e))?
        .map_err(|e| self.unreachable(e))?;
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
        Ok(())
    }

    pub(crate) async fn ensure_topic(&self, topic: &str) -> Result<(), TransportError> {
        if self
            .topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(topic)
        {
            return Ok(());
        }
        let admin = self.admin().await?;
        let new = NewTopic::new(topic, self.partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results =
            tokio::time::timeout(Duration::from_secs(15), admin.create_topics([&new], &opts))
                .await
                .map_err(|e| self.unreachable(e))?
                .map_err(|e| self.unreachable(e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => {
                    return Err(TransportError::Other(
                        format!("cannot create Kafka topic {t}: {code}").into(),
                    ))
                }
            }
        }
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_string());
        Ok(())
    }

    pub(crate) async fn send(
        &self,
        topic: &str,
        envelope: &Envelope,
    ) -> Result<(), TransportError> {
        self.ensure_topic(topic).await?;
        let producer = self.producer().await?;
        let headers = kafka_headers(envelope);
        let mut record = FutureRecord::to(topic)
            .payload(envelope.payload.as_ref())
            .headers(headers);
        // The ordering key is the message key: Kafka keeps one key on one partition, in order.
        if let Some(k) = envelope.ordering_key() {
            record = record.key(k);
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| match e {
                KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge) => {
                    TransportError::PayloadTooLarge {
                        size: envelope.payload.len(),
                        limit: self.max_message,
                    }
                }
                other => TransportError::Other(Box::new(other)),
            })
    }
}
