//! Calls: pushed on the named service's list, taken by one live instance, answered on the
//! caller's channel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use switchyard_core::call::CallRequest;
use switchyard_core::codec::Codec;
use switchyard_core::error::{redact_url, CallError, ErrorCode, RemoteError, TransportError};
use switchyard_core::message::Headers;
use switchyard_core::server::Served;
use switchyard_core::transport::{
    IncomingCall, Listener, PendingReplies, ReplyTo, Requester, Responder,
};
use switchyard_core::values::Reply;
use switchyard_core::wire;

use crate::binding::*;
use crate::{RedisTransport, ALIVE_FOR_MS};

/// Calls waiting for their reply on this client's channel.
pub(crate) struct Replies {
    pub(crate) channel: String,
    pub(crate) waiting: PendingReplies<String, RpcReply>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct RpcRequest {
    pub(crate) cid: String,
    pub(crate) reply: String,
    pub(crate) route: String,
    pub(crate) deadline_ms: Option<u64>,
    /// When the call was queued (ms since the epoch, the caller's clock): the time it waits in
    /// the list counts against its deadline. Absent from older callers.
    #[serde(default)]
    pub(crate) sent_at_ms: Option<u64>,
    pub(crate) headers: HashMap<String, String>,
    /// The call body exactly as `wire::encode_call` wrote it: carried through, not re-parsed.
    pub(crate) call: Box<RawValue>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct RpcReply {
    pub(crate) cid: String,
    #[serde(default)]
    pub(crate) values: Option<Vec<Value>>,
    #[serde(default)]
    pub(crate) error: Option<RemoteError>,
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
                sent_at_ms: Some(now_ms()),
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
pub(crate) static PUSH_IF_ALIVE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| {
        redis::Script::new(
            r"if redis.call('ZCOUNT', KEYS[1], ARGV[1], '+inf') == 0 then return 0 end
          redis.call('LPUSH', KEYS[2], ARGV[2])
          return 1",
        )
    });

/// The list a service's calls are queued on: `sy:rpc:<namespace>:<service>`.
pub(crate) fn call_queue(namespace: &str, service: &str) -> String {
    format!("sy:rpc:{namespace}:{service}")
}

/// The sorted set of a service's live instances, by heartbeat expiry.
pub(crate) fn alive_key(queue: &str) -> String {
    format!("{queue}:alive")
}

impl RedisTransport {
    pub(crate) fn seen_alive(&self, service: &str) -> u64 {
        let seen = self.seen_alive_ms.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(service).copied().unwrap_or(0)
    }
}

/// What is left of a call's `deadline_ms` once it is taken off the queue at `now_ms`: the
/// time since it was sent is taken off (the list is a queue: a call can wait there). Clocks
/// are assumed in step, as for events' expiry; a clock behind the caller's takes nothing off
/// (never more time than the caller gave).
fn remaining(deadline_ms: u64, sent_at_ms: Option<u64>, now_ms: u64) -> Duration {
    let waited = sent_at_ms.map_or(0, |sent| now_ms.saturating_sub(sent));
    Duration::from_millis(deadline_ms.saturating_sub(waited))
}

/// One call popped off the queue, decoded.
pub(crate) fn incoming(con: &ConnectionManager, raw: &[u8]) -> Option<IncomingCall> {
    let Ok(req) = serde_json::from_slice::<RpcRequest>(raw) else {
        tracing::warn!(target: "switchyard", "malformed RPC request on the queue; dropped");
        return None;
    };
    let headers: Headers = req.headers.into_iter().collect();
    let deadline = req
        .deadline_ms
        .map(|ms| Instant::now() + remaining(ms, req.sent_at_ms, now_ms()));
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
pub(crate) struct RedisReply {
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
pub(crate) struct CallQueue {
    blocking: ConnectionManager,
    link: switchyard_core::transport::Link,
    con: ConnectionManager,
    queue: String,
    alive_key: String,
    instance: String,
    next_beat: Instant,
}

impl CallQueue {
    /// Writes this instance's heartbeat: alive for the next 5 s.
    pub(crate) async fn beat(&mut self) -> Result<(), redis::RedisError> {
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
    pub(crate) async fn next(mut self) -> Option<(IncomingCall, Self)> {
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
            crate::connection::report(&mut self.link, &popped);
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
            let blocking = self.connect().await?;
            let queue = call_queue(&self.namespace, served.name());
            let mut calls = CallQueue {
                blocking,
                link: self.links.link(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_a_call_waited_in_the_queue_counts_against_its_deadline() {
        // Sent with 300 ms left, taken 500 ms later: nothing left (answered as a timeout,
        // the handler not run), where it used to get its 300 ms again.
        assert_eq!(remaining(300, Some(1_000), 1_500), Duration::ZERO);
        assert_eq!(
            remaining(300, Some(1_000), 1_100),
            Duration::from_millis(200)
        );
        // An older caller, or a clock behind the caller's: the deadline as given.
        assert_eq!(remaining(300, None, 1_500), Duration::from_millis(300));
        assert_eq!(
            remaining(300, Some(2_000), 1_500),
            Duration::from_millis(300)
        );
    }
}
