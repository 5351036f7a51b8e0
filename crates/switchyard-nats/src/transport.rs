use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{
    self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy, AckKind,
};
use futures::future::BoxFuture;
use futures::StreamExt;
use switchyard_core::call::CallRequest;
use switchyard_core::codec::Codec;
use switchyard_core::error::{redact_url, CallError, RemoteError, TransportError};
use switchyard_core::message::{header as h, Envelope, Headers};
use switchyard_core::server::Served;
use switchyard_core::transport::{
    get_or_init_boxed, Acker, Capabilities, Delivery, DeliveryGuarantee, IncomingCall, Listener,
    Ordering, PendingReplies, Publisher, ReplyTo, ReplyWait, Requester, Responder,
    SubscribeOptions, Subscriber, Subscription, SubscriptionMode, Transport,
};
use switchyard_core::values::Reply;
use switchyard_core::wire;
use tokio::sync::OnceCell;

/// Header carrying the error code of a failed call's reply.
const STATUS: &str = "x-status";

/// The NATS transport.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use switchyard_core::Client;
/// let nats = Arc::new(switchyard_nats::NatsTransport::from_url("nats://127.0.0.1:4222/app1")?);
/// let reply: String = Client::new(nats).call("/helloworld", "Mr. Developer".to_string()).await?;
/// # Ok(()) }
/// ```
pub struct NatsTransport {
    url: String,
    server: String,
    namespace: String,
    client: OnceCell<async_nats::Client>,
    // Topics whose stream is known to exist; checked on every publish, so a plain lock.
    streams: std::sync::Mutex<HashSet<String>>,
    js: OnceCell<jetstream::Context>,
    replies: OnceCell<Replies>,
    ack_wait: Duration,
    tls: bool,
    tls_ca: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport")
            .field("url", &redact_url(&self.url))
            .finish()
    }
}

/// A subject token from a route or topic: no wildcards, no white space, no empty tokens.
fn check_subject(what: &str, s: &str) -> Result<(), String> {
    let bad = s.is_empty()
        || s.split('.').any(str::is_empty)
        || s.chars().any(|c| c.is_whitespace() || c == '*' || c == '>');
    if bad {
        Err(format!(
            "{what} {s:?} is not a valid NATS subject (no spaces, '*', '>' or empty tokens)"
        ))
    } else {
        Ok(())
    }
}

/// Appends `name` to a subject as one token: `.` (the token separator) is written `%2E` and
/// `%` itself `%25`, so that a route like `/v1.2/x` keeps its dot.
fn push_escaped(subject: &mut String, name: &str) {
    for c in name.chars() {
        match c {
            '.' => subject.push_str("%2E"),
            '%' => subject.push_str("%25"),
            c => subject.push(c),
        }
    }
}

/// `sy.rpc.<namespace>.<service>.<route, each segment a token>`, built in one allocation:
/// every call makes it.
fn route_subject(namespace: &str, service: &str, route: &str) -> Result<String, String> {
    const PREFIX: &str = "sy.rpc.";
    let route = route.trim_start_matches('/');
    let mut subject =
        String::with_capacity(PREFIX.len() + namespace.len() + service.len() + 2 + route.len());
    subject.push_str(PREFIX);
    subject.push_str(namespace);
    subject.push('.');
    let service_at = subject.len();
    push_escaped(&mut subject, service);
    check_subject("service", &subject[service_at..])?;
    subject.push('.');
    let token_at = subject.len();
    for (i, segment) in route.split('/').enumerate() {
        if i > 0 {
            subject.push('.');
        }
        push_escaped(&mut subject, segment);
    }
    check_subject("route", &subject[token_at..])?;
    Ok(subject)
}

/// The subject prefix of every call to `service`: `sy.rpc.<namespace>.<service>.`.
fn service_prefix(namespace: &str, service: &str) -> String {
    let mut prefix = format!("sy.rpc.{namespace}.");
    push_escaped(&mut prefix, service);
    prefix.push('.');
    prefix
}

/// A name JetStream accepts for streams and consumers: letters, digits, `-` and `_`.
fn jetstream_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn stream_name(topic: &str) -> String {
    format!("SY_{}", jetstream_name(topic))
}

