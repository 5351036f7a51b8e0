use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use switchyard_core::call::CallRequest;
use switchyard_core::codec::Codec;
use switchyard_core::error::{redact_url, CallError, ErrorCode, RemoteError, TransportError};
use switchyard_core::message::{header as h, Envelope, Headers};
use switchyard_core::server::Served;
use switchyard_core::transport::{
    get_or_init_boxed, Acker, Capabilities, Delivery, DeliveryGuarantee, IncomingCall, Listener,
    Ordering, PendingReplies, Publisher, ReplyTo, Requester, Responder, SubscribeOptions,
    Subscriber, Subscription, SubscriptionMode, Transport,
};
use switchyard_core::values::Reply;
use switchyard_core::wire;
use tokio::sync::{mpsc, OnceCell, OwnedSemaphorePermit, Semaphore};

/// Largest event payload published (default 1 MiB, as on the other transports).
const MAX_MESSAGE: usize = 1024 * 1024;

/// The Redis transport.
pub struct RedisTransport {
    url: String,
    client: redis::Client,
    namespace: String,
    claim_idle: Duration,
    con: OnceCell<ConnectionManager>,
    replies: OnceCell<Arc<Replies>>,
    // When a call last found a live instance of each service (ms since the epoch): within
    // `ALIVE_FOR_MS` of it a call is pushed without asking again.
    seen_alive_ms: std::sync::Mutex<HashMap<Arc<str>, u64>>,
}

/// How long a seen heartbeat spares the next calls the liveness check. Heartbeats are
/// written every second and count for 5 s, so a dead service is noticed at most one second
/// later than the heartbeat alone allows; the check costs a Lua script per call (sequential
/// calls 0.76x of a raw client with it, 0.86x without).
const ALIVE_FOR_MS: u64 = 1_000;

impl std::fmt::Debug for RedisTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTransport")
            .field("url", &redact_url(&self.url))
            .finish()
    }
}

/// Calls waiting for their reply on this client's channel.
struct Replies {
    channel: String,
    waiting: PendingReplies<String, RpcReply>,
}

#[derive(Serialize, Deserialize)]
struct RpcRequest {
    cid: String,
    reply: String,
    route: String,
    deadline_ms: Option<u64>,
    headers: HashMap<String, String>,
    /// The call body exactly as `wire::encode_call` wrote it: carried through, not re-parsed.
    call: Box<RawValue>,
}

#[derive(Serialize, Deserialize)]
struct RpcReply {
    cid: String,
    #[serde(default)]
    values: Option<Vec<Value>>,
    #[serde(default)]
    error: Option<RemoteError>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

const STREAM_PREFIX: &str = "sy:s:";

fn stream_key(topic: &str) -> String {
    format!("{STREAM_PREFIX}{topic}")
}

impl RedisTransport {
    /// A transport for `redis://HOST:PORT[/DB][?ns=NAME&claim_idle_ms=N]`, or `rediss://…` for
    /// TLS (the server's certificate checked against the system's roots, or only against the
    /// PEM certificates in `tls_ca=PATH`). Connects on first use.
    pub fn from_url(url: &str) -> Result<Self, TransportError> {
        let mut parsed =
            url::Url::parse(url).map_err(|e| TransportError::invalid_url(url, e.to_string()))?;
        if !matches!(parsed.scheme(), "redis" | "rediss") {
            return Err(TransportError::invalid_url(
                url,
                "expected redis://HOST:PORT[/DB] or rediss://… (TLS)",
            ));
        }
        let mut namespace = "default".to_string();
        let mut claim_idle = Duration::from_secs(30);
        let mut tls_ca = None;
        for (k, v) in parsed.query_pairs() {
            match k.as_ref() {
                "ns" => namespace = v.to_string(),
                "tls_ca" if parsed.scheme() == "rediss" => {
                    let pem = std::fs::read(v.as_ref()).map_err(|e| {
                        TransportError::invalid_url(url, format!("tls_ca={v}: {e}"))
                    })?;
                    tls_ca = Some(pem);
                }
                "tls_ca" => {
                    return Err(TransportError::invalid_url(
                        url,
                        "tls_ca is for rediss:// (TLS) URLs",
                    ))
                }
                "claim_idle_ms" => {
                    let ms: u64 = v.parse().map_err(|_| {
                        TransportError::invalid_url(
                            url,
                            format!("claim_idle_ms={v} is not a number"),
                        )
                    })?;
                    claim_idle = Duration::from_millis(ms.max(50));
                }
                other => {
                    return Err(TransportError::invalid_url(
                        url,
                        format!("unknown option {other:?} (known: ns, claim_idle_ms, tls_ca)"),
                    ))
                }
            }
        }
        parsed.set_query(None);
        let client = match tls_ca {
            None => redis::Client::open(parsed.as_str()),
            Some(root_cert) => redis::Client::build_with_tls(
                parsed.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            ),
        }
        .map_err(|e| TransportError::invalid_url(url, e.to_string()))?;
        Ok(Self {
            url: url.to_string(),
            client,
            namespace,
            claim_idle,
            con: OnceCell::new(),
            replies: OnceCell::new(),
            seen_alive_ms: std::sync::Mutex::default(),
        })
    }

