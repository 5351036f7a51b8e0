use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind,
};
use switchyard_core::call::CallRequest;
use switchyard_core::codec::Codec;
use switchyard_core::error::{redact_url, CallError, ErrorCode, RemoteError, TransportError};
use switchyard_core::message::{header as h, new_id, CloudEventAttribute as Ce, Envelope, Headers};
use switchyard_core::server::Served;
use switchyard_core::transport::{
    Acker, Capabilities, Delivery, DeliveryGuarantee, IncomingCall, Listener, Ordering,
    PendingReplies, Publisher, ReplyTo, Requester, Responder, SubscribeOptions, Subscriber,
    Subscription, SubscriptionMode, Transport,
};
use switchyard_core::values::Reply;
use switchyard_core::wire;
use tokio::sync::mpsc;

/// The topic exchange every event goes through.
const EXCHANGE: &str = "sy.events";
/// RabbitMQ's direct reply-to pseudo-queue: replies come straight back on the calling channel
/// without a queue per client.
const DIRECT_REPLY: &str = "amq.rabbitmq.reply-to";
/// Header carrying the route of a call.
const ROUTE: &str = "x-route";
/// Header carrying the error code of a failed call's reply.
const STATUS: &str = "x-status";
/// Prefix of CloudEvents attributes in AMQP headers (the CloudEvents AMQP binding).
const CE_PREFIX: &str = "cloudEvents:";
/// The binding also allows `_` for clients that cannot send `:` in a header name.
const CE_PREFIX_ALT: &str = "cloudEvents_";
/// The attributes' AMQP header names, indexed by [`Ce`].
const CE_NAMES: [&str; 7] = switchyard_core::cloud_event_names!("cloudEvents:");
/// Largest event payload published by default (1 MiB, as on the other transports).
const MAX_MESSAGE: usize = 1024 * 1024;
/// Calls an RPC server takes before it answers some (its prefetch).
const RPC_PREFETCH: u16 = 256;

/// The RabbitMQ transport.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use switchyard_core::Client;
/// let amqp = Arc::new(switchyard_amqp::AmqpTransport::from_url("amqp://guest:guest@127.0.0.1:5672/%2f?ns=app1")?);
/// let reply: String = Client::new(amqp).service("app1").call("/helloworld", "Mr. Developer".to_string()).await?;
/// # Ok(()) }
/// ```
pub struct AmqpTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpTransport")
            .field("url", &redact_url(&self.inner.url))
            .finish()
    }
}

struct Inner {
    url: String,
    /// What lapin connects to: the URL without our own options.
    uri: String,
    namespace: String,
    max_message: usize,
    /// `x-expires` of consumer-group queues: RabbitMQ deletes a group's queue after it has
    /// had no consumer for this long. `None` keeps it until deleted.
    queue_expires: Option<Duration>,
    link: Mutex<Option<Arc<Link>>>,
    connecting: tokio::sync::Mutex<()>,
    rpc: Mutex<Option<Arc<RpcLink>>>,
    rpc_connecting: tokio::sync::Mutex<()>,
}

/// One connection and its publishing channel (in confirm mode).
struct Link {
    connection: Connection,
    publisher: Channel,
}

