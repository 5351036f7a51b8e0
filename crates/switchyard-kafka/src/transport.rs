use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use switchyard_core::codec::Codec;
use switchyard_core::error::{redact_url, TransportError};
use switchyard_core::message::{header as h, new_id, CloudEventAttribute as Ce, Envelope, Headers};
use switchyard_core::transport::{
    get_or_init_boxed, Acker, Capabilities, Delivery, DeliveryGuarantee, Ordering, Publisher,
    Requester, Responder, SubscribeOptions, Subscriber, Subscription, SubscriptionMode, Transport,
};
use tokio::sync::{watch, Notify, OnceCell, OwnedSemaphorePermit, Semaphore};

/// Largest event payload published by default (1 MiB, Kafka's own default message limit).
const MAX_MESSAGE: usize = 1024 * 1024;
/// Prefix of CloudEvents attributes in Kafka headers (the CloudEvents Kafka binding).
const CE_PREFIX: &str = "ce_";
/// The attributes' Kafka header names, indexed by [`Ce`].
const CE_NAMES: [&str; 7] = switchyard_core::cloud_event_names!("ce_");

/// The Kafka transport.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use switchyard_core::transport::Publisher;
/// use switchyard_core::message::Envelope;
/// let kafka = switchyard_kafka::KafkaTransport::from_url("kafka://127.0.0.1:9092")?;
/// kafka.publish(Envelope::new("orders", br#"{"id":1}"#.to_vec())).await?;
/// # Ok(()) }
/// ```
pub struct KafkaTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KafkaTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTransport")
            .field("url", &redact_url(&self.inner.url))
            .finish()
    }
}

struct Inner {
    url: String,
    brokers: String,
    partitions: i32,
    max_message: usize,
    producer: OnceCell<FutureProducer>,
    admin: OnceCell<AdminClient<DefaultClientContext>>,
    topics: Mutex<HashSet<String>>,
}

/// Kafka topic names: 1 to 249 of `[a-zA-Z0-9._-]`.
fn check_topic(url: &str, topic: &str) -> Result<(), TransportError> {
    let ok = !topic.is_empty()
        && topic.len() <= 200
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(TransportError::invalid_url(
            url,
            format!("topic {topic:?} is not a Kafka topic name (1 to 200 of a-z A-Z 0-9 . _ -)"),
        ))
    }
}

fn topic_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl KafkaTransport {
    /// A transport for `kafka://HOST:PORT[,HOST:PORT…]`. Options: `partitions` (of the
    /// topics it creates, default 4), `max_message_bytes` (default 1 MiB). Connections are made
    /// on first use.
    pub fn from_url(url: &str) -> Result<Self, TransportError> {
        let rest = url.strip_prefix("kafka://").ok_or_else(|| {
            TransportError::invalid_url(url, "expected kafka://HOST:PORT[,HOST:PORT]")
        })?;
        let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
        let brokers = hosts.trim_end_matches('/').to_string();
        if brokers.is_empty() {
            return Err(TransportError::invalid_url(url, "no broker address"));
        }
        let mut partitions = 4;
        let mut max_message = MAX_MESSAGE;
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "partitions" => {
                    partitions = v.parse::<i32>().ok().filter(|p| *p > 0).ok_or_else(|| {
                        TransportError::invalid_url(
                            url,
                            format!("partitions={v} is not a positive number"),
                        )
                    })?;
                }
                "max_message_bytes" => {
                    max_message = v.parse().map_err(|_| {
                        TransportError::invalid_url(
                            url,
                            format!("max_message_bytes={v} is not a whole number"),
                        )
                    })?;
                }
                unknown => {
                    return Err(TransportError::invalid_url(
                        url,
                        format!(
                            "unknown option {unknown:?} (known: partitions, max_message_bytes)"
                        ),
                    ))
                }
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                url: url.to_string(),
                brokers,
                partitions,
                max_message,
                producer: OnceCell::new(),
                admin: OnceCell::new(),
                topics: Mutex::new(HashSet::new()),
            }),
        })
    }
}