    fn unreachable(&self, e: redis::RedisError) -> TransportError {
        TransportError::Unreachable {
            url: redact_url(&self.url),
            source: Box::new(e),
        }
    }

    async fn con(&self) -> Result<ConnectionManager, TransportError> {
        get_or_init_boxed(&self.con, || async {
            // redis-rs's defaults retry a refused connection for minutes (6 tries, the
            // waits growing a hundredfold up to 60 s): a broker that is not there must
            // show at once, and start-up retries are the caller's (`ConnectRetry`).
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Duration::from_secs(5))
                .set_number_of_retries(1)
                .set_factor(2)
                .set_max_delay(500);
            ConnectionManager::new_with_config(self.client.clone(), config)
                .await
                .map_err(|e| self.unreachable(e))
        })
        .await
        .cloned()
    }

    /// A connection of its own, for blocking reads.
    async fn dedicated(&self) -> Result<MultiplexedConnection, TransportError> {
        self.client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| self.unreachable(e))
    }

    async fn replies(&self) -> Result<Arc<Replies>, TransportError> {
        get_or_init_boxed(&self.replies, || async {
            let replies = Arc::new(Replies {
                channel: format!("sy:reply:{}", switchyard_core::message::new_id()),
                waiting: PendingReplies::default(),
            });
            let mut pubsub = self
                .client
                .get_async_pubsub()
                .await
                .map_err(|e| self.unreachable(e))?;
            pubsub
                .subscribe(&replies.channel)
                .await
                .map_err(TransportError::other)?;
            let r = replies.clone();
            tokio::spawn(async move {
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    let Ok(payload) = msg.get_payload::<Vec<u8>>() else {
                        continue;
                    };
                    let Ok(mut reply) = serde_json::from_slice::<RpcReply>(&payload) else {
                        continue;
                    };
                    // A reply nobody waits for any more (its caller timed out) is dropped.
                    let cid = std::mem::take(&mut reply.cid);
                    r.waiting.complete(&cid, reply);
                }
            });
            Ok(replies)
        })
        .await
        .cloned()
    }
}

