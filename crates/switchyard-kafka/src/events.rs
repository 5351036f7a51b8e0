//! Events: produce with the ordering key as record key, consume in groups committing only
//! settled offsets, redeliver through a retry topic.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use switchyard_core::error::{redact_url, TransportError};
use switchyard_core::event_log::{position, LogCursor};
use switchyard_core::message::{header as h, new_id, Envelope};
use switchyard_core::transport::{
    Acker, Delivery, Link, Publisher, SubscribeOptions, Subscriber, Subscription, SubscriptionMode,
};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

use crate::binding::*;
use crate::connection::*;
use crate::KafkaTransport;

/// Largest event payload published by default (1 MiB, Kafka's own default message limit).
pub(crate) const MAX_MESSAGE: usize = 1024 * 1024;

/// How long a group member may go without a heartbeat before the group gives its partitions
/// to others.
pub(crate) const SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// How long a group member may go without polling before it leaves its group, by default
/// (Kafka's own default).
pub(crate) const MAX_POLL_INTERVAL: Duration = Duration::from_secs(300);

/// Offsets handed out and not yet settled, per partition: the committed position is the
/// lowest of them, so a later offset is never committed before an earlier one is done.
#[derive(Default)]
pub(crate) struct Positions {
    // By topic, then partition: looked up with the topic as `&str`, no allocation per message.
    pub(crate) partitions: HashMap<Arc<str>, HashMap<i32, Track>>,
}

pub(crate) struct Track {
    pub(crate) pending: BTreeSet<i64>,
    pub(crate) last: i64,
}

impl Positions {
    fn received(&mut self, topic: &Arc<str>, partition: i32, offset: i64) {
        let partitions = match self.partitions.get_mut(&**topic) {
            Some(p) => p,
            None => self.partitions.entry(topic.clone()).or_default(),
        };
        let t = partitions.entry(partition).or_insert(Track {
            pending: BTreeSet::new(),
            last: offset - 1,
        });
        if offset <= t.last {
            // Read again (after a rebalance): what was pending from before is moot.
            t.pending.clear();
        }
        t.pending.insert(offset);
        t.last = offset;
    }

    /// Settles `offset`; returns the position to commit when it moved.
    fn settled(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let t = self.partitions.get_mut(topic)?.get_mut(&partition)?;
        let before = t.pending.first().copied();
        if !t.pending.remove(&offset) {
            return None;
        }
        let now = t.pending.first().copied().unwrap_or(t.last + 1);
        (before != Some(now)).then_some(now)
    }

    fn revoked(&mut self, tpl: &TopicPartitionList) {
        for e in tpl.elements() {
            if let Some(p) = self.partitions.get_mut(e.topic()) {
                p.remove(&e.partition());
            }
        }
    }
}

/// Tells `subscribe` when the group gave this member its partitions, and forgets the
/// positions of partitions taken away.
pub(crate) struct GroupContext {
    pub(crate) assigned: watch::Sender<bool>,
    pub(crate) positions: Arc<Mutex<Positions>>,
    // rdkafka keeps no connection state to ask: its statistics (every second) say whether
    // a broker is up, its "all brokers down" error says at once when none is.
    pub(crate) link: Mutex<Link>,
    // Whether the reader paused its partitions; a new assignment is not paused.
    pub(crate) paused: Arc<AtomicBool>,
}

impl GroupContext {
    fn report(&self, up: bool) {
        let mut link = self.link.lock().unwrap_or_else(|p| p.into_inner());
        if up {
            link.up();
        } else {
            link.down();
        }
    }
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        self.report(statistics.brokers.values().any(|b| b.state == "UP"));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if let KafkaError::Global(RDKafkaErrorCode::AllBrokersDown) = error {
            self.report(false);
        }
        tracing::warn!(target: "switchyard", %error, reason, "Kafka client error");
    }
}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(_) => {
                self.paused.store(false, AtomicOrdering::Relaxed);
                let _ = self.assigned.send(true);
            }
            Rebalance::Revoke(tpl) => self
                .positions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .revoked(tpl),
            Rebalance::Error(e) => {
                tracing::warn!(target: "switchyard", error = %e, "Kafka rebalance failed")
            }
        }
    }
}

pub(crate) type GroupConsumer = StreamConsumer<GroupContext>;

