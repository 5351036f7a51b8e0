//! Calls: published to the named service's queue with direct reply-to, answered by one of its
//! instances.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Consumer};
use switchyard_core::call::CallRequest;
use switchyard_core::codec::Codec;
use switchyard_core::error::{redact_url, CallError, ErrorCode, RemoteError, TransportError};
use switchyard_core::message::{header as h, new_id};
use switchyard_core::server::Served;
use switchyard_core::transport::{IncomingCall, Listener, ReplyTo, Requester, Responder};
use switchyard_core::values::Reply;
use switchyard_core::wire;

use crate::binding::*;
use crate::connection::*;
use crate::AmqpTransport;

/// Calls an RPC server takes before it answers some (its prefetch).
pub(crate) const RPC_PREFETCH: u16 = 256;

impl Requester for AmqpTransport {
    fn request(&self, request: CallRequest) -> BoxFuture<'_, Result<Reply, CallError>> {
        Box::pin(async move {
            let route = request.route.clone();
            let Some(service) = request.service.as_deref() else {
                return Err(CallError::NoService {
                    route,
                    transport: redact_url(&self.inner.url),
                });
            };
            let body = wire::encode_call(&request.args, request.token.as_deref(), Codec::Json)
                .map_err(|e| CallError::Encode {
                    route: route.clone(),
                    reason: e.to_string(),
                })?;
            let mut table = FieldTable::default();
            for (k, v) in request.headers.iter() {
                table.insert(k.into(), long(v));
            }
            table.insert(ROUTE.into(), long(&route));
            let cid = new_id();
            let mut properties = BasicProperties::default()
                .with_content_type(Codec::Json.content_type().into())
                .with_correlation_id(cid.as_str().into())
                .with_reply_to(DIRECT_REPLY.into());
            let wait = request
                .deadline
                .map(|d| d.saturating_duration_since(Instant::now()));
            if let Some(w) = wait {
                let ms = w.as_millis().max(1).to_string();
                table.insert(h::DEADLINE_MS.into(), long(&ms));
                // A call nobody took in time is dropped by the broker, not run late.
                properties = properties.with_expiration(ShortString::from(ms));
            }
            properties = properties.with_headers(table);
            let queue = self.rpc_queue(service);
            let rpc = self.inner.rpc_link().await?;
            // Forgotten when this call stops waiting (reply, error or timeout).
            let reply = rpc.waiting.wait(cid);
            let confirm = rpc
                .channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    // Mandatory: with no instance serving, the queue does not exist and the
                    // broker returns the call at once.
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    properties,
                )
                .await
                .map_err(|e| CallError::Transport(TransportError::other(e)))?
                .await
                .map_err(|e| CallError::Transport(TransportError::other(e)))?;
            match confirm {
                Confirmation::Ack(Some(_returned)) | Confirmation::Nack(Some(_returned)) => {
                    return Err(CallError::Unreachable {
                        target: format!(
                            "{} (no instance of service {service} in namespace {})",
                            redact_url(&self.inner.url),
                            self.inner.namespace
                        ),
                        source: format!("the broker returned the call: no queue {queue}").into(),
                    })
                }
                Confirmation::Nack(None) => {
                    return Err(CallError::Transport(TransportError::Rejected(
                        RemoteError::new(ErrorCode::Unavailable, "the broker refused the call"),
                    )))
                }
                _ => {}
            }
            let reply = reply.await.ok_or_else(|| {
                CallError::Transport(TransportError::Other(
                    "the AMQP channel closed before the reply came".into(),
                ))
            })?;
            wire::decode_reply(route, reply.status.is_some(), &reply.payload)
        })
    }
}

/// Answers one call on its reply queue, then acks the call.
pub(crate) struct AmqpReply {
    pub(crate) channel: Channel,
    pub(crate) delivery: lapin::message::Delivery,
}

impl ReplyTo for AmqpReply {
    fn send(self: Box<Self>, outcome: Result<Reply, RemoteError>) -> BoxFuture<'static, ()> {
        let (payload, status) = wire::reply_body(outcome);
        let Self { channel, delivery } = *self;
        Box::pin(async move {
            if let Some(reply_to) = delivery.properties.reply_to().as_ref() {
                let mut properties =
                    BasicProperties::default().with_content_type(Codec::Json.content_type().into());
                if let Some(cid) = delivery.properties.correlation_id().as_ref() {
                    properties = properties.with_correlation_id(cid.clone());
                }
                if let Some(code) = status {
                    let mut table = FieldTable::default();
                    table.insert(STATUS.into(), long(&code.to_string()));
                    properties = properties.with_headers(table);
                }
                let sent = channel
                    .basic_publish(
                        "".into(),
                        reply_to.clone(),
                        BasicPublishOptions::default(),
                        &payload,
                        properties,
                    )
                    .await;
                if let Err(e) = sent {
                    tracing::warn!(target: "switchyard", error = %e, "could not send an AMQP reply");
                }
            }
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        })
    }
}