/// The envelope of a stream entry. An entry written by a plain client (without our `i`, `h`
/// and `p` fields) is not skipped: its fields become a JSON object payload and its id is the
/// entry's id (stable across redeliveries, for inbox de-duplication). A handler that cannot
/// decode it sends it to the dead-letter topic with the reason, like any bad payload.
fn envelope_of(topic: &str, entry: &StreamId) -> Envelope {
    let get = |f: &str| match entry.map.get(f) {
        Some(redis::Value::BulkString(b)) => Some(b),
        _ => None,
    };
    let ours = (|| {
        let id = std::str::from_utf8(get("i")?).ok()?.to_string();
        let headers_map: HashMap<String, String> = serde_json::from_slice(get("h")?).ok()?;
        let payload = get("p")?.clone().into();
        Some((id, headers_map, payload))
    })();
    match ours {
        Some((id, headers_map, payload)) => Envelope {
            id,
            subject: topic.to_string(),
            headers: headers_map.into_iter().collect(),
            payload,
        },
        None => {
            let fields: serde_json::Map<String, serde_json::Value> = entry
                .map
                .iter()
                .map(|(k, v)| {
                    let text = match v {
                        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                        other => format!("{other:?}"),
                    };
                    (k.clone(), serde_json::Value::String(text))
                })
                .collect();
            let mut env = Envelope::new(topic, serde_json::to_vec(&fields).unwrap_or_default());
            env.id = format!("{}/{}", stream_key(topic), entry.id);
            env
        }
    }
}

/// Headers as a JSON object, written straight from the sorted map.
struct HeadersJson<'a>(&'a Headers);

impl serde::Serialize for HeadersJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter())
    }
}

/// The `h` field of an entry: the headers' JSON written into the command itself.
impl redis::ToRedisArgs for HeadersJson<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        // Writing to a command buffer cannot fail, and string maps always encode.
        let _ = serde_json::to_writer(out.writer_for_next_arg(), self);
    }
}

/// A topic's stream key (`sy:s:<topic>`, as [`stream_key`]) written into the command itself:
/// no string made per publish.
struct StreamKey<'a>(&'a str);

impl redis::ToRedisArgs for StreamKey<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        use std::io::Write;
        let mut arg = out.writer_for_next_arg();
        let _ = arg.write_all(STREAM_PREFIX.as_bytes());
        let _ = arg.write_all(self.0.as_bytes());
    }
}

async fn add(con: &mut ConnectionManager, env: &Envelope) -> Result<(), redis::RedisError> {
    redis::cmd("XADD")
        .arg(StreamKey(&env.subject))
        .arg("MAXLEN")
        .arg("~")
        .arg(1_000_000)
        .arg("*")
        .arg("i")
        .arg(&env.id)
        .arg("h")
        .arg(HeadersJson(&env.headers))
        .arg("p")
        .arg(env.payload.as_ref())
        // The entry id the server answers is not needed: `()` takes any reply unread.
        .query_async::<()>(con)
        .await
}

struct RedisAcker {
    con: ConnectionManager,
    key: String,
    group: Option<String>,
    entry: String,
    _permit: Option<OwnedSemaphorePermit>,
}

impl RedisAcker {
    async fn requeue(
        mut con: ConnectionManager,
        key: String,
        group: String,
        entry: String,
        mut env: Envelope,
        delay: Option<Duration>,
    ) -> Result<(), TransportError> {
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let attempt = env.headers.attempt() + 1;
        env.headers.insert(h::ATTEMPT, attempt.to_string());
        add(&mut con, &env).await.map_err(TransportError::other)?;
        redis::cmd("XACK")
            .arg(&key)
            .arg(&group)
            .arg(&entry)
            .query_async::<i64>(&mut con)
            .await
            .map_err(TransportError::other)?;
        Ok(())
    }
}