impl Link {
    fn alive(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

/// The caller side of RPC: a channel in confirm mode consuming direct reply-to, and the calls
/// waiting for their reply on it.
struct RpcLink {
    channel: Channel,
    waiting: Arc<PendingReplies<String, RpcReply>>,
}

struct RpcReply {
    status: Option<String>,
    payload: Vec<u8>,
}

/// A topic usable as a routing key and binding: the topic exchange would read `*` and `#` as
/// wildcards, and a routing key holds at most 255 bytes.
fn check_topic(url: &str, topic: &str) -> Result<(), TransportError> {
    if topic.is_empty() || topic.len() > 200 || topic.contains(['*', '#']) {
        return Err(TransportError::invalid_url(
            url,
            format!("topic {topic:?} is not usable on AMQP (1 to 200 bytes, no '*' or '#')"),
        ));
    }
    Ok(())
}

fn ms_option(url: &str, key: &str, value: &str) -> Result<u64, TransportError> {
    value.parse().map_err(|_| {
        TransportError::invalid_url(url, format!("{key}={value} is not a whole number"))
    })
}

impl AmqpTransport {
    /// A transport for `amqp://USER:PASS@HOST:PORT/VHOST` (guest/guest and vhost `/` when
    /// absent). Options: `ns` (the RPC namespace, default `default`), `max_message_bytes`
    /// (default 1 MiB), `queue_expires_ms` (delete an unused group queue after that long).
    /// The connection is made on first use; an unreachable broker is then an error naming
    /// the URL, its password removed.
    pub fn from_url(url: &str) -> Result<Self, TransportError> {
        let parsed =
            url::Url::parse(url).map_err(|e| TransportError::invalid_url(url, e.to_string()))?;
        if parsed.scheme() != "amqp" {
            return Err(TransportError::invalid_url(
                url,
                "expected amqp://USER:PASS@HOST:PORT/VHOST[?ns=NAME]",
            ));
        }
        if parsed.host_str().is_none() {
            return Err(TransportError::invalid_url(url, "no host"));
        }
        let mut namespace = "default".to_string();
        let mut max_message = MAX_MESSAGE;
        let mut queue_expires = None;
        let mut passthrough = Vec::new();
        for (k, v) in parsed.query_pairs() {
            match k.as_ref() {
                "ns" => {
                    if v.is_empty() || v.contains(['*', '#', ' ']) {
                        return Err(TransportError::invalid_url(url, format!("ns={v} is not a usable namespace")));
                    }
                    namespace = v.to_string();
                }
                "max_message_bytes" => {
                    max_message = ms_option(url, &k, &v)?.try_into().unwrap_or(usize::MAX);
                }
                "queue_expires_ms" => {
                    queue_expires = Some(Duration::from_millis(ms_option(url, &k, &v)?.max(1000)));
                }
                // lapin's own connection options.
                "heartbeat" | "connection_timeout" | "channel_max" | "frame_max" => {
                    passthrough.push(format!("{k}={v}"));
                }
                unknown => {
                    return Err(TransportError::invalid_url(
                        url,
                        format!(
                            "unknown option {unknown:?} (known: ns, max_message_bytes, \
                             queue_expires_ms, heartbeat, connection_timeout, channel_max, frame_max)"
                        ),
                    ))
                }
            }
        }
        let mut base = url.split('?').next().unwrap_or(url).to_string();
        if !passthrough.is_empty() {
            base = format!("{base}?{}", passthrough.join("&"));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                url: url.to_string(),
                uri: base,
                namespace,
                max_message,
                queue_expires,
                link: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                rpc: Mutex::new(None),
                rpc_connecting: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The queue a service's calls wait on: `sy.rpc.<namespace>.<service>`.
    fn rpc_queue(&self, service: &str) -> String {
        format!("sy.rpc.{}.{service}", self.inner.namespace)
    }
}

impl Inner {
    fn unreachable(&self, e: impl std::error::Error + Send + Sync + 'static) -> TransportError {
        TransportError::Unreachable {
            url: redact_url(&self.url),
            source: Box::new(e),
        }
    }

    fn live_link(&self) -> Option<Arc<Link>> {
        let slot = self.link.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().filter(|l| l.alive()).cloned()
    }

    /// The live connection, re-opened when the last one broke.
    async fn link(&self) -> Result<Arc<Link>, TransportError> {
        if let Some(l) = self.live_link() {
            return Ok(l);
        }
        // Boxed: the connecting future would otherwise be part of every publish's and every
        // call's future, and be copied into each one's box.
        Box::pin(self.open_link()).await
    }

    async fn open_link(&self) -> Result<Arc<Link>, TransportError> {
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

    fn live_rpc(&self) -> Option<Arc<RpcLink>> {
        let slot = self.rpc.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref()
            .filter(|r| r.channel.status().connected())
            .cloned()
    }

    async fn rpc_link(&self) -> Result<Arc<RpcLink>, TransportError> {
        if let Some(r) = self.live_rpc() {
            return Ok(r);
        }
        let _one_at_a_time = self.rpc_connecting.lock().await;
        if let Some(r) = self.live_rpc() {
            return Ok(r);
        }
        let link = self.link().await?;
        let channel = link
            .connection
            .create_channel()
            .await
            .map_err(TransportError::other)?;
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

    /// Declares and binds the queue of a subscription on a new channel and starts consuming.
    async fn attach(
        &self,
        topic: &str,
        options: &SubscribeOptions,
    ) -> Result<(Channel, Consumer, String), TransportError> {
        let link = self.link().await?;
        let channel = link
            .connection
            .create_channel()
            .await
            .map_err(TransportError::other)?;
        let prefetch = u16::try_from(options.prefetch).unwrap_or(u16::MAX).max(1);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(TransportError::other)?;
        let queue = match &options.mode {
            SubscriptionMode::Group(group) => {
                let name = format!("{topic}:{group}");
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
                name
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
        channel
            .queue_bind(
                queue.as_str().into(),
                EXCHANGE.into(),
                topic.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(TransportError::other)?;
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
    async fn publish_confirmed(
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

fn value_text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Headers of an outgoing event: ours as they are, CloudEvents attributes under
/// `cloudEvents:`, the id and content type in their AMQP properties.
fn event_properties(envelope: &Envelope) -> BasicProperties {
    let mut table = FieldTable::default();
    for (k, v) in envelope.headers.iter() {
        // `ce-*` go out once, in the binding's spelling, below.
        if k != h::CONTENT_TYPE && !k.starts_with("ce-") {
            table.insert(k.into(), long(v));
        }
    }
    for (attr, value) in envelope.cloud_event_attributes() {
        // The binding puts the content type in the `content-type` property, set below.
        if attr != Ce::DataContentType {
            table.insert(CE_NAMES[attr as usize].into(), long(value));
        }
    }
    let content_type = envelope
        .headers
        .get(h::CONTENT_TYPE)
        .unwrap_or("application/json");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    BasicProperties::default()
        .with_headers(table)
        .with_delivery_mode(2)
        .with_message_id(envelope.id.as_str().into())
        .with_content_type(content_type.into())
        .with_timestamp(now)
}

fn headers_of(properties: &BasicProperties) -> Headers {
    let mut out = Headers::new();
    if let Some(table) = properties.headers() {
        for (k, v) in table.inner() {
            out.insert(k.as_str(), value_text(v));
        }
    }
    out
}

/// The envelope of a received event. A message from a plain client may lack everything but
/// its body: it gets an id, a JSON content type and attempt 1.
fn envelope_of(topic: &str, delivery: &lapin::message::Delivery) -> Envelope {
    let mut headers = Headers::new();
    let mut id = None;
    if let Some(table) = delivery.properties.headers() {
        for (k, v) in table.inner() {
            let k = k.as_str();
            let ce = k
                .strip_prefix(CE_PREFIX)
                .or_else(|| k.strip_prefix(CE_PREFIX_ALT));
            match ce.map(|a| (a, Ce::from_name(a))) {
                Some((_, Some(Ce::Id))) => id = Some(value_text(v)),
                Some((_, Some(Ce::SpecVersion))) => {}
                Some((_, Some(known))) => headers.insert(known.header(), value_text(v)),
                Some((other, None)) => headers.insert(format!("ce-{other}"), value_text(v)),
                None => headers.insert(k, value_text(v)),
            }
        }
    }
    let id = id
        .or_else(|| {
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_string())
        })
        .unwrap_or_else(new_id);
    let content_type = delivery
        .properties
        .content_type()
        .as_ref()
        .map(|c| c.as_str().to_string())
        .unwrap_or_else(|| Codec::Json.content_type().to_string());
    headers.insert(h::CONTENT_TYPE, content_type);
    // A broker redelivery (its consumer died) counts as one more attempt; our own re-publish
    // after a nack carries the count in the header.
    let attempt = headers.attempt() + u32::from(delivery.redelivered);
    headers.insert(h::ATTEMPT, attempt.to_string());
    Envelope {
        id,
        subject: topic.to_string(),
        headers,
        payload: Bytes::copy_from_slice(&delivery.data),
    }
}

struct AmqpAcker {
    acker: Option<lapin::Acker>,
    inner: Arc<Inner>,
    queue: String,
    envelope: Option<Envelope>,
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
async fn pump(
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
}

impl Subscriber for AmqpTransport {
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
struct AmqpReply {
    channel: Channel,
    delivery: lapin::message::Delivery,
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
fn incoming(channel: &Channel, delivery: lapin::message::Delivery) -> IncomingCall {
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
struct CallQueue {
    inner: Arc<Inner>,
    queue: String,
    channel: Channel,
    consumer: Consumer,
    // Where `listen`'s close finds the channel and consumer in use now.
    attached: Arc<Mutex<(Channel, lapin::types::ShortString)>>,
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

async fn attach_rpc(inner: &Inner, queue: &str) -> Result<(Channel, Consumer), TransportError> {
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

async fn try_attach_rpc(link: &Link, queue: &str) -> Result<(Channel, Consumer), TransportError> {
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

impl Transport for AmqpTransport {
    fn name(&self) -> &'static str {
        "amqp"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: true,
            ordering: Ordering::None,
            delivery: DeliveryGuarantee::AtLeastOnce,
            request_reply: true,
            consumer_groups: true,
            broadcast: true,
            redelivery: true,
            services_share_url: true,
        }
    }

    fn url(&self) -> String {
        redact_url(&self.inner.url)
    }

    fn requester(&self) -> Option<&dyn Requester> {
        Some(self)
    }

    fn responder(&self) -> Option<&dyn Responder> {
        Some(self)
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move { self.inner.link().await.map(drop) })
    }
}