/// A group consumer that is closed on a thread of its own when its last handle goes. Closing
/// it (leaving the group) waits on the broker, and without end while the broker cannot be
/// reached (librdkafka's close has no timeout): on a runtime's worker it would stall that
/// worker, and the runtime's shutdown with it.
pub(crate) struct Member(Option<GroupConsumer>);

impl Member {
    fn new(consumer: GroupConsumer) -> Self {
        Self(Some(consumer))
    }
}

impl std::ops::Deref for Member {
    type Target = GroupConsumer;

    fn deref(&self) -> &GroupConsumer {
        // Taken only by `drop`, after which nothing can deref it.
        self.0
            .as_ref()
            .expect("a Kafka group consumer is taken only when dropped")
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(consumer) = self.0.take() {
            let closing = std::thread::Builder::new()
                .name("sy-kafka-close".into())
                .spawn(move || drop(consumer));
            if let Err(e) = closing {
                tracing::warn!(target: "switchyard", error = %e, "no thread to close a Kafka consumer on: closed on this one");
            }
        }
    }
}

pub(crate) struct KafkaAcker {
    pub(crate) consumer: Arc<Member>,
    pub(crate) positions: Arc<Mutex<Positions>>,
    pub(crate) committing: bool,
    // A log reader's: settling does nothing.
    pub(crate) replay: bool,
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) inner: Arc<Inner>,
    pub(crate) retry_topic: Arc<str>,
    pub(crate) envelope: Option<Envelope>,
    // Holds one unit of prefetch until settled.
    pub(crate) _permit: OwnedSemaphorePermit,
}

impl KafkaAcker {
    fn settle(&self) -> Result<(), TransportError> {
        let position = self
            .positions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .settled(&self.topic, self.partition, self.offset);
        if let (Some(p), true) = (position, self.committing) {
            // Stored now, committed by the client within the auto-commit interval and when
            // the subscription ends. `store_offset` stores the offset after the one given:
            // `p` is the next to read, so `p - 1` is handed over.
            self.consumer
                .store_offset(&self.topic, self.partition, p - 1)
                .map_err(TransportError::other)?;
        }
        Ok(())
    }

    async fn redeliver(mut self: Box<Self>, delay: Option<Duration>) -> Result<(), TransportError> {
        if self.replay {
            return Ok(());
        }
        let Some(mut env) = self.envelope.take() else {
            return Ok(());
        };
        // Kafka has no per-message redelivery: after the delay the message goes, its attempt
        // counted, to a retry topic only this group reads; then its offset is settled.
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let attempt = env.headers.attempt();
        env.headers.insert(h::ATTEMPT, (attempt + 1).to_string());
        let retry = self.retry_topic.clone();
        self.inner.send(&retry, &env).await?;
        self.settle()
    }
}

impl Acker for KafkaAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        let result = self.settle();
        Box::pin(async move { result })
    }

    /// Without the envelope there is nothing to re-publish: the offset stays unsettled, so
    /// the message comes again after a rebalance or restart. `Delivery` always calls
    /// `nack_with`.
    fn nack(
        self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        Box::pin(self.redeliver(delay))
    }

    fn nack_with(
        mut self: Box<Self>,
        envelope: Envelope,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        self.envelope = Some(envelope);
        Box::pin(self.redeliver(delay))
    }

    fn abandon(mut self: Box<Self>, envelope: Envelope) {
        // Dropped unsettled: hand it back through the retry topic at once.
        if self.replay {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.envelope = Some(envelope);
            rt.spawn(async move {
                let _ = self.redeliver(None).await;
            });
        }
    }
}

/// Reads the group consumer on the subscriber's own task: the subscription stream polls
/// rdkafka directly, so a message costs no hand-over between tasks (a pump task feeding a
/// channel cost a cross-thread wake per message, most of the consume time).
///
/// A group member must keep polling even when nobody reads its stream, or a rebalance (a
/// member joining) waits for it: a [`keeper`] task polls in the reader's place while the
/// reader is idle and keeps what it reads for the reader's next turn.
pub(crate) struct Reader(Arc<Shared>);