impl Acker for RedisAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        let RedisAcker {
            mut con,
            key,
            group,
            entry,
            ..
        } = *self;
        Box::pin(async move {
            match group {
                Some(g) => redis::cmd("XACK")
                    .arg(key)
                    .arg(g)
                    .arg(entry)
                    .query_async::<i64>(&mut con)
                    .await
                    .map(|_| ())
                    .map_err(TransportError::other),
                None => Ok(()),
            }
        })
    }

    /// Without the envelope nothing can be re-added: the entry stays pending, and XAUTOCLAIM
    /// hands it to a live consumer after `claim_idle`. `Delivery` always calls `nack_with`.
    fn nack(
        self: Box<Self>,
        _delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        Box::pin(async { Ok(()) })
    }

    fn nack_with(
        self: Box<Self>,
        envelope: Envelope,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        (*self).requeue_beside(envelope, delay);
        Box::pin(async { Ok(()) })
    }

    fn abandon(self: Box<Self>, envelope: Envelope) {
        // Dropped unsettled: the consumer died mid-message; hand it back at once.
        (*self).requeue_beside(envelope, None);
    }
}

impl RedisAcker {
    /// Re-adds the message (attempt + 1) after `delay`, then acks the original. The delay
    /// runs beside the consumer: its slot is free meanwhile.
    fn requeue_beside(self, envelope: Envelope, delay: Option<Duration>) {
        let RedisAcker {
            con,
            key,
            group,
            entry,
            ..
        } = self;
        let Some(g) = group else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = RedisAcker::requeue(con, key, g, entry, envelope, delay).await {
                    tracing::warn!(target: "switchyard", error = %e, "could not requeue; XAUTOCLAIM will take it over");
                }
            });
        }
    }
}

impl Publisher for RedisTransport {
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            if envelope.payload.len() > MAX_MESSAGE {
                return Err(TransportError::PayloadTooLarge {
                    size: envelope.payload.len(),
                    limit: MAX_MESSAGE,
                });
            }
            let mut con = self.con().await?;
            add(&mut con, &envelope)
                .await
                .map_err(TransportError::other)
        })
    }
}

