//! Events: XADD to publish, consumer groups (XREADGROUP, XAUTOCLAIM) or XREAD to subscribe,
//! XACK to settle.

use std::collections::HashMap;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use switchyard_core::error::TransportError;
use switchyard_core::event_log::{position, LogCursor, SINGLE_LANE};
use switchyard_core::message::{header as h, Envelope};
use switchyard_core::transport::{
    Acker, Delivery, HeldDeliveries, Holding, Publisher, SubscribeOptions, Subscriber,
    Subscription, SubscriptionMode,
};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::binding::*;
use crate::connection::report;
use crate::RedisTransport;

/// Largest event payload published (default 1 MiB, as on the other transports).
pub(crate) const MAX_MESSAGE: usize = 1024 * 1024;
/// Entries a topic's stream holds at most, by default.
pub(crate) const MAX_LEN: u64 = 1_000_000;
/// How often a publisher looks at the length of a topic's stream: once a second per topic,
/// not at each publish (a round trip). A stream may go past its bound by a second's
/// publishes; nothing is lost by that.
const ROOM_CHECK: Duration = Duration::from_secs(1);
/// The idle time an entry handed back is given: longer than any `claim_idle`, so the next
/// XAUTOCLAIM of any member takes it.
const HANDED_BACK_IDLE_MS: u64 = 365 * 24 * 3_600_000;

/// What the last look at a topic's stream found: when, and its length if it was full.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Room {
    checked: Instant,
    full: Option<u64>,
}

pub(crate) struct RedisAcker {
    con: ConnectionManager,
    /// The stream the entry was read from: the topic's, or the group's retries.
    key: String,
    group: Option<String>,
    /// Where the group's retries go.
    retry_key: String,
    /// The member that read it.
    consumer: Arc<str>,
    entry: String,
    _permit: Option<OwnedSemaphorePermit>,
    /// Holds the entry with its reader until it is settled (see [`EntryKey`]).
    held: Option<Holding<EntryKey>>,
}

/// An entry of a group held by the member that read it, until settled or handed back: whether
/// it is from the group's retry stream (else the topic's), and its id. The member's
/// XAUTOCLAIM takes back entries idle for `claim_idle`, its own among them: one it still holds
/// (a slow handler, a letter `yard dlq` holds for a look) would otherwise be delivered to it a
/// second time, handled twice, and — if the second delivery is dropped with the subscription
/// — copied to the retry stream beside the first.
type EntryKey = (bool, String);

impl RedisAcker {
    async fn requeue_to(
        mut con: ConnectionManager,
        (key, retry_key): (String, String),
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
        add_to(&mut con, &retry_key, &env)
            .await
            .map_err(TransportError::other)?;
        settle(&mut con, &key, &group, &entry).await
    }
}

/// Acknowledges `entry` of the stream `key` for `group`. An entry of a group's retry stream
/// is deleted too: no other group reads that stream, so it would only grow.
async fn settle(
    con: &mut ConnectionManager,
    key: &str,
    group: &str,
    entry: &str,
) -> Result<(), TransportError> {
    let mut settle = redis::pipe();
    settle.cmd("XACK").arg(key).arg(group).arg(entry).ignore();
    if key.starts_with(RETRY_PREFIX) {
        settle.cmd("XDEL").arg(key).arg(entry).ignore();
    }
    settle
        .query_async::<()>(con)
        .await
        .map_err(TransportError::other)
}

impl Acker for RedisAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        let RedisAcker {
            mut con,
            key,
            group,
            entry,
            held,
            ..
        } = *self;
        Box::pin(async move {
            let settled = match group {
                Some(g) => settle(&mut con, &key, &g, &entry).await,
                None => Ok(()),
            };
            // In flight until the broker has it settled: no claim of ours takes it meanwhile.
            drop(held);
            settled
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
        match delay {
            Some(delay) if !delay.is_zero() => {
                (*self).requeue_beside(envelope, Some(delay));
                Box::pin(async { Ok(()) })
            }
            // Again at once: re-added before this returns.
            Some(_) => match (*self).requeue(envelope, None) {
                Some(requeue) => Box::pin(requeue),
                None => Box::pin(async { Ok(()) }),
            },
            // Handed back as it is (`yard dlq list` looked at it): left pending where it is,
            // in its place, and made claimable at once by any member's next XAUTOCLAIM (a
            // new member's first). Re-adding it would bring it straight back to a reader
            // still reading, and leave a half-done copy if that reader exits next.
            None => {
                let RedisAcker {
                    mut con,
                    key,
                    group,
                    consumer,
                    entry,
                    held,
                    ..
                } = *self;
                Box::pin(async move {
                    let _held = held;
                    let Some(g) = group else { return Ok(()) };
                    redis::cmd("XCLAIM")
                        .arg(&key)
                        .arg(&g)
                        .arg(consumer.as_ref())
                        .arg(0)
                        .arg(&entry)
                        .arg("IDLE")
                        .arg(HANDED_BACK_IDLE_MS)
                        .arg("JUSTID")
                        .query_async::<redis::Value>(&mut con)
                        .await
                        .map(drop)
                        .map_err(TransportError::other)
                })
            }
        }
    }

    fn abandon(self: Box<Self>, envelope: Envelope) {
        // Dropped unsettled: the consumer died mid-message; hand it back at once.
        (*self).requeue_beside(envelope, None);
    }
}