pub(crate) struct Shared {
    pub(crate) inner: Arc<Inner>,
    pub(crate) consumer: Arc<Member>,
    pub(crate) positions: Arc<Mutex<Positions>>,
    pub(crate) committing: bool,
    // A log reader: each delivery says where it stands; nothing is redelivered.
    pub(crate) replay: bool,
    pub(crate) main: Arc<str>,
    pub(crate) retry_topic: Arc<str>,
    // At most `prefetch` deliveries unsettled: each holds a permit until settled.
    pub(crate) room: Arc<Semaphore>,
    // Whoever holds it polls the consumer: the reader, or the keeper while the reader is idle.
    pub(crate) polling: tokio::sync::Mutex<()>,
    // The reader asks the keeper to hand polling back.
    pub(crate) wanted: Notify,
    // Reads so far, for the keeper to see whether the reader is active.
    pub(crate) reads: AtomicU64,
    // A delivery the keeper read (at most one: it reads again only once this is taken).
    pub(crate) kept: Mutex<Option<Delivery>>,
    pub(crate) has_kept: AtomicBool,
    // The keeper tells a reader waiting for room that it kept a delivery (which holds the
    // room the reader waits for).
    pub(crate) was_kept: Notify,
    // Whether the partitions are paused (changed only by whoever holds `polling`, and by a
    // rebalance, which runs inside a poll).
    pub(crate) paused: Arc<AtomicBool>,
}

impl Shared {
    fn take_kept(&self) -> Option<Delivery> {
        if !self.has_kept.load(AtomicOrdering::Acquire) {
            return None;
        }
        let d = self.kept.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.has_kept.store(false, AtomicOrdering::Release);
        d
    }

    fn keep(&self, d: Delivery) {
        *self.kept.lock().unwrap_or_else(|p| p.into_inner()) = Some(d);
        self.has_kept.store(true, AtomicOrdering::Release);
        self.was_kept.notify_one();
    }

    /// Stops fetching while the handlers hold every message they may (a member must still
    /// poll, or after `max.poll.interval.ms` it leaves its group and another member is given
    /// the messages it holds, to handle a second time). Polled while paused, it reads
    /// nothing; on resuming it reads from after the last message it handed over.
    fn pause(&self) {
        if self.paused.load(AtomicOrdering::Relaxed) {
            return;
        }
        if let Ok(assigned) = self.consumer.assignment() {
            if self.consumer.pause(&assigned).is_ok() {
                self.paused.store(true, AtomicOrdering::Relaxed);
            }
        }
    }

    fn resume(&self) {
        // Read first: every read comes this way, and a read costs less than a swap.
        if self.paused.load(AtomicOrdering::Relaxed) {
            self.paused.store(false, AtomicOrdering::Relaxed);
            if let Ok(assigned) = self.consumer.assignment() {
                let _ = self.consumer.resume(&assigned);
            }
        }
    }

    /// Puts back a message read while paused (from a partition assigned since, which is not
    /// paused): its partition is read from it again once resumed.
    fn put_back(&self, m: BorrowedMessage<'_>) {
        let (topic, partition, offset) = (m.topic().to_string(), m.partition(), m.offset());
        drop(m);
        // A seek forgets the position handed over, so the pause that follows keeps it.
        let _ = self
            .consumer
            .seek(&topic, partition, Offset::Offset(offset), Duration::ZERO);
        self.paused.store(false, AtomicOrdering::Relaxed);
        self.pause();
    }

    fn delivery(&self, m: BorrowedMessage<'_>, permit: OwnedSemaphorePermit) -> Delivery {
        let topic = if m.topic() == &*self.retry_topic {
            self.retry_topic.clone()
        } else {
            self.main.clone()
        };
        let (partition, offset) = (m.partition(), m.offset());
        // Messages from the retry topic belong to the main topic.
        let mut envelope = envelope_of(&self.main, &m);
        drop(m);
        if self.replay {
            envelope
                .headers
                .insert(h::LOG_POSITION, position(partition, offset));
        }
        self.positions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .received(&topic, partition, offset);
        let acker = KafkaAcker {
            consumer: self.consumer.clone(),
            positions: self.positions.clone(),
            committing: self.committing,
            replay: self.replay,
            topic,
            partition,
            offset,
            inner: self.inner.clone(),
            retry_topic: self.retry_topic.clone(),
            // Handed back on nack or abandon: no copy per delivery.
            envelope: None,
            _permit: permit,
        };
        Delivery::new(envelope, Box::new(acker))
    }
}