impl Subscriber for RedisTransport {
    fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Subscription, TransportError>> {
        let topic = topic.to_string();
        Box::pin(async move {
            let key = stream_key(&topic);
            let manager = self.con().await?;
            let mut reader = self.dedicated().await?;
            let prefetch = options.prefetch.max(1);
            let (tx, rx) = mpsc::channel::<Result<Delivery, TransportError>>(prefetch);
            let group = match options.mode {
                SubscriptionMode::Group(g) => {
                    let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
                        .arg("CREATE")
                        .arg(&key)
                        .arg(&g)
                        .arg("0")
                        .arg("MKSTREAM")
                        .query_async(&mut reader)
                        .await;
                    if let Err(e) = created {
                        if !e.to_string().contains("BUSYGROUP") {
                            return Err(TransportError::other(e));
                        }
                    }
                    Some(g)
                }
                _ => None,
            };
            let claim_idle = self.claim_idle;
            let slots = Arc::new(Semaphore::new(prefetch));
            tokio::spawn(async move {
                let consumer_name = switchyard_core::message::new_id();
                let mut last_id = "$".to_string();
                let mut last_claim = Instant::now() - claim_idle;
                while !tx.is_closed() {
                    let Ok(first) = slots.clone().acquire_owned().await else {
                        break;
                    };
                    // Read in batches: a consumer that settles one message at a time frees one
                    // slot at a time, and reading as soon as one is free cost a round trip per
                    // message. Wait a moment (not longer) for half the prefetch to be free.
                    let half = (prefetch / 2).max(1) as u32;
                    if slots.available_permits() + 1 < half as usize {
                        let more = tokio::time::timeout(
                            Duration::from_millis(2),
                            slots.acquire_many(half - 1),
                        )
                        .await;
                        drop(more);
                    }
                    let mut permits = vec![first];
                    while let Ok(p) = slots.clone().try_acquire_owned() {
                        permits.push(p);
                    }
                    let mut entries: Vec<StreamId> = Vec::new();
                    match &group {
                        Some(g) => {
                            if last_claim.elapsed() >= claim_idle / 2 {
                                last_claim = Instant::now();
                                let claimed: Result<StreamAutoClaimReply, _> =
                                    redis::cmd("XAUTOCLAIM")
                                        .arg(&key)
                                        .arg(g)
                                        .arg(&consumer_name)
                                        .arg(claim_idle.as_millis() as u64)
                                        .arg("0-0")
                                        .arg("COUNT")
                                        .arg(permits.len())
                                        .query_async(&mut reader)
                                        .await;
                                if let Ok(c) = claimed {
                                    entries.extend(c.claimed);
                                }
                            }
                            if entries.is_empty() {
                                let read: Result<Option<StreamReadReply>, _> =
                                    redis::cmd("XREADGROUP")
                                        .arg("GROUP")
                                        .arg(g)
                                        .arg(&consumer_name)
                                        .arg("COUNT")
                                        .arg(permits.len())
                                        .arg("BLOCK")
                                        .arg(500)
                                        .arg("STREAMS")
                                        .arg(&key)
                                        .arg(">")
                                        .query_async(&mut reader)
                                        .await;
                                match read {
                                    Ok(Some(r)) => {
                                        entries.extend(r.keys.into_iter().flat_map(|k| k.ids))
                                    }
                                    Ok(None) => {}
                                    Err(e) => {
                                        let _ = tx.send(Err(TransportError::other(e))).await;
                                        tokio::time::sleep(Duration::from_millis(200)).await;
                                    }
                                }
                            }
                        }
                        None => {
                            let read: Result<Option<StreamReadReply>, _> = redis::cmd("XREAD")
                                .arg("COUNT")
                                .arg(permits.len())
                                .arg("BLOCK")
                                .arg(500)
                                .arg("STREAMS")
                                .arg(&key)
                                .arg(&last_id)
                                .query_async(&mut reader)
                                .await;
                            match read {
                                Ok(Some(r)) => {
                                    entries.extend(r.keys.into_iter().flat_map(|k| k.ids))
                                }
                                Ok(None) => {}
                                Err(e) => {
                                    let _ = tx.send(Err(TransportError::other(e))).await;
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                }
                            }
                            if let Some(last) = entries.last() {
                                last_id = last.id.clone();
                            }
                        }
                    }
                    for entry in entries {
                        let env = envelope_of(&topic, &entry);
                        let permit = permits.pop();
                        let acker = RedisAcker {
                            con: manager.clone(),
                            key: key.clone(),
                            group: group.clone(),
                            entry: entry.id.clone(),
                            // Handed back on nack or abandon: no copy per delivery.
                            _permit: permit,
                        };
                        if tx
                            .send(Ok(Delivery::new(env, Box::new(acker))))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
            let stream =
                futures::stream::unfold(
                    rx,
                    |mut rx| async move { rx.recv().await.map(|d| (d, rx)) },
                );
            Ok(Box::pin(stream) as Subscription)
        })
    }
}

impl Requester for RedisTransport {
    fn request(&self, request: CallRequest) -> BoxFuture<'_, Result<Reply, CallError>> {
        Box::pin(async move {
            let route = request.route.clone();
            let Some(service) = request.service.clone() else {
                return Err(CallError::NoService {
                    route,
                    transport: redact_url(&self.url),
                });
            };
            let mut con = self.con().await?;
            let replies = self.replies().await?;
            let body = wire::encode_call(&request.args, request.token.as_deref(), Codec::Json)
                .map_err(|e| CallError::Encode {
                    route: route.clone(),
                    reason: e.to_string(),
                })?;
            let call = String::from_utf8(body.to_vec())
                .map_err(|e| e.to_string())
                .and_then(|text| RawValue::from_string(text).map_err(|e| e.to_string()))
                .map_err(|reason| CallError::Encode {
                    route: route.clone(),
                    reason,
                })?;
            let cid = switchyard_core::message::new_id();
            let req = RpcRequest {
                cid: cid.clone(),
                reply: replies.channel.clone(),
                route: route.clone(),
                deadline_ms: request
                    .deadline
                    .map(|d| d.saturating_duration_since(Instant::now()).as_millis() as u64),
                headers: request
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                call,
            };
            // Forgotten when this call stops waiting (reply, error, timeout or a failed push).
            let reply = replies.waiting.wait(cid);
            let queue = call_queue(&self.namespace, &service);
            let body = serde_json::to_vec(&req).unwrap_or_default();
            let now = now_ms();
            let seen = self.seen_alive(&service);
            let pushed: Result<i64, _> = if now.saturating_sub(seen) < ALIVE_FOR_MS {
                redis::cmd("LPUSH")
                    .arg(&queue)
                    .arg(body)
                    .query_async::<i64>(&mut con)
                    .await
                    .map(|_| 1)
            } else {
                // One round trip: the call is queued only if an instance is alive.
                let r = PUSH_IF_ALIVE
                    .key(alive_key(&queue))
                    .key(&queue)
                    .arg(now)
                    .arg(body)
                    .invoke_async(&mut con)
                    .await;
                if matches!(r, Ok(1)) {
                    self.seen_alive_ms
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(service.clone(), now);
                }
                r
            };
            match pushed {
                Ok(1) => {}
                Ok(_) => {
                    return Err(CallError::Unreachable {
                        target: format!(
                            "{} (no instance of service {service} in namespace {})",
                            redact_url(&self.url),
                            self.namespace
                        ),
                        source: "no live instance".into(),
                    })
                }
                Err(e) => return Err(CallError::Transport(TransportError::other(e))),
            }
            let reply = reply
                .await
                .ok_or(CallError::Transport(TransportError::Closed))?;
            match (reply.values, reply.error) {
                (_, Some(error)) => Err(CallError::Remote { route, error }),
                (Some(values), None) => Ok(Reply::Wire(values)),
                (None, None) => Err(CallError::Decode {
                    route,
                    expected: "values or an error",
                    reason: "empty reply".into(),
                }),
            }
        })
    }
}

/// Queues a call (ARGV[2]) on the list KEYS[2] only when an instance's heartbeat in the sorted
/// set KEYS[1] is newer than ARGV[1]; returns 1 when queued, 0 when nobody serves. A script, so
/// that the check and the push cost one round trip (they were two), and run atomically.
static PUSH_IF_ALIVE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"if redis.call('ZCOUNT', KEYS[1], ARGV[1], '+inf') == 0 then return 0 end
          redis.call('LPUSH', KEYS[2], ARGV[2])
          return 1",
    )
});