impl RedisAcker {
    /// Re-adds the message (attempt + 1) to the group's retry stream after `delay`, then acks
    /// the original. The delay runs beside the consumer: its slot is free meanwhile.
    fn requeue_beside(self, envelope: Envelope, delay: Option<Duration>) {
        let Some(requeue) = self.requeue(envelope, delay) else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = requeue.await {
                    tracing::warn!(target: "switchyard", error = %e, "could not requeue; XAUTOCLAIM will take it over");
                }
            });
        }
    }

    /// The re-adding of the message (see [`RedisAcker::requeue_to`]); `None` for a broadcast
    /// delivery, which nobody redelivers.
    fn requeue(
        self,
        envelope: Envelope,
        delay: Option<Duration>,
    ) -> Option<impl std::future::Future<Output = Result<(), TransportError>> + Send + 'static>
    {
        let RedisAcker {
            con,
            key,
            group,
            retry_key,
            entry,
            held,
            ..
        } = self;
        let group = group?;
        let requeue = RedisAcker::requeue_to(con, (key, retry_key), group, entry, envelope, delay);
        // The slot is free at once (the delay runs beside the consumer), but the entry stays
        // marked in flight until its copy is added and it is settled.
        Some(async move {
            let requeued = requeue.await;
            drop(held);
            requeued
        })
    }
}

/// Keeps the entries a member holds its own while it lives: every third of `claim_idle`,
/// those still held and still pending to it are claimed again by it (their idle time back to
/// zero), so that no other member's XAUTOCLAIM takes over an entry whose handler is slow but
/// alive; a member that dies keeps nothing, and its entries are taken over after
/// `claim_idle` as before.
fn keep_held(
    held: &HeldDeliveries<EntryKey>,
    con: ConnectionManager,
    streams: [String; 2],
    group: String,
    consumer: Arc<str>,
    claim_idle: Duration,
) {
    let renew = Arc::new((streams, group, consumer));
    held.renew_every(claim_idle / 3, move |keys| {
        let (mut con, renew) = (con.clone(), renew.clone());
        async move {
            let ([topic_stream, retry_stream], group, consumer) = &*renew;
            let mut by_stream: [Vec<String>; 2] = Default::default();
            for (retry, id) in keys {
                by_stream[usize::from(retry)].push(id);
            }
            for (stream, ids) in [topic_stream, retry_stream].into_iter().zip(by_stream) {
                for chunk in ids.chunks(256) {
                    let kept: Result<i64, _> = KEEP_MINE
                        .key(stream)
                        .arg(group)
                        .arg(consumer.as_ref())
                        .arg(chunk)
                        .invoke_async(&mut con)
                        .await;
                    if let Err(e) = kept {
                        tracing::debug!(target: "switchyard", error = %e, %stream, "could not renew the entries held");
                    }
                }
            }
        }
    });
}

/// Claims again, for `consumer`, those of the entries named that are still pending to it
/// (not to another member that took one over meanwhile: XCLAIM alone does not look), in one
/// step. `JUSTID`: their delivery counts stay as they are.
static KEEP_MINE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        local mine = {}
        for i = 3, #ARGV do
            local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
            if #p > 0 then mine[#mine + 1] = ARGV[i] end
        end
        local n = #mine
        if n > 0 then
            mine[n + 1] = 'JUSTID'
            redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(mine))
        end
        return n
        ",
    )
});