fn to_nats_headers(headers: &Headers) -> async_nats::HeaderMap {
    let mut out = async_nats::HeaderMap::new();
    for (k, v) in headers.iter() {
        out.insert(k, v);
    }
    out
}

fn from_nats_headers(headers: Option<&async_nats::HeaderMap>) -> Headers {
    let mut out = Headers::new();
    if let Some(hm) = headers {
        for (k, values) in hm.iter() {
            if let Some(v) = values.first() {
                // The name as `&str`, not `to_string`: no formatting machinery per header.
                out.insert(AsRef::<str>::as_ref(k), v.as_str());
            }
        }
    }
    out
}

/// Calls waiting for their reply, on one inbox subscription (`<inbox>.<n>`) per transport.
///
/// Written here rather than using async-nats' `send_request`: that future is 1,088 bytes, so
/// every call's boxed future was past the allocator's small-size cache (about 1 KB), and it
/// formats a fresh inbox name per call; a publish with a reply subject is half the size.
struct Replies {
    prefix: String,
    next: AtomicU64,
    pending: Arc<PendingReplies<u64, async_nats::Message>>,
    reader: tokio::task::AbortHandle,
}

impl Drop for Replies {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Replies {
    async fn start(client: &async_nats::Client) -> Result<Self, TransportError> {
        let prefix = format!("{}.", client.new_inbox());
        let mut inbox = client
            .subscribe(format!("{prefix}*"))
            .await
            .map_err(TransportError::other)?;
        let pending: Arc<PendingReplies<u64, async_nats::Message>> = Arc::default();
        let (p, skip) = (pending.clone(), prefix.len());
        let reader = tokio::spawn(async move {
            while let Some(m) = inbox.next().await {
                // A reply nobody waits for any more (its caller timed out) is dropped.
                if let Some(id) = m.subject.get(skip..).and_then(|n| n.parse::<u64>().ok()) {
                    p.complete(&id, m);
                }
            }
            // The connection is closed for good: the callers still waiting fail now rather
            // than at their deadline.
            p.clear();
        })
        .abort_handle();
        Ok(Self {
            prefix,
            next: AtomicU64::new(0),
            pending,
            reader,
        })
    }

    /// A reply subject and the wait for the reply sent to it.
    fn wait(&self) -> (String, ReplyWait<'_, u64, async_nats::Message>) {
        let id = self.next.fetch_add(1, AtomicOrdering::Relaxed);
        let mut subject = String::with_capacity(self.prefix.len() + 20);
        subject.push_str(&self.prefix);
        {
            use std::fmt::Write;
            let _ = write!(subject, "{id}");
        }
        (subject, self.pending.wait(id))
    }
}

impl NatsTransport {
    /// A transport for `nats://HOST:PORT[?ns=NAMESPACE]` (or `nats://HOST:PORT/NAMESPACE`;
    /// namespace `default` when absent). The
    /// connection is made on first use; an unreachable server is then an error naming the URL.
    pub fn from_url(url: &str) -> Result<Self, TransportError> {
        let parsed =
            url::Url::parse(url).map_err(|e| TransportError::invalid_url(url, e.to_string()))?;
        if parsed.scheme() != "nats" {
            return Err(TransportError::invalid_url(
                url,
                "expected nats://HOST:PORT[/NAMESPACE]",
            ));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| TransportError::invalid_url(url, "no host"))?;
        let port = parsed.port().unwrap_or(4222);
        // `?ns=NAME`, as on every transport; a path (`nats://HOST/NAME`) still names it too.
        let ns = parsed
            .query_pairs()
            .find(|(k, _)| k == "ns")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| parsed.path().trim_matches('/').replace('/', "."));
        let namespace = if ns.is_empty() {
            "default".to_string()
        } else {
            ns
        };
        check_subject("namespace", &namespace).map_err(|r| TransportError::invalid_url(url, r))?;
        // `?ack_wait_ms=N`: how long JetStream waits for an ack before it redelivers to another
        // consumer (default 30 s). It bounds how long a message of a consumer that died stays
        // stuck; a handler that runs longer gets its message redelivered meanwhile.
        let mut ack_wait = Duration::from_secs(30);
        // `?tls=true`: TLS required (the server's certificate checked against the system's
        // roots); `?tls_ca=PATH`: also trust the PEM certificates in PATH (implies TLS).
        let (mut tls, mut tls_ca) = (false, None);
        for (k, v) in parsed.query_pairs() {
            match k.as_ref() {
                "tls" => {
                    tls = v.parse().map_err(|_| {
                        TransportError::invalid_url(url, format!("tls={v} is not true or false"))
                    })?;
                }
                "tls_ca" => {
                    tls = true;
                    tls_ca = Some(std::path::PathBuf::from(v.as_ref()));
                }
                "ack_wait_ms" => {
                    let ms: u64 = v.parse().map_err(|_| {
                        TransportError::invalid_url(
                            url,
                            format!("ack_wait_ms={v} is not a number of milliseconds"),
                        )
                    })?;
                    ack_wait = Duration::from_millis(ms.max(100));
                }
                "ns" => {}
                other => {
                    return Err(TransportError::invalid_url(
                        url,
                        format!("unknown option {other:?} (known: ns, ack_wait_ms, tls, tls_ca)"),
                    ))
                }
            }
        }
        let auth = match (parsed.username(), parsed.password()) {
            ("", _) => String::new(),
            (u, Some(p)) => format!("{u}:{p}@"),
            (u, None) => format!("{u}@"),
        };
        Ok(Self {
            url: url.to_string(),
            server: format!("nats://{auth}{host}:{port}"),
            namespace,
            client: OnceCell::new(),
            streams: std::sync::Mutex::new(HashSet::new()),
            js: OnceCell::new(),
            replies: OnceCell::new(),
            ack_wait,
            tls,
            tls_ca,
        })
    }