/// The list a service's calls are queued on: `sy:rpc:<namespace>:<service>`.
fn call_queue(namespace: &str, service: &str) -> String {
    format!("sy:rpc:{namespace}:{service}")
}

/// The sorted set of a service's live instances, by heartbeat expiry.
fn alive_key(queue: &str) -> String {
    format!("{queue}:alive")
}

impl RedisTransport {
    fn seen_alive(&self, service: &str) -> u64 {
        let seen = self.seen_alive_ms.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(service).copied().unwrap_or(0)
    }
}

/// One call popped off the queue, decoded.
fn incoming(con: &ConnectionManager, raw: &[u8]) -> Option<IncomingCall> {
    let Ok(req) = serde_json::from_slice::<RpcRequest>(raw) else {
        tracing::warn!(target: "switchyard", "malformed RPC request on the queue; dropped");
        return None;
    };
    let headers: Headers = req.headers.into_iter().collect();
    let deadline = req
        .deadline_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    Some(IncomingCall {
        request: wire::decode_call(req.route, req.call.get().as_bytes(), headers, deadline),
        reply: Box::new(RedisReply {
            con: con.clone(),
            channel: req.reply,
            cid: req.cid,
        }),
    })
}

/// Answers one call on its caller's reply channel.
struct RedisReply {
    con: ConnectionManager,
    channel: String,
    cid: String,
}