/// One received call, decoded, with what answers it.
pub(crate) fn incoming(channel: &Channel, delivery: lapin::message::Delivery) -> IncomingCall {
    let mut headers = headers_of(&delivery.properties);
    let route = headers.remove(ROUTE).unwrap_or_default();
    let deadline = headers.deadline().map(|w| Instant::now() + w);
    IncomingCall {
        request: wire::decode_call(route, &delivery.data, headers, deadline),
        reply: Box::new(AmqpReply {
            channel: channel.clone(),
            delivery,
        }),
    }
}

/// The calls of one served instance: its consumer on the service's queue, attached again
/// when the connection breaks.
pub(crate) struct CallQueue {
    pub(crate) inner: Arc<Inner>,
    pub(crate) queue: String,
    pub(crate) channel: Channel,
    pub(crate) consumer: Consumer,
    // Where `listen`'s close finds the channel and consumer in use now.
    pub(crate) attached: Arc<Mutex<(Channel, lapin::types::ShortString)>>,
}

impl CallQueue {
    async fn next(mut self) -> Option<(IncomingCall, Self)> {
        loop {
            if let Some(Ok(delivery)) = self.consumer.next().await {
                return Some((incoming(&self.channel, delivery), self));
            }
            // The connection broke: serve again once it is back.
            let mut backoff = Duration::from_millis(100);
            loop {
                tokio::time::sleep(backoff).await;
                match attach_rpc(&self.inner, &self.queue).await {
                    Ok((channel, consumer)) => {
                        *self.attached.lock().unwrap_or_else(|p| p.into_inner()) =
                            (channel.clone(), consumer.tag());
                        (self.channel, self.consumer) = (channel, consumer);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(target: "switchyard", error = %e, "AMQP RPC server re-attach failed");
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
    }
}

pub(crate) async fn attach_rpc(
    inner: &Inner,
    queue: &str,
) -> Result<(Channel, Consumer), TransportError> {
    // The queue is auto-delete: when the last other instance goes away between our declare
    // and our consume, the broker deletes it under us (NOT_FOUND, found by the consumer-kill
    // test). Declaring again on a fresh channel settles it.
    let mut attempt = 0;
    loop {
        let link = inner.link().await?;
        match try_attach_rpc(&link, queue).await {
            Ok(attached) => return Ok(attached),
            Err(e) if attempt < 5 => {
                tracing::debug!(target: "switchyard", error = %e, "RPC queue vanished while attaching; again");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

pub(crate) async fn try_attach_rpc(
    link: &Link,
    queue: &str,
) -> Result<(Channel, Consumer), TransportError> {
    let channel = link
        .connection
        .create_channel()
        .await
        .map_err(TransportError::other)?;
    channel
        .basic_qos(RPC_PREFETCH, BasicQosOptions::default())
        .await
        .map_err(TransportError::other)?;
    channel
        .queue_declare(
            queue.into(),
            // Gone with the last serving instance, so that calls to nobody bounce at once.
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(TransportError::other)?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(TransportError::other)?;
    Ok((channel, consumer))
}

impl Responder for AmqpTransport {
    fn listen(&self, served: Arc<Served>) -> BoxFuture<'_, Result<Listener, TransportError>> {
        Box::pin(async move {
            let queue = self.rpc_queue(served.name());
            let (channel, consumer) = attach_rpc(&self.inner, &queue).await?;
            let attached = Arc::new(Mutex::new((channel.clone(), consumer.tag())));
            let calls = CallQueue {
                inner: self.inner.clone(),
                queue,
                channel,
                consumer,
                attached: attached.clone(),
            };
            let calls = futures::stream::unfold(calls, CallQueue::next);
            Ok(
                Listener::new(Box::pin(calls), self.inner.url.clone()).on_close(async move {
                    let (channel, tag) = attached.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let _ = channel
                        .basic_cancel(tag, BasicCancelOptions::default())
                        .await;
                    let _ = channel.close(200, "service stopped".into()).await;
                }),
            )
        })
    }
}