/// Creates consumer group `group` on the stream `key` (and the stream), reading from its
/// start; one that exists is kept as it is.
async fn create_group(
    con: &mut impl redis::aio::ConnectionLike,
    key: &str,
    group: &str,
) -> Result<(), TransportError> {
    let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(con)
        .await;
    match created {
        Err(e) if !e.to_string().contains("BUSYGROUP") => Err(TransportError::other(e)),
        _ => Ok(()),
    }
}

impl Publisher for RedisTransport {
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            if envelope.payload.len() > self.max_message {
                return Err(TransportError::PayloadTooLarge {
                    size: envelope.payload.len(),
                    limit: self.max_message,
                });
            }
            let mut con = self.con().await?;
            self.room(&mut con, &envelope.subject).await?;
            add(&mut con, &envelope)
                .await
                .map_err(TransportError::other)
        })
    }

    fn keep(&self, topic: &str, group: &str) -> BoxFuture<'_, Result<(), TransportError>> {
        // A stream keeps everything for a group that joins later; the group made now also
        // keeps its entries from being trimmed before it read them.
        let (key, group) = (stream_key(topic), group.to_string());
        Box::pin(async move {
            let mut con = self.con().await?;
            create_group(&mut con, &key, &group).await
        })
    }
}

impl RedisTransport {
    /// Refuses a publish to `topic` while its stream holds `max_len` entries that some group
    /// has not settled. Redis' own bound (`XADD MAXLEN`) would drop the oldest entries,
    /// read or not, without a word.
    async fn room(&self, con: &mut ConnectionManager, topic: &str) -> Result<(), TransportError> {
        let last = self
            .room
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
            .copied();
        let full = match last {
            Some(room) if room.checked.elapsed() < ROOM_CHECK => room.full,
            _ => {
                let full = self.look(con, topic).await?;
                self.room.lock().unwrap_or_else(|p| p.into_inner()).insert(
                    topic.to_string(),
                    Room {
                        checked: Instant::now(),
                        full,
                    },
                );
                full
            }
        };
        match full {
            None => Ok(()),
            Some(len) => Err(TransportError::Rejected(
                switchyard_core::error::RemoteError::new(
                    switchyard_core::error::ErrorCode::Unavailable,
                    format!(
                        "the stream of {topic} is full: {len} entries (max_len {}) not yet settled by every consumer group",
                        self.max_len
                    ),
                ),
            )),
        }
    }

    /// The length of `topic`'s stream when it is full even after trimming what every group
    /// settled; `None` when there is room.
    async fn look(
        &self,
        con: &mut ConnectionManager,
        topic: &str,
    ) -> Result<Option<u64>, TransportError> {
        let key = stream_key(topic);
        if xlen(con, &key).await? < self.max_len {
            return Ok(None);
        }
        trim_settled(con, &key, self.max_len).await?;
        let left = xlen(con, &key).await?;
        if left < self.max_len {
            return Ok(None);
        }
        tracing::warn!(target: "switchyard", %topic, entries = left, max_len = self.max_len, "stream full of entries not settled by every group: publishes refused");
        Ok(Some(left))
    }
}

/// The length of the stream `key`.
async fn xlen(con: &mut ConnectionManager, key: &str) -> Result<u64, TransportError> {
    redis::cmd("XLEN")
        .arg(key)
        .query_async(con)
        .await
        .map_err(TransportError::other)
}

/// Trims from the stream `key` what every consumer group has settled: entries before the
/// oldest that some group has not been given or has not acknowledged. A stream no group
/// reads (broadcast only) keeps its newest half, and that is logged with the count.
async fn trim_settled(
    con: &mut ConnectionManager,
    key: &str,
    max_len: u64,
) -> Result<(), TransportError> {
    let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(key)
        .query_async(con)
        .await
        .map_err(TransportError::other)?;
    if groups.is_empty() {
        let trimmed: u64 = redis::cmd("XTRIM")
            .arg(key)
            .arg("MAXLEN")
            .arg(max_len / 2)
            .query_async(con)
            .await
            .map_err(TransportError::other)?;
        tracing::warn!(target: "switchyard", stream = %key, trimmed, "stream full and no consumer group reads it: its oldest entries trimmed");
        return Ok(());
    }
    let mut oldest: Option<(u64, u64)> = None;
    for group in &groups {
        let text = |field: &str| {
            group
                .get(field)
                .and_then(|v| redis::from_redis_value::<String>(v).ok())
        };
        let (Some(name), Some(delivered)) = (text("name"), text("last-delivered-id")) else {
            continue;
        };
        // (count, oldest id, newest id, per consumer): the oldest pending one.
        let pending: (u64, Option<String>, Option<String>, redis::Value) = redis::cmd("XPENDING")
            .arg(key)
            .arg(&name)
            .query_async(con)
            .await
            .map_err(TransportError::other)?;
        // The next entry after the last delivered one is the group's first unread one.
        let unread = entry_id(&delivered).map(|(ms, seq)| (ms, seq.saturating_add(1)));
        let unsettled = pending.1.as_deref().and_then(entry_id);
        for id in [unread, unsettled].into_iter().flatten() {
            oldest = Some(oldest.map_or(id, |o| o.min(id)));
        }
    }
    if let Some((ms, seq)) = oldest {
        redis::cmd("XTRIM")
            .arg(key)
            .arg("MINID")
            .arg(format!("{ms}-{seq}"))
            .query_async::<u64>(con)
            .await
            .map_err(TransportError::other)?;
    }
    Ok(())
}