impl Inner {
    fn base_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("socket.connection.setup.timeout.ms", "5000");
        c
    }

    fn unreachable(&self, e: impl std::error::Error + Send + Sync + 'static) -> TransportError {
        TransportError::Unreachable {
            url: redact_url(&self.url),
            source: Box::new(e),
        }
    }

    async fn producer(&self) -> Result<&FutureProducer, TransportError> {
        get_or_init_boxed(&self.producer, || async {
            self.base_config()
                .set("acks", "all")
                // Latency first; batches still form under load.
                .set("linger.ms", "1")
                .set("message.timeout.ms", "30000")
                .set(
                    "message.max.bytes",
                    (self.max_message + 64 * 1024).to_string(),
                )
                .create::<FutureProducer>()
                .map_err(|e| self.unreachable(e))
        })
        .await
    }

    async fn admin(&self) -> Result<&AdminClient<DefaultClientContext>, TransportError> {
        get_or_init_boxed(&self.admin, || async {
            self.base_config()
                .create::<AdminClient<DefaultClientContext>>()
                .map_err(|e| self.unreachable(e))
        })
        .await
    }

    /// Creates `topic` (with `partitions` partitions) unless this transport already did.
    async fn ensure_topic(&self, topic: &str) -> Result<(), TransportError> {
        if self
            .topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(topic)
        {
            return Ok(());
        }
        let admin = self.admin().await?;
        let new = NewTopic::new(topic, self.partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results =
            tokio::time::timeout(Duration::from_secs(15), admin.create_topics([&new], &opts))
                .await
                .map_err(|e| self.unreachable(e))?
                .map_err(|e| self.unreachable(e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => {
                    return Err(TransportError::Other(
                        format!("cannot create Kafka topic {t}: {code}").into(),
                    ))
                }
            }
        }
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_string());
        Ok(())
    }

    async fn send(&self, topic: &str, envelope: &Envelope) -> Result<(), TransportError> {
        self.ensure_topic(topic).await?;
        let producer = self.producer().await?;
        let headers = kafka_headers(envelope);
        let mut record = FutureRecord::to(topic)
            .payload(envelope.payload.as_ref())
            .headers(headers);
        // The ordering key is the message key: Kafka keeps one key on one partition, in order.
        if let Some(k) = envelope.ordering_key() {
            record = record.key(k);
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| match e {
                KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge) => {
                    TransportError::PayloadTooLarge {
                        size: envelope.payload.len(),
                        limit: self.max_message,
                    }
                }
                other => TransportError::Other(Box::new(other)),
            })
    }
}

/// Our headers as they are, CloudEvents attributes as `ce_*`, the content type as
/// `content-type` (the CloudEvents Kafka binding, binary mode).
fn kafka_headers(envelope: &Envelope) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(envelope.headers.len() + 4);
    for (k, v) in envelope.headers.iter() {
        if !k.starts_with("ce-") {
            out = out.insert(Header {
                key: k,
                value: Some(v),
            });
        }
    }
    for (attr, value) in envelope.cloud_event_attributes() {
        // The binding puts the content type in `content-type`, copied above.
        if attr != Ce::DataContentType {
            out = out.insert(Header {
                key: CE_NAMES[attr as usize],
                value: Some(value),
            });
        }
    }
    out
}