impl Reader {
    async fn next(&self) -> Result<Delivery, TransportError> {
        let shared = &self.0;
        shared.reads.fetch_add(1, AtomicOrdering::Relaxed);
        if let Some(d) = shared.take_kept() {
            return Ok(d);
        }
        let permit = match shared.room.clone().try_acquire_owned() {
            Ok(permit) => permit,
            // The room is held by handlers, or by the keeper polling in this reader's place:
            // the keeper is asked to hand polling back, and what it reads meanwhile is taken
            // (it holds the room waited for: waiting for the room alone, the reader waited
            // for good, and so did the keeper, for the reader to take what it kept).
            Err(_) => {
                shared.wanted.notify_one();
                loop {
                    tokio::select! {
                        permit = shared.room.clone().acquire_owned() => {
                            break permit.map_err(TransportError::other)?;
                        }
                        () = shared.was_kept.notified() => {
                            if let Some(d) = shared.take_kept() {
                                return Ok(d);
                            }
                        }
                    }
                }
            }
        };
        let _polling = match shared.polling.try_lock() {
            Ok(g) => g,
            Err(_) => {
                shared.wanted.notify_one();
                shared.polling.lock().await
            }
        };
        // The keeper may have read one while this waited.
        if let Some(d) = shared.take_kept() {
            return Ok(d);
        }
        shared.resume();
        match shared.consumer.recv().await {
            Ok(m) => Ok(shared.delivery(m, permit)),
            Err(e) => {
                // A broker error is reported once, then reading goes on (rdkafka reconnects).
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(TransportError::other(e))
            }
        }
    }
}

/// Polls the consumer while the reader is idle (it has not asked for a message for a while
/// and is not polling), so that rebalances proceed; stops when the reader is dropped.
pub(crate) async fn keeper(shared: Weak<Shared>) {
    const IDLE: Duration = Duration::from_millis(50);
    let mut seen = u64::MAX;
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let reads = shared.reads.load(AtomicOrdering::Relaxed);
        let idle = reads == seen && !shared.has_kept.load(AtomicOrdering::Acquire);
        seen = reads;
        if idle {
            if let Ok(_polling) = shared.polling.try_lock() {
                // Without a free permit the handlers are full, so nothing may be read (a
                // reader waits too): the member polls on with its partitions paused.
                let permit = shared.room.clone().try_acquire_owned().ok();
                if permit.is_some() {
                    shared.resume();
                } else {
                    shared.pause();
                }
                tokio::select! {
                    m = shared.consumer.recv() => match (m, permit) {
                        (Ok(m), Some(permit)) => {
                            let d = shared.delivery(m, permit);
                            shared.keep(d);
                        }
                        (Ok(m), None) => shared.put_back(m),
                        (Err(_), _) => {}
                    },
                    _ = shared.wanted.notified() => {}
                    _ = tokio::time::sleep(IDLE) => {}
                }
                continue;
            }
        }
        drop(shared);
        tokio::time::sleep(IDLE).await;
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if self.0.committing {
            // What was settled is committed before this member leaves the group.
            let _ = self.0.consumer.commit_consumer_state(CommitMode::Sync);
            self.0.consumer.unsubscribe();
        } else if self.0.replay {
            // A log reader made no retry topic.
        } else if let Ok(rt) = tokio::runtime::Handle::try_current() {
            // A broadcast subscriber's retry topic is its own: it leaves with it.
            let (inner, retry) = (self.0.inner.clone(), self.0.retry_topic.clone());
            rt.spawn(async move {
                if let Err(e) = inner.delete_topic(&retry).await {
                    tracing::warn!(target: "switchyard", topic = %retry, error = %e, "cannot delete a broadcast subscriber's retry topic");
                }
            });
        }
    }
}

impl Publisher for KafkaTransport {
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            if envelope.payload.len() > self.inner.max_message {
                return Err(TransportError::PayloadTooLarge {
                    size: envelope.payload.len(),
                    limit: self.inner.max_message,
                });
            }
            check_topic(&self.inner.url, &envelope.subject)?;
            self.inner.send(&envelope.subject, &envelope).await
        })
    }
}