    /// The JetStream context, made once (publishing made one per message).
    async fn js(&self) -> Result<&jetstream::Context, TransportError> {
        get_or_init_boxed(&self.js, || async {
            Ok(jetstream::new(self.client().await?.clone()))
        })
        .await
    }

    async fn replies(&self) -> Result<&Replies, TransportError> {
        get_or_init_boxed(&self.replies, || async {
            Replies::start(self.client().await?).await
        })
        .await
    }

    async fn client(&self) -> Result<&async_nats::Client, TransportError> {
        get_or_init_boxed(&self.client, || async {
            let mut options = async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(5))
                .require_tls(self.tls);
            if let Some(ca) = &self.tls_ca {
                options = options.add_root_certificates(ca.clone());
            }
            options
                .connect(&self.server)
                .await
                .map_err(|e| TransportError::Unreachable {
                    url: redact_url(&self.url),
                    source: Box::new(e),
                })
        })
        .await
    }

    /// Deletes `topic`'s stream and everything in it (consumers included). For tests and
    /// operations; a later publish creates it again.
    pub async fn delete_topic(&self, topic: &str) -> Result<(), TransportError> {
        let name = stream_name(topic);
        let js = self.js().await?;
        js.delete_stream(&name)
            .await
            .map_err(TransportError::other)?;
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
        Ok(())
    }

    async fn stream(&self, topic: &str) -> Result<jetstream::stream::Stream, TransportError> {
        check_subject("topic", topic).map_err(|r| TransportError::invalid_url(&self.url, r))?;
        let js = self.js().await?;
        let name = stream_name(topic);
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![topic.to_string()],
                storage: jetstream::stream::StorageType::File,
                max_age: Duration::from_secs(7 * 24 * 3600),
                ..Default::default()
            })
            .await
            .map_err(TransportError::other)?;
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_string());
        Ok(stream)
    }
}

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