fn envelope_of(topic: &str, m: &BorrowedMessage<'_>) -> Envelope {
    let mut headers = Headers::new();
    let mut id = None;
    if let Some(hs) = m.headers() {
        for hd in hs.iter() {
            let value = || {
                hd.value
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            let attr = hd.key.strip_prefix(CE_PREFIX);
            match attr.map(|a| (a, Ce::from_name(a))) {
                Some((_, Some(Ce::Id))) => id = Some(value()),
                Some((_, Some(Ce::SpecVersion))) => {}
                Some((_, Some(known))) => headers.insert(known.header(), value()),
                Some((other, None)) => headers.insert(format!("ce-{other}"), value()),
                None => headers.insert(hd.key, value()),
            }
        }
    }
    if headers.get(h::CONTENT_TYPE).is_none() {
        headers.insert(h::CONTENT_TYPE, Codec::Json.content_type());
    }
    if headers.get(h::ORDERING_KEY).is_none() {
        if let Some(k) = m.key().and_then(|k| std::str::from_utf8(k).ok()) {
            headers.insert(h::ORDERING_KEY, k);
        }
    }
    if headers.get(h::ATTEMPT).is_none() {
        headers.insert(h::ATTEMPT, "1");
    }
    Envelope {
        id: id.unwrap_or_else(new_id),
        subject: topic.to_string(),
        headers,
        payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
    }
}

/// Offsets handed out and not yet settled, per partition: the committed position is the
/// lowest of them, so a later offset is never committed before an earlier one is done.
#[derive(Default)]
struct Positions {
    // By topic, then partition: looked up with the topic as `&str`, no allocation per message.
    partitions: HashMap<Arc<str>, HashMap<i32, Track>>,
}

struct Track {
    pending: BTreeSet<i64>,
    last: i64,
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
struct GroupContext {
    assigned: watch::Sender<bool>,
    positions: Arc<Mutex<Positions>>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(_) => {
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

type GroupConsumer = StreamConsumer<GroupContext>;

struct KafkaAcker {
    consumer: Arc<GroupConsumer>,
    positions: Arc<Mutex<Positions>>,
    committing: bool,
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    inner: Arc<Inner>,
    retry_topic: Arc<str>,
    envelope: Option<Envelope>,
    // Holds one unit of prefetch until settled.
    _permit: OwnedSemaphorePermit,
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
struct Reader(Arc<Shared>);

struct Shared {
    inner: Arc<Inner>,
    consumer: Arc<GroupConsumer>,
    positions: Arc<Mutex<Positions>>,
    committing: bool,
    main: Arc<str>,
    retry_topic: Arc<str>,
    // At most `prefetch` deliveries unsettled: each holds a permit until settled.
    room: Arc<Semaphore>,
    // Whoever holds it polls the consumer: the reader, or the keeper while the reader is idle.
    polling: tokio::sync::Mutex<()>,
    // The reader asks the keeper to hand polling back.
    wanted: Notify,
    // Reads so far, for the keeper to see whether the reader is active.
    reads: AtomicU64,
    // A delivery the keeper read (at most one: it reads again only once this is taken).
    kept: Mutex<Option<Delivery>>,
    has_kept: AtomicBool,
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
    }

    fn delivery(&self, m: BorrowedMessage<'_>, permit: OwnedSemaphorePermit) -> Delivery {
        let topic = if m.topic() == &*self.retry_topic {
            self.retry_topic.clone()
        } else {
            self.main.clone()
        };
        let (partition, offset) = (m.partition(), m.offset());
        // Messages from the retry topic belong to the main topic.
        let envelope = envelope_of(&self.main, &m);
        drop(m);
        self.positions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .received(&topic, partition, offset);
        let acker = KafkaAcker {
            consumer: self.consumer.clone(),
            positions: self.positions.clone(),
            committing: self.committing,
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
        let permit = shared
            .room
            .clone()
            .acquire_owned()
            .await
            .map_err(TransportError::other)?;
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
async fn keeper(shared: Weak<Shared>) {
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
            // Without a free permit nothing may be read: the handlers are full, as a reader
            // would wait too.
            if let (Ok(_polling), Ok(permit)) = (
                shared.polling.try_lock(),
                shared.room.clone().try_acquire_owned(),
            ) {
                tokio::select! {
                    m = shared.consumer.recv() => {
                        if let Ok(m) = m {
                            let d = shared.delivery(m, permit);
                            shared.keep(d);
                        }
                    }
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
    fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Subscription, TransportError>> {
        let topic = topic.to_string();
        Box::pin(async move {
            check_topic(&self.inner.url, &topic)?;
            let (group, committing) = match &options.mode {
                // One Kafka group per (group, topic), as a group is per topic on every other
                // transport: members of one topic's group never wait on another topic's
                // rebalance.
                SubscriptionMode::Group(g) => (format!("{g}.{topic}"), true),
                // A broadcast subscriber is a group of one that starts at the end.
                _ => (format!("sy-broadcast-{}", &new_id()[..8]), false),
            };
            let retry_topic = format!("sy.retry.{}", topic_safe(&group));
            self.inner.ensure_topic(&topic).await?;
            self.inner.ensure_topic(&retry_topic).await?;
            let positions: Arc<Mutex<Positions>> = Arc::default();
            let (assigned_tx, mut assigned) = watch::channel(false);
            let context_assigned = assigned_tx.clone();
            let context = GroupContext {
                assigned: assigned_tx,
                positions: positions.clone(),
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
                .set("session.timeout.ms", "6000")
                .set("heartbeat.interval.ms", "500")
                .set("enable.partition.eof", "false")
                .create_with_context(context)
                .map_err(|e| self.inner.unreachable(e))?;
            let consumer = Arc::new(consumer);
            if committing {
                consumer
                    .subscribe(&[topic.as_str(), retry_topic.as_str()])
                    .map_err(TransportError::other)?;
            } else {
                // A broadcast subscriber reads every partition from its current end. The ends
                // are looked up now, not when the first fetch resolves "latest", so that what is
                // published after `subscribe` returns is never skipped.
                let (c, names) = (consumer.clone(), [topic.clone(), retry_topic.clone()]);
                let tpl = tokio::task::spawn_blocking(move || {
                    let mut tpl = TopicPartitionList::new();
                    for name in &names {
                        let md = c.fetch_metadata(Some(name), Duration::from_secs(10))?;
                        for t in md.topics() {
                            for p in t.partitions() {
                                let (_, high) =
                                    c.fetch_watermarks(name, p.id(), Duration::from_secs(10))?;
                                tpl.add_partition_offset(name, p.id(), Offset::Offset(high))?;
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
                main: Arc::from(topic.as_str()),
                retry_topic: Arc::from(retry_topic.as_str()),
                room: Arc::new(Semaphore::new(options.prefetch.max(1))),
                polling: tokio::sync::Mutex::new(()),
                wanted: Notify::new(),
                reads: AtomicU64::new(0),
                kept: Mutex::new(None),
                has_kept: AtomicBool::new(false),
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

impl Transport for KafkaTransport {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: true,
            ordering: Ordering::PerKey,
            delivery: DeliveryGuarantee::AtLeastOnce,
            request_reply: false,
            consumer_groups: true,
            broadcast: true,
            redelivery: true,
            services_share_url: false,
        }
    }

    fn url(&self) -> String {
        redact_url(&self.inner.url)
    }

    /// Kafka has no request/reply: call services over http, amqp, nats, redis or mqtt.
    fn requester(&self) -> Option<&dyn Requester> {
        None
    }

    fn responder(&self) -> Option<&dyn Responder> {
        None
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            // A client connects in the background: asking for the cluster's metadata is what
            // shows whether a broker answers.
            let producer = self.inner.producer().await?.clone();
            tokio::task::spawn_blocking(move || {
                rdkafka::producer::Producer::client(&producer)
                    .fetch_metadata(None, Duration::from_secs(5))
                    .map(drop)
            })
            .await
            .map_err(TransportError::other)?
            .map_err(|e| self.inner.unreachable(e))
        })
    }
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