impl ReplyTo for RedisReply {
    fn send(self: Box<Self>, outcome: Result<Reply, RemoteError>) -> BoxFuture<'static, ()> {
        let Self {
            mut con,
            channel,
            cid,
        } = *self;
        let outcome = outcome.and_then(|reply| {
            reply.into_values().map_err(|e| {
                RemoteError::new(ErrorCode::Internal, format!("reply does not encode: {e}"))
            })
        });
        let reply = match outcome {
            Ok(values) => RpcReply {
                cid,
                values: Some(values),
                error: None,
            },
            Err(error) => RpcReply {
                cid,
                values: None,
                error: Some(error),
            },
        };
        let body = serde_json::to_vec(&reply).unwrap_or_default();
        Box::pin(async move {
            let sent: Result<i64, _> = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(body)
                .query_async(&mut con)
                .await;
            if let Err(e) = sent {
                tracing::warn!(target: "switchyard", error = %e, "could not publish an RPC reply");
            }
        })
    }
}

/// What the call stream of one served instance reads with: a blocking connection of its own
/// for BLPOP, and the shared one for heartbeats and replies.
struct CallQueue {
    blocking: MultiplexedConnection,
    con: ConnectionManager,
    queue: String,
    alive_key: String,
    instance: String,
    next_beat: Instant,
}

impl CallQueue {
    /// Writes this instance's heartbeat: alive for the next 5 s.
    async fn beat(&mut self) -> Result<(), redis::RedisError> {
        redis::cmd("ZADD")
            .arg(&self.alive_key)
            .arg(now_ms() + 5_000)
            .arg(&self.instance)
            .query_async::<i64>(&mut self.con)
            .await?;
        self.next_beat = Instant::now() + Duration::from_secs(1);
        Ok(())
    }

    /// The next call: heartbeats every second between waits of at most half a second.
    async fn next(mut self) -> Option<(IncomingCall, Self)> {
        loop {
            if Instant::now() >= self.next_beat {
                if let Err(e) = self.beat().await {
                    tracing::warn!(target: "switchyard", error = %e, "RPC heartbeat failed");
                }
            }
            let mut blpop = redis::cmd("BLPOP");
            blpop.arg(&self.queue).arg(0.5);
            let popped: Result<Option<(String, Vec<u8>)>, _> =
                blpop.query_async(&mut self.blocking).await;
            match popped {
                Ok(Some((_, raw))) => {
                    if let Some(call) = incoming(&self.con, &raw) {
                        return Some((call, self));
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(target: "switchyard", error = %e, "RPC queue read failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

impl Responder for RedisTransport {
    fn listen(&self, served: Arc<Served>) -> BoxFuture<'_, Result<Listener, TransportError>> {
        Box::pin(async move {
            let con = self.con().await?;
            let blocking = self.dedicated().await?;
            let queue = call_queue(&self.namespace, served.name());
            let mut calls = CallQueue {
                blocking,
                con: con.clone(),
                alive_key: alive_key(&queue),
                queue,
                instance: served.instance().to_string(),
                next_beat: Instant::now(),
            };
            // The first heartbeat is written before `listen` returns: a call made right after
            // must find this instance alive (written later, it raced such a call, which then
            // failed with "no live instance").
            calls.beat().await.map_err(TransportError::other)?;
            let (mut con, alive_key, instance) =
                (con, calls.alive_key.clone(), calls.instance.clone());
            let calls = futures::stream::unfold(calls, CallQueue::next);
            Ok(
                Listener::new(Box::pin(calls), self.url.clone()).on_close(async move {
                    let _: Result<i64, _> = redis::cmd("ZREM")
                        .arg(&alive_key)
                        .arg(&instance)
                        .query_async(&mut con)
                        .await;
                }),
            )
        })
    }
}

impl Transport for RedisTransport {
    fn name(&self) -> &'static str {
        "redis"
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
        Box::pin(async move { self.con().await.map(drop) })
    }
}