impl Subscriber for KafkaTransport {
    /// The group's lag on the topic: over its partitions, the high watermark less the group's
    /// committed offset (the low watermark where it committed none).
    fn lag(&self, topic: &str, group: &str) -> BoxFuture<'_, Result<Option<u64>, TransportError>> {
        // The Kafka group of a switchyard group, as `subscribe` names it.
        let (topic, group) = (topic.to_string(), format!("{group}.{topic}"));
        Box::pin(async move {
            check_topic(&self.inner.url, &topic)?;
            let config = self.inner.base_config();
            let lag = tokio::task::spawn_blocking(move || -> Result<u64, KafkaError> {
                // Never subscribed: it reads the group's offsets without joining the group.
                let reader: BaseConsumer = config.clone().set("group.id", &group).create()?;
                let wait = Duration::from_secs(10);
                let metadata = reader.fetch_metadata(Some(&topic), wait)?;
                let mut partitions = TopicPartitionList::new();
                for t in metadata.topics() {
                    for p in t.partitions() {
                        partitions.add_partition(&topic, p.id());
                    }
                }
                let committed = reader.committed_offsets(partitions, wait)?;
                let mut lag = 0u64;
                for e in committed.elements() {
                    let (low, high) = reader.fetch_watermarks(&topic, e.partition(), wait)?;
                    let at = match e.offset() {
                        Offset::Offset(o) => o,
                        _ => low,
                    };
                    lag += u64::try_from(high - at).unwrap_or(0);
                }
                Ok(lag)
            })
            .await
            .map_err(TransportError::other)?
            .map_err(|e| self.inner.unreachable(e))?;
            Ok(Some(lag))
        })
    }

    fn log_end(&self, topic: &str) -> BoxFuture<'_, Result<Option<LogCursor>, TransportError>> {
        let topic = topic.to_string();
        Box::pin(async move {
            check_topic(&self.inner.url, &topic)?;
            self.inner.ensure_topic(&topic).await?;
            let config = self.inner.base_config();
            let end = tokio::task::spawn_blocking(move || -> Result<LogCursor, KafkaError> {
                let mut end = LogCursor::new();
                for p in partition_ends(&end_reader(config)?, &topic)? {
                    if p.next > p.low {
                        end.set(p.partition.to_string(), (p.next - 1).to_string());
                    }
                }
                Ok(end)
            })
            .await
            .map_err(TransportError::other)?
            .map_err(|e| self.inner.unreachable(e))?;
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
            check_topic(&self.inner.url, &topic)?;
            let (group, committing, replay) = match &options.mode {
                // One Kafka group per (group, topic), as a group is per topic on every other
                // transport: members of one topic's group never wait on another topic's
                // rebalance.
                SubscriptionMode::Group(g) => (format!("{g}.{topic}"), true, None),
                // A log reader assigns itself every partition from the beginning (or after
                // its cursor) and commits nothing.
                SubscriptionMode::Replay { after } => (
                    format!("sy-replay-{}", &new_id()[..8]),
                    false,
                    Some(after.clone()),
                ),
                // A broadcast subscriber is a group of one that starts at the end.
                _ => (format!("sy-broadcast-{}", &new_id()[..8]), false, None),
            };
            let retry_topic = format!("sy.retry.{}", topic_safe(&group));
            self.inner.ensure_topic(&topic).await?;
            if replay.is_none() {
                self.inner.ensure_topic(&retry_topic).await?;
            }
            let positions: Arc<Mutex<Positions>> = Arc::default();
            let (assigned_tx, mut assigned) = watch::channel(false);
            let context_assigned = assigned_tx.clone();
            let paused = Arc::new(AtomicBool::new(false));
            let context = GroupContext {
                assigned: assigned_tx,
                positions: positions.clone(),
                link: Mutex::new(self.inner.links.link()),
                paused: paused.clone(),
            };
            let consumer: GroupConsumer = self
                .inner
                .base_config()
                .set("group.id", &group)
                .set("enable.auto.commit", "true")
                .set("auto.commit.interval.ms", "500")
                .set("enable.auto.offset.store", "false")
                .set(
                    "auto.offset.reset",
                    if committing { "earliest" } else { "latest" },
                )
                // Joins take ~3 s instead of ~23 s with the defaults.
                .set(
                    "session.timeout.ms",
                    SESSION_TIMEOUT.as_millis().to_string(),
                )
                .set("heartbeat.interval.ms", "500")
                .set("enable.partition.eof", "false")
                .set("statistics.interval.ms", "1000")
                .set(
                    "max.poll.interval.ms",
                    self.inner.max_poll_interval.as_millis().to_string(),
                )
                .create_with_context(context)
                .map_err(|e| self.inner.unreachable(e))?;
            let consumer = Arc::new(Member::new(consumer));
            if committing {
                consumer
                    .subscribe(&[topic.as_str(), retry_topic.as_str()])
                    .map_err(TransportError::other)?;
            } else {
                // A broadcast subscriber reads every partition from its current end. The ends
                // are looked up now, not when the first fetch resolves "latest", so that what is
                // published after `subscribe` returns is never skipped.
                let names = match replay {
                    Some(_) => vec![topic.clone()],
                    None => vec![topic.clone(), retry_topic.clone()],
                };
                let (c, from) = (consumer.clone(), replay.clone());
                let config = self.inner.base_config();
                let tpl = tokio::task::spawn_blocking(move || {
                    let mut tpl = TopicPartitionList::new();
                    // One client reads where every topic ends (made only when one is needed).
                    let mut reader = None;
                    for name in &names {
                        match &from {
                            // Just after the cursor's place, or the beginning.
                            Some(after) => {
                                let md = c.fetch_metadata(Some(name), Duration::from_secs(10))?;
                                for t in md.topics() {
                                    for p in t.partitions() {
                                        let offset = after
                                            .as_ref()
                                            .and_then(|a| a.get(&p.id().to_string()))
                                            .and_then(|o| o.parse::<i64>().ok())
                                            .map_or(Offset::Beginning, |o| Offset::Offset(o + 1));
                                        tpl.add_partition_offset(name, p.id(), offset)?;
                                    }
                                }
                            }
                            // Just after the last record there is now.
                            None => {
                                if reader.is_none() {
                                    reader = Some(end_reader(config.clone())?);
                                }
                                if let Some(reader) = &reader {
                                    for p in partition_ends(reader, name)? {
                                        tpl.add_partition_offset(
                                            name,
                                            p.partition,
                                            Offset::Offset(p.next),
                                        )?;
                                    }
                                }
                            }
                        }
                    }
                    c.assign(&tpl)?;
                    Ok::<_, KafkaError>(tpl)
                })
                .await
                .map_err(TransportError::other)?
                .map_err(|e| self.inner.unreachable(e))?;
                if tpl.count() == 0 {
                    return Err(TransportError::Other(
                        format!("Kafka reports no partitions for {topic}").into(),
                    ));
                }
                let _ = context_assigned.send(true);
            }
            let shared = Arc::new(Shared {
                inner: self.inner.clone(),
                consumer,
                positions,
                committing,
                replay: replay.is_some(),
                main: Arc::from(topic.as_str()),
                retry_topic: Arc::from(retry_topic.as_str()),
                room: Arc::new(Semaphore::new(options.prefetch.max(1))),
                polling: tokio::sync::Mutex::new(()),
                wanted: Notify::new(),
                reads: AtomicU64::new(0),
                kept: Mutex::new(None),
                has_kept: AtomicBool::new(false),
                was_kept: Notify::new(),
                paused,
            });
            // The keeper polls during the join, which runs the rebalance callbacks.
            tokio::spawn(keeper(Arc::downgrade(&shared)));
            let reader = Reader(shared);
            // Return once the group gave this member its partitions, so that what is
            // published next is this member's to read (and shared with the members there are).
            // (The `Ref` a wait returns holds the watch's lock: dropped at once.)
            let joined = tokio::time::timeout(Duration::from_secs(30), async {
                assigned.wait_for(|a| *a).await.is_ok()
            })
            .await;
            if joined != Ok(true) {
                return Err(TransportError::Other(
                    format!(
                        "no partitions assigned by the Kafka group coordinator at {} within 30 s",
                        redact_url(&self.inner.url)
                    )
                    .into(),
                ));
            }
            let stream = futures::stream::unfold(reader, |reader| async move {
                let d = reader.next().await;
                Some((d, reader))
            });
            Ok(Box::pin(stream) as Subscription)
        })
    }
}