fn envelope_of(topic: &str, message: &async_nats::Message, attempt: Option<i64>) -> Envelope {
    let mut headers = Headers::new();
    let mut id = None;
    for (k, values) in message.headers.iter().flat_map(|hm| hm.iter()) {
        let (name, Some(v)) = (AsRef::<str>::as_ref(k), values.first()) else {
            continue;
        };
        // The CloudEvents id is the envelope's; the spec version is implied.
        if name.eq_ignore_ascii_case("ce-id") {
            id = Some(v.as_str().to_string());
        } else if !name.eq_ignore_ascii_case("ce-specversion") {
            headers.insert(name, v.as_str());
        }
    }
    let id = id.unwrap_or_else(switchyard_core::message::new_id);
    if let Some(a) = attempt {
        headers.insert(h::ATTEMPT, a.to_string());
    }
    if headers.get(h::CONTENT_TYPE).is_none() {
        headers.insert(h::CONTENT_TYPE, Codec::Json.content_type());
    }
    Envelope {
        id,
        subject: topic.to_string(),
        headers,
        payload: message.payload.clone(),
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
        Box::pin(async move {
            let limit = self.client().await?.max_payload();
            if payload.len() > limit {
                return Err(TransportError::PayloadTooLarge {
                    size: payload.len(),
                    limit,
                });
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

impl Requester for NatsTransport {
    fn request(&self, request: CallRequest) -> BoxFuture<'_, Result<Reply, CallError>> {
        // What needs no waiting is done before the future exists: the boxed future then holds
        // only what the call waits on.
        let CallRequest {
            service,
            route,
            args,
            token,
            headers: call_headers,
            deadline,
        } = request;
        let Some(service) = service else {
            return Box::pin(futures::future::ready(Err(CallError::NoService {
                route,
                transport: redact_url(&self.url),
            })));
        };
        let subject = match route_subject(&self.namespace, &service, &route) {
            Ok(s) => s,
            Err(reason) => {
                return Box::pin(futures::future::ready(Err(CallError::Encode {
                    route,
                    reason,
                })))
            }
        };
        let body = match wire::encode_call(&args, token.as_deref(), Codec::Json) {
            Ok(b) => b,
            Err(e) => {
                let reason = e.to_string();
                return Box::pin(futures::future::ready(Err(CallError::Encode {
                    route,
                    reason,
                })));
            }
        };
        let mut headers = to_nats_headers(&call_headers);
        if let Some(d) = deadline {
            let ms = d.saturating_duration_since(Instant::now()).as_millis();
            headers.insert(
                h::DEADLINE_MS,
                u64::try_from(ms).unwrap_or(u64::MAX).to_string().as_str(),
            );
        }
        Box::pin(async move {
            let client = self.client().await?;
            let (reply_to, waiting) = self.replies().await?.wait();
            client
                .publish_with_reply_and_headers(subject, reply_to, headers, body)
                .await
                .map_err(|e| CallError::Transport(TransportError::other(e)))?;
            // The caller's own timeout bounds the wait (it drops this future).
            let reply = waiting.await.ok_or_else(|| {
                CallError::Transport(TransportError::Other(
                    "the NATS connection closed before the reply came".into(),
                ))
            })?;
            if reply.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                return Err(CallError::Unreachable {
                    target: format!(
                        "{} (no instance of service {service} serves {route})",
                        redact_url(&self.url)
                    ),
                    source: "no responders".into(),
                });
            }
            let failed = reply
                .headers
                .as_ref()
                .is_some_and(|hm| hm.get(STATUS).is_some());
            wire::decode_reply(route, failed, &reply.payload)
        })
    }
}

/// The route a call's subject names: `sy.rpc.<ns>.<service>.a.b` → `/a/b`, escapes undone
/// (one allocation, no formatting: it runs for every call).
fn route_of(subject: &str, prefix: &str) -> String {
    let rest = subject.strip_prefix(prefix).unwrap_or("");
    let mut route = String::with_capacity(rest.len() + 1);
    route.push('/');
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '.' => route.push('/'),
            '%' => {
                let escape: String = chars.by_ref().take(2).collect();
                match escape.as_str() {
                    "2E" => route.push('.'),
                    "25" => route.push('%'),
                    other => {
                        route.push('%');
                        route.push_str(other);
                    }
                }
            }
            c => route.push(c),
        }
    }
    route
}

/// Answers one call on its reply subject.
struct NatsReply {
    client: async_nats::Client,
    reply_to: async_nats::Subject,
}

impl ReplyTo for NatsReply {
    fn send(self: Box<Self>, outcome: Result<Reply, RemoteError>) -> BoxFuture<'static, ()> {
        let (payload, status) = wire::reply_body(outcome);
        let Self { client, reply_to } = *self;
        Box::pin(async move {
            // A success needs no header block; only an error carries its code.
            let sent = match status {
                None => client.publish(reply_to, payload).await,
                Some(code) => {
                    let mut hm = async_nats::HeaderMap::new();
                    hm.insert(STATUS, code.to_string().as_str());
                    client.publish_with_headers(reply_to, hm, payload).await
                }
            };
            if let Err(e) = sent {
                tracing::warn!(target: "switchyard", error = %e, "could not send a NATS reply");
            }
        })
    }
}

