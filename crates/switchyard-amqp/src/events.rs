//! Events: published to the topic exchange with confirms, consumed from group or broadcast
//! queues, settled by ack or by re-publishing after a delay.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::{Channel, Consumer};
use switchyard_core::error::TransportError;
use switchyard_core::message::{header as h, Envelope};
use switchyard_core::transport::{
    Acker, Delivery, Publisher, SubscribeOptions, Subscriber, Subscription,
};
use tokio::sync::mpsc;

use crate::binding::*;
use crate::connection::*;
use crate::AmqpTransport;

/// Largest event payload published by default (1 MiB, as on the other transports).
pub(crate) const MAX_MESSAGE: usize = 1024 * 1024;

pub(crate) struct AmqpAcker {
    pub(crate) acker: Option<lapin::Acker>,
    pub(crate) inner: Arc<Inner>,
    pub(crate) queue: String,
    pub(crate) envelope: Option<Envelope>,
}

impl Acker for AmqpAcker {
    fn nack_with(
        mut self: Box<Self>,
        envelope: Envelope,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        self.envelope = Some(envelope);
        self.nack(delay)
    }

    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        let acker = self.acker.take();
        Box::pin(async move {
            if let Some(a) = acker {
                a.ack(BasicAckOptions::default())
                    .await
                    .map_err(TransportError::other)?;
            }
            Ok(())
        })
    }

    fn nack(
        mut self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        let (acker, envelope) = (self.acker.take(), self.envelope.take());
        let (inner, queue) = (self.inner.clone(), std::mem::take(&mut self.queue));
        Box::pin(async move {
            let Some(acker) = acker else { return Ok(()) };
            let Some(mut env) = envelope else {
                // Nothing to re-publish (called without the envelope): the broker requeues it.
                return acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                    .map_err(TransportError::other);
            };
            // AMQP 0-9-1 has no delayed requeue: the message stays with us (unacked, so a
            // crash now still hands it back) for the delay, then goes to the tail of its
            // queue with its attempt counted, and only then is the original acked.
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            let attempt = env.headers.attempt();
            env.headers.insert(h::ATTEMPT, (attempt + 1).to_string());
            match inner.publish_confirmed("", &queue, &env).await {
                Ok(()) => {
                    acker
                        .ack(BasicAckOptions::default())
                        .await
                        .map_err(TransportError::other)?;
                }
                Err(e) => {
                    tracing::warn!(target: "switchyard", error = %e, "re-publish after nack failed; requeueing");
                    acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await
                        .map_err(TransportError::other)?;
                }
            }
            Ok(())
        })
    }
}

impl Drop for AmqpAcker {
    fn drop(&mut self) {
        // Dropped unsettled: the consumer died mid-message. Hand it back at once.
        if let Some(a) = self.acker.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = a
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await;
                });
            }
        }
    }
}

/// Moves deliveries from the broker to the subscription until it is dropped; re-attaches
/// (with backoff) when the channel or connection breaks.
pub(crate) async fn pump(
    inner: Arc<Inner>,
    topic: String,
    options: SubscribeOptions,
    first: (Channel, Consumer, String),
    tx: mpsc::Sender<Result<Delivery, TransportError>>,
) {
    let (mut channel, mut consumer, mut queue) = first;
    loop {
        loop {
            let next = tokio::select! {
                _ = tx.closed() => {
                    // Unacked messages on this channel go back to the queue.
                    let _ = channel.close(200, "subscription dropped".into()).await;
                    return;
                }
                next = consumer.next() => next,
            };
            match next {
                Some(Ok(d)) => {
                    let envelope = envelope_of(&topic, &d);
                    let acker = AmqpAcker {
                        acker: Some(d.acker.clone()),
                        inner: inner.clone(),
                        queue: queue.clone(),
                        // Handed back on nack: no copy per delivery.
                        envelope: None,
                    };
                    if tx
                        .send(Ok(Delivery::new(envelope, Box::new(acker))))
                        .await
                        .is_err()
                    {
                        let _ = channel.close(200, "subscription dropped".into()).await;
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(target: "switchyard", error = %e, topic, "AMQP consumer failed; re-attaching");
                    break;
                }
                None => break,
            }
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            if tx.is_closed() {
                return;
            }
            match inner.attach(&topic, &options).await {
                Ok((c, k, q)) => {
                    (channel, consumer, queue) = (c, k, q);
                    break;
                }
                Err(e) => {
                    let _ = tx.try_send(Err(e));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

impl Publisher for AmqpTransport {
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            if envelope.payload.len() > self.inner.max_message {
                return Err(TransportError::PayloadTooLarge {
                    size: envelope.payload.len(),
                    limit: self.inner.max_message,
                });
            }
            check_topic(&self.inner.url, &envelope.subject)?;
            self.inner
                .publish_confirmed(EXCHANGE, &envelope.subject, &envelope)
                .await
        })
    }

    fn keep(&self, topic: &str, group: &str) -> BoxFuture<'_, Result<(), TransportError>> {
        let (topic, group) = (topic.to_string(), group.to_string());
        Box::pin(async move {
            check_topic(&self.inner.url, &topic)?;
            self.inner.keep(&topic, &group).await
        })
    }
}

impl Subscriber for AmqpTransport {
    fn lag(&self, topic: &str, group: &str) -> BoxFuture<'_, Result<Option<u64>, TransportError>> {
        let (topic, group) = (topic.to_string(), group.to_string());
        Box::pin(async move { self.inner.ready_in_group(&topic, &group).await.map(Some) })
    }

    fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Subscription, TransportError>> {
        let topic = topic.to_string();
        Box::pin(async move {
            check_topic(&self.inner.url, &topic)?;
            let first = self.inner.attach(&topic, &options).await?;
            let (tx, rx) = mpsc::channel(options.prefetch.max(1));
            tokio::spawn(pump(self.inner.clone(), topic, options, first, tx));
            let stream =
                futures::stream::unfold(
                    rx,
                    |mut rx| async move { rx.recv().await.map(|d| (d, rx)) },
                );
            Ok(Box::pin(stream) as Subscription)
        })
    }
}