/// Where one partition ends now.
struct PartitionEnd {
    partition: i32,
    /// Its first offset still kept.
    low: i64,
    /// The offset after its last record (`low` when it keeps none).
    next: i64,
}

/// A consumer of no group's for reading where partitions end.
fn end_reader(mut config: ClientConfig) -> Result<BaseConsumer, KafkaError> {
    config
        .set("group.id", "sy-log-end")
        .set("enable.partition.eof", "true")
        .create()
}

/// Where each partition of `topic` ends now: from the broker's high watermarks, then read
/// from there to the last record (see [`read_to_the_end`]).
fn partition_ends(reader: &BaseConsumer, topic: &str) -> Result<Vec<PartitionEnd>, KafkaError> {
    let wait = Duration::from_secs(10);
    let mut ends = Vec::new();
    let mut last: HashMap<i32, i64> = HashMap::new();
    let mut from = TopicPartitionList::new();
    for t in reader.fetch_metadata(Some(topic), wait)?.topics() {
        for p in t.partitions() {
            let (low, high) = reader.fetch_watermarks(topic, p.id(), wait)?;
            if high > low {
                last.insert(p.id(), high - 1);
                from.add_partition_offset(topic, p.id(), Offset::Offset(high - 1))?;
            }
            ends.push(PartitionEnd {
                partition: p.id(),
                low,
                next: high,
            });
        }
    }
    read_to_the_end(reader, from, &mut last)?;
    for end in &mut ends {
        if let Some(l) = last.get(&end.partition) {
            end.next = end.next.max(l + 1);
        }
    }
    Ok(ends)
}