/// One received call, or `None` for a message without a reply subject.
fn incoming(
    client: &async_nats::Client,
    prefix: &str,
    message: async_nats::Message,
) -> Option<IncomingCall> {
    let reply_to = message.reply?;
    let route = route_of(message.subject.as_str(), prefix);
    let headers = from_nats_headers(message.headers.as_ref());
    let deadline = headers.deadline().map(|d| Instant::now() + d);
    Some(IncomingCall {
        request: wire::decode_call(route, &message.payload, headers, deadline),
        reply: Box::new(NatsReply {
            client: client.clone(),
            reply_to,
        }),
    })
}

impl Responder for NatsTransport {
    fn listen(&self, served: Arc<Served>) -> BoxFuture<'_, Result<Listener, TransportError>> {
        Box::pin(async move {
            let client = self.client().await?.clone();
            // Made once: every call's route is read off its subject after this prefix.
            let prefix = service_prefix(&self.namespace, served.name());
            check_subject("service", prefix.trim_end_matches('.')).map_err(|reason| {
                TransportError::InvalidName {
                    what: "service",
                    name: served.name().to_string(),
                    reason,
                }
            })?;
            // Instances of one service share its calls: the queue group is the service.
            let calls = client
                .queue_subscribe(format!("{prefix}>"), served.name().to_string())
                .await
                .map_err(TransportError::other)?;
            // The subscription is only queued for the connection to send: `listen` returns
            // once the server has it, so that a call made right after finds a responder.
            client.flush().await.map_err(TransportError::other)?;
            let calls =
                calls.filter_map(move |m| futures::future::ready(incoming(&client, &prefix, m)));
            Ok(Listener::new(Box::pin(calls), self.url.clone()))
        })
    }
}

impl Transport for NatsTransport {
    fn name(&self) -> &'static str {
        "nats"
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
        redact_url(&self.url)
    }

    fn requester(&self) -> Option<&dyn Requester> {
        Some(self)
    }

    fn responder(&self) -> Option<&dyn Responder> {
        Some(self)
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move { self.client().await.map(drop) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_survives_its_subject() {
        for route in ["/hello", "/orders/create", "/a/b/c", "/v1.2/x", "/50%/a.b"] {
            let subject = route_subject("shop", "cart", route).unwrap();
            assert_eq!(route_of(&subject, "sy.rpc.shop.cart."), route, "{subject}");
        }
        assert_eq!(
            route_subject("shop", "cart", "/a/b").unwrap(),
            "sy.rpc.shop.cart.a.b"
        );
        assert_eq!(
            route_subject("shop", "cart", "/v1.2/x").unwrap(),
            "sy.rpc.shop.cart.v1%2E2.x"
        );
        for bad in ["/a b", "/a//b", "/a/*", "/>", "/"] {
            assert!(
                route_subject("shop", "cart", bad).is_err(),
                "{bad} accepted"
            );
        }
        assert!(route_subject("shop", "my cart", "/a").is_err());
        for (url, ns) in [
            ("nats://127.0.0.1:4222?ns=shop", "shop"),
            ("nats://127.0.0.1:4222/shop", "shop"),
            ("nats://127.0.0.1:4222", "default"),
        ] {
            assert_eq!(NatsTransport::from_url(url).unwrap().namespace, ns, "{url}");
        }
        // Another service's subject is not under this one's prefix.
        assert_eq!(
            service_prefix("shop", "cart"),
            "sy.rpc.shop.cart.",
            "the prefix a served instance reads routes after"
        );
    }
}
