//! Events: publish to JetStream, subscribe with durable or ephemeral pull consumers, settle.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{
    self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy, AckKind,
};
use futures::future::BoxFuture;
use futures::StreamExt;
use switchyard_core::error::TransportError;
use switchyard_core::message::Envelope;
use switchyard_core::transport::{
    Acker, Delivery, Publisher, SubscribeOptions, Subscriber, Subscription, SubscriptionMode,
};

use crate::binding::*;
use crate::NatsTransport;

struct NatsAcker {
    message: Option<jetstream::Message>,
    flush: Arc<FlushOnDrop>,
}

/// An ack is a plain publish, written by the client's connection task some time later, and
/// async-nats drops what is still unwritten when its last handle goes: a consumer that acked
/// and then left had its last acks lost and redelivered (caught by the conformance case
/// `group_resumes_after_settled`). Shared by a subscription and its unsettled deliveries, the
/// last one dropped flushes the connection, and the flush holds the client open until done.
struct FlushOnDrop(async_nats::Client);

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let client = self.0.clone();
            rt.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
            });
        }
    }
}

impl Acker for NatsAcker {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        // What `jetstream::Message::ack` sends (an empty message to the delivery's reply
        // subject), without holding the whole message and its context in the boxed future
        // (1,432 bytes, past the allocator's small-size cache). The connection guard is held
        // until the ack is handed to the client.
        let reply = self.message.take().and_then(|m| m.message.reply);
        let flush = self.flush.clone();
        Box::pin(async move {
            match reply {
                Some(reply) => flush
                    .0
                    .publish(reply, bytes::Bytes::new())
                    .await
                    .map_err(TransportError::other),
                None => Ok(()),
            }
        })
    }

    fn nack(
        mut self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        let m = self.message.take();
        Box::pin(async move {
            match m {
                Some(m) => m
                    .ack_with(AckKind::Nak(delay))
                    .await
                    .map_err(TransportError::Other),
                None => Ok(()),
            }
        })
    }
}

impl Drop for NatsAcker {
    fn drop(&mut self) {
        // Dropped unsettled: the consumer died mid-message. Hand it back at once rather than
        // after the ack wait.
        if let Some(m) = self.message.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = m.ack_with(AckKind::Nak(None)).await;
                });
            }
        }
    }
}

impl Publisher for NatsTransport {
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), TransportError>> {
        // The headers are built before the future exists: it holds only what it sends.
        let mut headers = to_nats_headers(&envelope.headers);
        for (attr, value) in envelope.cloud_event_attributes() {
            // The binding's header names are ours: `ce-*`, and `content-type`.
            headers.insert(attr.header(), value);
        }
        // JetStream de-duplicates on this id within its window: a retried publish is stored once.
        headers.insert("Nats-Msg-Id", envelope.id.as_str());
        let Envelope {
            subject, payload, ..
        } = envelope;
        // The server counts the header block in its `max_payload`: a message just under it
        // with headers added (a dead letter's) is refused by the server, not here, with an
        // error that does not say it is too large.
        let size = payload.len() + header_block_len(&headers);
        Box::pin(async move {
            let limit = self.client().await?.max_payload().min(self.max_message);
            if size > limit {
                return Err(TransportError::PayloadTooLarge { size, limit });
            }
            // Create the topic's stream once per transport, not on every publish (that is a
            // JetStream API round trip).
            let known = self
                .streams
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(subject.as_str());
            if !known {
                // Boxed: the stream look-up's future is several KB, and inline it would be
                // part of (and copied into) every publish's boxed future, not only the first.
                Box::pin(self.stream(&subject)).await?;
            }
            let js = self.js().await?;
            // Boxed on its own: async-nats' publish future with this one's state was just
            // over the allocator's small-size cache (1,136 bytes; two small boxes cost less
            // than one large).
            let ack = Box::pin(js.publish_with_headers(subject, headers, payload))
                .await
                .map_err(TransportError::other)?;
            ack.await.map_err(TransportError::other)?;
            Ok(())
        })
    }
}

impl Subscriber for NatsTransport {
    fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Subscription, TransportError>> {
        let topic = topic.to_string();
        Box::pin(async move {
            let stream = self.stream(&topic).await?;
            let max_ack_pending = i64::try_from(options.prefetch).unwrap_or(i64::MAX);
            let consumer: jetstream::consumer::PullConsumer = match options.mode {
                SubscriptionMode::Group(group) => {
                    let durable = jetstream_name(&group);
                    stream
                        .get_or_create_consumer(
                            &durable,
                            pull::Config {
                                durable_name: Some(durable.clone()),
                                ack_policy: AckPolicy::Explicit,
                                deliver_policy: DeliverPolicy::All,
                                ack_wait: self.ack_wait,
                                max_ack_pending,
                                ..Default::default()
                            },
                        )
                        .await
                        .map_err(TransportError::other)?
                }
                _ => stream
                    .create_consumer(pull::Config {
                        ack_policy: AckPolicy::Explicit,
                        ack_wait: self.ack_wait,
                        deliver_policy: DeliverPolicy::New,
                        inactive_threshold: Duration::from_secs(60),
                        max_ack_pending,
                        ..Default::default()
                    })
                    .await
                    .map_err(TransportError::other)?,
            };
            let messages = consumer.messages().await.map_err(TransportError::other)?;
            let topic = Arc::new(topic);
            let flush = Arc::new(FlushOnDrop(self.client().await?.clone()));
            let deliveries = messages.map(move |m| match m {
                Ok(m) => {
                    let attempt = m.info().ok().map(|i| i.delivered);
                    let env = envelope_of(&topic, &m.message, attempt);
                    let acker = NatsAcker {
                        message: Some(m),
                        flush: flush.clone(),
                    };
                    Ok(Delivery::new(env, Box::new(acker)))
                }
                Err(e) => Err(TransportError::Other(Box::new(e))),
            });
            Ok(Box::pin(deliveries) as Subscription)
        })
    }
}