/// Reads each partition of `from` from its offset to its end, raising `last` to the offset of
/// the last record there. A broker may say a partition ends at the first record of its last
/// batch (Tansu does: its high watermark stays there), and a view would then call itself
/// caught up with that batch unread; the records fetched from there say where it really ends.
fn read_to_the_end(
    reader: &BaseConsumer,
    from: TopicPartitionList,
    last: &mut HashMap<i32, i64>,
) -> Result<(), KafkaError> {
    let mut open = from.count();
    if open == 0 {
        return Ok(());
    }
    reader.assign(&from)?;
    // Each partition is read from a record that exists, so each gives one: until then the
    // first fetch is waited for; after, a batch comes whole, and a moment with nothing more
    // means the end (Tansu sends no end-of-partition event).
    let mut heard = HashSet::new();
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while open > 0 && std::time::Instant::now() < until {
        let all_heard = heard.len() >= from.count();
        let wait = Duration::from_millis(if all_heard { 20 } else { 500 });
        match reader.poll(wait) {
            None if all_heard => break,
            None => {}
            Some(Ok(m)) => {
                heard.insert(m.partition());
                let kept = last.entry(m.partition()).or_insert(m.offset());
                *kept = (*kept).max(m.offset());
            }
            Some(Err(KafkaError::PartitionEOF(_))) => open -= 1,
            Some(Err(e)) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_position_never_passes_an_unsettled_offset() {
        let t: Arc<str> = Arc::from("orders");
        let mut p = Positions::default();
        for o in [5, 6, 7] {
            p.received(&t, 0, o);
        }
        p.received(&t, 1, 40);
        assert_eq!(
            p.settled("orders", 0, 7),
            None,
            "5 and 6 are still in flight"
        );
        assert_eq!(p.settled("orders", 0, 6), None, "5 is still in flight");
        assert_eq!(
            p.settled("orders", 0, 5),
            Some(8),
            "all done: next to read is 8"
        );
        assert_eq!(
            p.settled("orders", 0, 5),
            None,
            "settling twice moves nothing"
        );
        assert_eq!(p.settled("orders", 1, 40), Some(41), "partitions are apart");
        // Read again from 6 after a rebalance: what was pending before is forgotten.
        p.received(&t, 0, 9);
        p.received(&t, 0, 6);
        assert_eq!(
            p.settled("orders", 0, 9),
            None,
            "9 is from before the re-read"
        );
        assert_eq!(p.settled("orders", 0, 6), Some(7));
        assert_eq!(p.settled("elsewhere", 0, 6), None, "unknown topic");
    }
}
