//! The connection and its channels, opened on first use and again when they break: one for
//! publishing with confirms, one for calls waiting on direct reply-to.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Confirmation, Connection, ConnectionProperties, Consumer, ExchangeKind};
use switchyard_core::error::{redact_url, ErrorCode, RemoteError, TransportError};
use switchyard_core::message::Envelope;
use switchyard_core::transport::{PendingReplies, SubscribeOptions, SubscriptionMode};

use crate::binding::*;

pub(crate) struct Inner {
    pub(crate) url: String,
    /// What lapin connects to: the URL without our own options.
    pub(crate) uri: String,
    pub(crate) namespace: String,
    pub(crate) max_message: usize,
    /// `x-expires` of consumer-group queues: RabbitMQ deletes a group's queue after it has
    /// had no consumer for this long. `None` keeps it until deleted.
    pub(crate) queue_expires: Option<Duration>,
    pub(crate) link: Mutex<Option<Arc<Link>>>,
    pub(crate) connecting: tokio::sync::Mutex<()>,
    pub(crate) rpc: Mutex<Option<Arc<RpcLink>>>,
    pub(crate) rpc_connecting: tokio::sync::Mutex<()>,
}

/// One connection and its publishing channel (in confirm mode).
pub(crate) struct Link {
    pub(crate) connection: Connection,
    pub(crate) publisher: Channel,
}