/// The id of the last entry of the stream `key` (`None` when it has none).
async fn last_entry(
    con: &mut ConnectionManager,
    key: &str,
) -> Result<Option<String>, TransportError> {
    let last: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(con)
        .await
        .map_err(TransportError::other)?;
    Ok(last.ids.into_iter().next().map(|e| e.id))
}

/// A stream entry id `ms-seq` as numbers, which order as the ids do.
fn entry_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

impl Subscriber for RedisTransport {
    fn lag(&self, topic: &str, group: &str) -> BoxFuture<'_, Result<Option<u64>, TransportError>> {
        let (key, group) = (stream_key(topic), group.to_string());
        Box::pin(async move {
            let mut con = self.con().await?;
            // XINFO GROUPS: one map per group; `lag` (Redis 7) is nil when Redis cannot tell.
            let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&key)
                .query_async(&mut con)
                .await
                .map_err(TransportError::other)?;
            let lag = groups
                .iter()
                .find(|g| {
                    g.get("name")
                        .and_then(|n| redis::from_redis_value::<String>(n).ok())
                        .is_some_and(|n| n == group)
                })
                .and_then(|g| g.get("lag"))
                .and_then(|l| redis::from_redis_value::<u64>(l).ok());
            Ok(lag)
        })
    }

    fn log_end(&self, topic: &str) -> BoxFuture<'_, Result<Option<LogCursor>, TransportError>> {
        let key = stream_key(topic);
        Box::pin(async move {
            let mut con = self.con().await?;
            let mut end = LogCursor::new();
            if let Some(last) = last_entry(&mut con, &key).await? {
                end.set(SINGLE_LANE, last);
            }
            Ok(Some(end))
        })
    }

    fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Subscription, TransportError>> {
        let topic = topic.to_string();
        Box::pin(async move {
            let key = stream_key(&topic);
            let mut manager = self.con().await?;
            let mut reader = self.connect().await?;
            let prefetch = options.prefetch.max(1);
            let (tx, rx) = mpsc::channel::<Result<Delivery, TransportError>>(prefetch);
            // Where a reader of no group starts: the entry it reads after.
            let mut after = String::new();
            let replaying = matches!(options.mode, SubscriptionMode::Replay { .. });
            let group = match options.mode {
                SubscriptionMode::Group(g) => {
                    create_group(&mut reader, &key, &g).await?;
                    create_group(&mut reader, &retry_key(&g, &topic), &g).await?;
                    Some(g)
                }
                // A log reader reads from the beginning, or after its cursor's entry.
                SubscriptionMode::Replay { after: cursor } => {
                    let from = cursor.as_ref().and_then(|c| c.get(SINGLE_LANE));
                    after = from.unwrap_or("0-0").to_string();
                    None
                }
                // A broadcast subscriber reads after where the stream ends when `subscribe`
                // returns, found before it does: its reader's `$` would be where it ends when
                // that read is sent (later, on its own task), and what was published between
                // would be missed.
                _ => {
                    let end = last_entry(&mut manager, &key).await?;
                    after = end.unwrap_or_else(|| "0-0".to_string());
                    None
                }
            };
            // The group's retries are read beside the topic's stream.
            let retries = retry_key(group.as_deref().unwrap_or_default(), &topic);
            let claim_idle = self.claim_idle;
            let slots = Arc::new(Semaphore::new(prefetch));
            let mut link = self.links.link();
            tokio::spawn(async move {
                let consumer_name = switchyard_core::message::new_id();
                let consumer: Arc<str> = consumer_name.as_str().into();
                let mut last_id = after;
                let mut last_claim = Instant::now() - claim_idle;
                let held_entries = HeldDeliveries::<EntryKey>::default();
                if let Some(g) = &group {
                    keep_held(
                        &held_entries,
                        manager.clone(),
                        [key.clone(), retries.clone()],
                        g.clone(),
                        consumer.clone(),
                        claim_idle,
                    );
                }
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
                    // (stream, entry): from the topic's stream or the group's retries.
                    let mut entries: Vec<(String, StreamId)> = Vec::new();
                    match &group {
                        Some(g) => {
                            if last_claim.elapsed() >= claim_idle / 2 {
                                last_claim = Instant::now();
                                for stream in [&key, &retries] {
                                    let claimed: Result<StreamAutoClaimReply, _> =
                                        redis::cmd("XAUTOCLAIM")
                                            .arg(stream)
                                            .arg(g)
                                            .arg(&consumer_name)
                                            .arg(claim_idle.as_millis() as u64)
                                            .arg("0-0")
                                            .arg("COUNT")
                                            .arg(permits.len())
                                            .query_async(&mut reader)
                                            .await;
                                    if let Ok(c) = claimed {
                                        entries.extend(
                                            c.claimed.into_iter().map(|e| (stream.clone(), e)),
                                        );
                                    }
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
                                        .arg(&retries)
                                        .arg(">")
                                        .arg(">")
                                        .query_async(&mut reader)
                                        .await;
                                report(&mut link, &read);
                                match read {
                                    Ok(Some(r)) => {
                                        entries.extend(r.keys.into_iter().flat_map(|k| {
                                            let stream = k.key;
                                            k.ids.into_iter().map(move |e| (stream.clone(), e))
                                        }))
                                    }
                                    Ok(None) => {}
                                    // A server restarted without its data lost the group:
                                    // made again, it reads what is published from now on.
                                    Err(e) if e.code() == Some("NOGROUP") => {
                                        let _ = tx.send(Err(TransportError::other(e))).await;
                                        for stream in [&key, &retries] {
                                            if let Err(e) =
                                                create_group(&mut reader, stream, g).await
                                            {
                                                tracing::warn!(target: "switchyard", error = %e, "could not make the consumer group again");
                                            }
                                        }
                                    }
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
                            report(&mut link, &read);
                            match read {
                                Ok(Some(r)) => entries.extend(
                                    r.keys
                                        .into_iter()
                                        .flat_map(|k| k.ids)
                                        .map(|e| (key.clone(), e)),
                                ),
                                Ok(None) => {}
                                Err(e) => {
                                    let _ = tx.send(Err(TransportError::other(e))).await;
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                }
                            }
                            if let Some((_, last)) = entries.last() {
                                last_id = last.id.clone();
                            }
                        }
                    }
                    let mut stopped = false;
                    for (stream, entry) in entries {
                        // Of a group: marked in flight, or passed over when it is already (our
                        // own claim took back one we still hold).
                        let held = match &group {
                            Some(_) => {
                                let key = (stream == retries, entry.id.clone());
                                match held_entries.hold(key) {
                                    Some(held) => Some(held),
                                    None => continue,
                                }
                            }
                            None => None,
                        };
                        let mut env = envelope_of(&topic, &entry);
                        if replaying {
                            env.headers
                                .insert(h::LOG_POSITION, position(SINGLE_LANE, &entry.id));
                        }
                        // Two streams read at once may give more than the slots taken: the
                        // rest wait for slots, so no more than `prefetch` are in flight.
                        let permit = match permits.pop() {
                            Some(p) => Some(p),
                            None => slots.clone().acquire_owned().await.ok(),
                        };
                        let acker = RedisAcker {
                            con: manager.clone(),
                            key: stream,
                            group: group.clone(),
                            retry_key: retries.clone(),
                            consumer: consumer.clone(),
                            entry: entry.id.clone(),
                            // Handed back on nack or abandon: no copy per delivery.
                            _permit: permit,
                            held,
                        };
                        // Once the subscription is gone, what this read brought is handed
                        // back (a delivery dropped unsettled is), not left pending to this
                        // member until another one's XAUTOCLAIM takes it after `claim_idle`.
                        let delivery = Delivery::new(env, Box::new(acker));
                        if stopped || tx.send(Ok(delivery)).await.is_err() {
                            stopped = true;
                        }
                    }
                    if stopped {
                        return;
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