impl Link {
    pub(crate) fn alive(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

/// The caller side of RPC: a channel in confirm mode consuming direct reply-to, and the calls
/// waiting for their reply on it.
pub(crate) struct RpcLink {
    pub(crate) channel: Channel,
    pub(crate) waiting: Arc<PendingReplies<String, RpcReply>>,
}

pub(crate) struct RpcReply {
    pub(crate) status: Option<String>,
    pub(crate) payload: Vec<u8>,
}

impl Inner {
    pub(crate) fn unreachable(
        &self,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> TransportError {
        TransportError::Unreachable {
            url: redact_url(&self.url),
            source: Box::new(e),
        }
    }

    pub(crate) fn live_link(&self) -> Option<Arc<Link>> {
        let slot = self.link.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().filter(|l| l.alive()).cloned()
    }

    /// The live connection, re-opened when the last one broke.
    pub(crate) async fn link(&self) -> Result<Arc<Link>, TransportError> {
        if let Some(l) = self.live_link() {
            return Ok(l);
        }
        // Boxed: the connecting future would otherwise be part of every publish's and every
        // call's future, and be copied into each one's box.
        Box::pin(self.open_link()).await
    }

    pub(crate) async fn open_link(&self) -> Result<Arc<Link>, TransportError> {
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(l) = self.live_link() {
            return Ok(l);
        }
        let connection = match tokio::time::timeout(
            Duration::from_secs(10),
            Connection::connect(&self.uri, ConnectionProperties::default()),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(self.unreachable(e)),
            Err(elapsed) => return Err(self.unreachable(elapsed)),
        };
        let publisher = connection
            .create_channel()
            .await
            .map_err(TransportError::other)?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(TransportError::other)?;
        publisher
            .exchange_declare(
                EXCHANGE.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(TransportError::other)?;
        let link = Arc::new(Link {
            connection,
            publisher,
        });
        *self.link.lock().unwrap_or_else(|p| p.into_inner()) = Some(link.clone());
        Ok(link)
    }

    pub(crate) fn live_rpc(&self) -> Option<Arc<RpcLink>> {
        let slot = self.rpc.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref()
            .filter(|r| r.channel.status().connected())
            .cloned()
    }

    pub(crate) async fn rpc_link(&self) -> Result<Arc<RpcLink>, TransportError> {
        if let Some(r) = self.live_rpc() {
            return Ok(r);
        }
        let _one_at_a_time = self.rpc_connecting.lock().await;
        if let Some(r) = self.live_rpc() {
            return Ok(r);
        }
        let channel = self.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(TransportError::other)?;
        let mut replies = channel
            .basic_consume(
                DIRECT_REPLY.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(TransportError::other)?;
        let waiting: Arc<PendingReplies<String, RpcReply>> = Arc::default();
        let w = waiting.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = replies.next().await {
                let Some(cid) = d.properties.correlation_id().as_ref() else {
                    continue;
                };
                let status = d
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|t| t.inner().get(STATUS))
                    .map(value_text);
                let reply = RpcReply {
                    status,
                    payload: d.data,
                };
                // A reply nobody waits for any more (its caller timed out) is dropped.
                w.complete(cid.as_str(), reply);
            }
            // The channel is gone: the calls still waiting learn it now, not at their timeout.
            w.clear();
        });
        let rpc = Arc::new(RpcLink { channel, waiting });
        *self.rpc.lock().unwrap_or_else(|p| p.into_inner()) = Some(rpc.clone());
        Ok(rpc)
    }

    /// A new channel on the connection.
    async fn channel(&self) -> Result<Channel, TransportError> {
        let link = self.link().await?;
        link.connection
            .create_channel()
            .await
            .map_err(TransportError::other)
    }

    /// Messages ready in `group`'s queue of `topic`, not yet given to any of its consumers.
    pub(crate) async fn ready_in_group(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<u64, TransportError> {
        let channel = self.channel().await?;
        let declared = channel
            .queue_declare(
                group_queue(topic, group).as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(TransportError::other);
        let _ = channel.close(200, "lag read".into()).await;
        Ok(u64::from(declared?.message_count()))
    }

    /// Declares the durable queue of consumer group `group` on `topic` (bound below, by the
    /// caller) with the arguments every member declares it with: RabbitMQ refuses a second
    /// declaration whose arguments differ.
    async fn declare_group_queue(
        &self,
        channel: &Channel,
        topic: &str,
        group: &str,
    ) -> Result<String, TransportError> {
        let name = group_queue(topic, group);
        let mut args = FieldTable::default();
        if let Some(e) = self.queue_expires {
            let ms = i64::try_from(e.as_millis()).unwrap_or(i64::MAX);
            args.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
        }
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .map_err(TransportError::other)?;
        Ok(name)
    }

    /// Declares and binds the queue of consumer group `group` on `topic` without consuming:
    /// from now on what is published on `topic` waits there for the group.
    pub(crate) async fn keep(&self, topic: &str, group: &str) -> Result<(), TransportError> {
        let channel = self.channel().await?;
        let queue = self.declare_group_queue(&channel, topic, group).await?;
        let bound = bind(&channel, &queue, topic).await;
        let _ = channel.close(200, "kept".into()).await;
        bound
    }

    /// Declares and binds the queue of a subscription on a new channel and starts consuming.
    pub(crate) async fn attach(
        &self,
        topic: &str,
        options: &SubscribeOptions,
    ) -> Result<(Channel, Consumer, String), TransportError> {
        let channel = self.channel().await?;
        let prefetch = u16::try_from(options.prefetch).unwrap_or(u16::MAX).max(1);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(TransportError::other)?;
        let queue = match &options.mode {
            SubscriptionMode::Group(group) => {
                self.declare_group_queue(&channel, topic, group).await?
            }
            // Broadcast (and any mode added later): a queue of this subscriber's own.
            _ => channel
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(TransportError::other)?
                .name()
                .as_str()
                .to_string(),
        };
        bind(&channel, &queue, topic).await?;
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(TransportError::other)?;
        Ok((channel, consumer, queue))
    }

    /// Publishes with a confirm; `exchange` "" with the queue name sends to one queue.
    pub(crate) async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        envelope: &Envelope,
    ) -> Result<(), TransportError> {
        let link = self.link().await?;
        let confirm = link
            .publisher
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                &envelope.payload,
                event_properties(envelope),
            )
            .await
            .map_err(TransportError::other)?
            .await
            .map_err(TransportError::other)?;
        match confirm {
            Confirmation::Nack(_) => Err(TransportError::Rejected(RemoteError::new(
                ErrorCode::Unavailable,
                "the broker refused the message (publisher nack)",
            ))),
            _ => Ok(()),
        }
    }
}

/// The queue a consumer group of a topic shares.
fn group_queue(topic: &str, group: &str) -> String {
    format!("{topic}:{group}")
}

/// Binds `queue` to the events exchange for `topic`.
async fn bind(channel: &Channel, queue: &str, topic: &str) -> Result<(), TransportError> {
    channel
        .queue_bind(
            queue.into(),
            EXCHANGE.into(),
            topic.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(TransportError::other)
}
