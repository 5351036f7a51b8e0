//! Transport traits. Every transport — in-process, HTTP, and the brokers — publishes and
//! subscribes ([`Publisher`], [`Subscriber`]), may have request/reply ([`Requester`],
//! [`Responder`], optional), and declares what it guarantees in [`Capabilities`].
//!
//! # Acknowledgement contract
//! A [`Delivery`] must be settled exactly once: [`Delivery::ack`] after the handler succeeded,
//! or [`Delivery::nack`] to have it redelivered (after an optional delay). A delivery dropped
//! without either counts as a consumer that died mid-message: transports that declare
//! [`DeliveryGuarantee::AtLeastOnce`] redeliver it, to this or another consumer of the group.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::Stream;
use tokio::sync::{oneshot, OnceCell};
use tokio::task::JoinHandle;

use crate::call::CallRequest;
use crate::error::{CallError, RemoteError, TransportError};
use crate::message::Envelope;
use crate::served::Served;
use crate::values::Reply;

/// Order in which a subscriber sees messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ordering {
    /// No order is promised.
    None,
    /// Messages with the same ordering key arrive in publish order.
    PerKey,
    /// All messages of a topic arrive in publish order.
    Global,
}

/// How often a published message reaches a consumer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryGuarantee {
    /// At most once: a consumer failure may lose it.
    AtMostOnce,
    /// At least once: redelivered until acknowledged, so duplicates are possible.
    AtLeastOnce,
}

/// What a transport guarantees. Deliberately no `Default`: every transport states every field,
/// and a new field makes every transport decide (Watermill's bool-defaults-to-false lesson).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Messages survive a restart of the broker or process.
    pub durable: bool,
    /// Ordering of messages.
    pub ordering: Ordering,
    /// Delivery guarantee towards a consumer group.
    pub delivery: DeliveryGuarantee,
    /// Request/reply (RPC) is supported.
    pub request_reply: bool,
    /// Competing consumers share a group's messages.
    pub consumer_groups: bool,
    /// Every broadcast subscriber gets every message.
    pub broadcast: bool,
    /// A nack (or a dropped delivery) leads to redelivery.
    pub redelivery: bool,
    /// Several services serve on one URL, each answering only the calls that name it (true
    /// on brokers and in process); false where a URL is one service (HTTP) or there are no
    /// calls (Kafka).
    pub services_share_url: bool,
    /// What is published on a topic is kept for a consumer group that joins later, once
    /// [`Publisher::keep`] was called for it (or always, on a log). False on MQTT, which keeps
    /// messages only for a subscriber's session, and where there are no groups (HTTP).
    pub keeps_for_later_groups: bool,
    /// A topic can be read again from its beginning ([`SubscriptionMode::Replay`]), each
    /// message with its place in the log: true on logs (Kafka, JetStream, Redis Streams),
    /// false where a message is gone once consumed.
    pub replay: bool,
}

/// How a subscriber joins a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriptionMode {
    /// Competing consumers: each message goes to one member of the named group.
    Group(String),
    /// Every subscriber gets every message published while it is subscribed.
    Broadcast,
    /// Every message the topic keeps, from its beginning (or from just after `after`), then
    /// what is published next: a reader folding a log ([`EventLog`](crate::event_log::EventLog)).
    /// No group and no redelivery: settling does nothing. Each delivery carries its place in
    /// the log in [`LOG_POSITION`](crate::message::header::LOG_POSITION). Only where
    /// [`Capabilities::replay`] says so; elsewhere `subscribe` returns
    /// [`TransportError::Unsupported`].
    Replay {
        /// Read what comes after this place (`None`: from the beginning).
        after: Option<crate::event_log::LogCursor>,
    },
}

/// Options of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Group or broadcast.
    pub mode: SubscriptionMode,
    /// Most unacknowledged deliveries in flight (prefetch); the concurrency bound.
    pub prefetch: usize,
    /// Deliveries of one message after which a broker that counts them may stop delivering
    /// it; the subscriber then hands it over once more as [`Delivery::unreadable`] (what
    /// happens to a message its client library cannot read). `None`: no bound.
    pub max_deliveries: Option<u32>,
}

impl SubscribeOptions {
    /// A member of consumer group `name`, with a prefetch of 64.
    pub fn group(name: impl Into<String>) -> Self {
        Self {
            mode: SubscriptionMode::Group(name.into()),
            prefetch: 64,
            max_deliveries: None,
        }
    }

    /// A broadcast subscriber, with a prefetch of 64.
    pub fn broadcast() -> Self {
        Self {
            mode: SubscriptionMode::Broadcast,
            prefetch: 64,
            max_deliveries: None,
        }
    }

    /// A reader of the whole log (see [`SubscriptionMode::Replay`]), with a prefetch of 256.
    pub fn replay(after: Option<crate::event_log::LogCursor>) -> Self {
        Self {
            mode: SubscriptionMode::Replay { after },
            prefetch: 256,
            max_deliveries: None,
        }
    }

    /// Sets the prefetch.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n.max(1);
        self
    }

    /// Sets the bound on deliveries of one message.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = Some(n.max(1));
        self
    }
}

/// Settles one delivery; implemented by each transport.
pub trait Acker: Send + 'static {
    /// Acknowledges: the message is done.
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>>;
    /// Rejects: redeliver, after `delay` if given. `None` hands it back as it is (a reader
    /// that only looked at it); the group gets it again, at once or at the broker's next
    /// redelivery.
    fn nack(
        self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>>;

    /// [`Acker::nack`] with the delivery's envelope handed back. A transport that redelivers
    /// by publishing the message again takes it here, instead of keeping a copy of every
    /// message it delivers just in case. By default, `nack`.
    fn nack_with(
        self: Box<Self>,
        envelope: Envelope,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        let _ = envelope;
        self.nack(delay)
    }

    /// The delivery was dropped unsettled (its consumer died mid-message), envelope handed
    /// back as for [`Acker::nack_with`]. By default the acker is simply dropped, and its own
    /// `Drop` decides what happens.
    fn abandon(self: Box<Self>, envelope: Envelope) {
        let _ = envelope;
    }
}

/// One received message and the means to settle it.
pub struct Delivery {
    /// The message. Its `x-attempt` header counts deliveries, from 1.
    pub envelope: Envelope,
    // `None` once settled.
    acker: Option<Box<dyn Acker>>,
    // Why the transport could not read the message whole, if it could not.
    unreadable: Option<String>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("envelope", &self.envelope)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// A delivery settled through `acker`.
    pub fn new(envelope: Envelope, acker: Box<dyn Acker>) -> Self {
        Self {
            envelope,
            acker: Some(acker),
            unreadable: None,
        }
    }

    /// A message the transport could not read whole (its client library refused its headers,
    /// say), with what could be recovered of it and why: the consumer dead-letters it with
    /// that reason instead of handling it.
    pub fn unreadable(
        envelope: Envelope,
        reason: impl Into<String>,
        acker: Box<dyn Acker>,
    ) -> Self {
        Self {
            envelope,
            acker: Some(acker),
            unreadable: Some(reason.into()),
        }
    }

    /// Why the message could not be read, if it could not (see [`Delivery::unreadable`]).
    pub fn unreadable_reason(&self) -> Option<&str> {
        self.unreadable.as_deref()
    }

    /// Acknowledges the message.
    pub async fn ack(mut self) -> Result<(), TransportError> {
        match self.acker.take() {
            Some(a) => a.ack().await,
            None => Ok(()),
        }
    }

    /// Acknowledges the message and hands it back, with no copy made: for a reader that keeps
    /// what it read, like a log reader. Read [`Delivery::unreadable_reason`] before.
    pub async fn ack_and_take(mut self) -> (Envelope, Result<(), TransportError>) {
        let envelope = self.take_envelope();
        let settled = match self.acker.take() {
            Some(a) => a.ack().await,
            None => Ok(()),
        };
        (envelope, settled)
    }

    /// Rejects the message for redelivery, after `delay` if given.
    pub async fn nack(mut self, delay: Option<Duration>) -> Result<(), TransportError> {
        match self.acker.take() {
            Some(a) => a.nack_with(self.take_envelope(), delay).await,
            None => Ok(()),
        }
    }

    fn take_envelope(&mut self) -> Envelope {
        // An empty envelope allocates nothing.
        std::mem::replace(
            &mut self.envelope,
            Envelope {
                id: String::new(),
                subject: String::new(),
                headers: crate::message::Headers::new(),
                payload: bytes::Bytes::new(),
            },
        )
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(a) = self.acker.take() {
            let envelope = self.take_envelope();
            a.abandon(envelope);
        }
    }
}

/// A stream of deliveries.
pub type Subscription = Pin<Box<dyn Stream<Item = Result<Delivery, TransportError>> + Send>>;

/// Sends events. Must be safe to call from many tasks at once.
pub trait Publisher: Send + Sync {
    /// Publishes `envelope` on the topic `envelope.subject`. Returns once the transport has
    /// taken responsibility for it (a broker confirm, an HTTP 2xx).
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), TransportError>>;

    /// Makes sure that what is published on `topic` from now on is kept for consumer group
    /// `group` while no member of it is subscribed, so that a group that joins later gets it.
    /// The default does nothing: on a log (Kafka, JetStream, Redis Streams) a group that joins
    /// later reads from the start. A broker that routes to queues (RabbitMQ) declares the
    /// group's queue; one that keeps nothing for absent subscribers (MQTT) says so in its
    /// log. Dead letters are kept this way for [`DEAD_LETTER_GROUP`](crate::middleware::dead_letter::DEAD_LETTER_GROUP).
    fn keep(&self, topic: &str, group: &str) -> BoxFuture<'_, Result<(), TransportError>> {
        let _ = (topic, group);
        Box::pin(async { Ok(()) })
    }
}

/// Receives events.
pub trait Subscriber: Send + Sync {
    /// Subscribes to `topic`. To get the next message of a group, settle the previous ones
    /// (up to `prefetch` may be in flight).
    fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Subscription, TransportError>>;

    /// How many messages of `topic` the consumer group `group` has not been given yet
    /// (consumer lag), when the broker tells: `Ok(None)` when it does not (the default).
    fn lag(&self, topic: &str, group: &str) -> BoxFuture<'_, Result<Option<u64>, TransportError>> {
        let _ = (topic, group);
        Box::pin(async { Ok(None) })
    }

    /// The place of the last message `topic` holds now (an empty cursor for an empty log), on
    /// transports that can replay ([`Capabilities::replay`]): a reader that got this far has
    /// read everything that was there. `Ok(None)` elsewhere (the default).
    fn log_end(
        &self,
        topic: &str,
    ) -> BoxFuture<'_, Result<Option<crate::event_log::LogCursor>, TransportError>> {
        let _ = topic;
        Box::pin(async { Ok(None) })
    }
}

/// Sends calls and waits for replies: the request/reply ability, which a transport may lack
/// (Kafka has none). See [`Transport::requester`].
pub trait Requester: Send + Sync {
    /// Sends `request` to an instance of `request.service` and waits for its reply. The
    /// caller bounds the wait; transports send `request.deadline` to the server so that it
    /// can give up too.
    fn request(&self, request: CallRequest) -> BoxFuture<'_, Result<Reply, CallError>>;
}

/// Receives the calls addressed to a service: the serving half of request/reply. The serve
/// loop, the consumers, draining and shutdown are written once, in [`crate::server`]; a
/// transport only says where calls come from and how each is answered.
pub trait Responder: Send + Sync {
    /// Starts receiving the calls addressed to `served` (by [`Served::name`]); instances of one
    /// service share its calls, services with other names never see them.
    fn listen(&self, served: Arc<Served>) -> BoxFuture<'_, Result<Listener, TransportError>>;
}

/// Incoming calls, each with the means to answer it.
pub type IncomingCalls = Pin<Box<dyn Stream<Item = IncomingCall> + Send>>;

/// What [`Responder::listen`] gives the server.
#[non_exhaustive]
pub struct Listener {
    /// The calls to answer, or `None` when the transport's own server answers them through
    /// [`Served::call`] (HTTP, where hyper runs a task per connection).
    pub calls: Option<IncomingCalls>,
    /// Where the service can be reached (for `http://127.0.0.1:0` the port actually bound).
    pub url: String,
    /// Whether events for the service's topics also arrive through this listener (HTTP, where
    /// they are POSTed to the same port), so that the server starts no consumers for them.
    pub receives_events: bool,
    /// Run once the server stops taking calls: stops what the transport runs for the service
    /// (a heartbeat, an HTTP server draining its connections) and waits for it.
    pub close: BoxFuture<'static, ()>,
}

impl Listener {
    /// A listener over `calls`, reachable at `url`, with nothing to close.
    pub fn new(calls: IncomingCalls, url: impl Into<String>) -> Self {
        Self {
            calls: Some(calls),
            url: url.into(),
            receives_events: false,
            close: Box::pin(async {}),
        }
    }

    /// A listener whose transport answers calls itself (see [`Listener::calls`]).
    pub fn driven(url: impl Into<String>, receives_events: bool) -> Self {
        Self {
            calls: None,
            url: url.into(),
            receives_events,
            close: Box::pin(async {}),
        }
    }

    /// Sets what runs when the server stops.
    pub fn on_close(mut self, close: impl Future<Output = ()> + Send + 'static) -> Self {
        self.close = Box::pin(close);
        self
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("url", &self.url)
            .field("driven", &self.calls.is_none())
            .finish_non_exhaustive()
    }
}

/// One received call and where its answer goes.
pub struct IncomingCall {
    /// The decoded call, or why it could not be decoded (answered to the caller as is).
    pub request: Result<CallRequest, RemoteError>,
    /// Sends the answer.
    pub reply: Box<dyn ReplyTo>,
}

impl fmt::Debug for IncomingCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingCall")
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

/// Sends the answer to one call back to its caller; implemented by each transport.
pub trait ReplyTo: Send + 'static {
    /// Sends `outcome`: the handler's reply, or the error the caller gets.
    fn send(self: Box<Self>, outcome: Result<Reply, RemoteError>) -> BoxFuture<'static, ()>;
}

/// A complete transport, chosen by URL scheme: events both ways, and request/reply when it
/// has it.
pub trait Transport: Publisher + Subscriber {
    /// Short name (`mem`, `http`, `amqp`…).
    fn name(&self) -> &'static str;
    /// What this transport guarantees.
    fn capabilities(&self) -> Capabilities;
    /// The URL it was made from, credentials removed.
    fn url(&self) -> String;

    /// The calling half of request/reply; `None` for a transport without it.
    fn requester(&self) -> Option<&dyn Requester>;

    /// The serving half of request/reply; `None` for a transport without it.
    fn responder(&self) -> Option<&dyn Responder>;

    /// The instance of `service` served in this very process on this transport, for a client
    /// to call without a transport future (the in-process fast path). Only the in-process
    /// transport returns one; the call still runs inside the client's layers and the
    /// service's.
    fn local(&self, service: &str) -> Option<LocalInstance> {
        let _ = service;
        None
    }

    /// Whether the transport's standing connection is up now, as far as its client library
    /// says (what `/readyz` reports). `true` for transports without one (in-process, HTTP)
    /// and for those whose library does not tell.
    fn connected(&self) -> bool {
        true
    }

    /// Opens the connection now. Broker transports connect on first use; this makes a broker
    /// that is not there show at start-up, as [`TransportError::Unreachable`] naming the URL
    /// (credentials removed). Retry it with [`wait_ready`]. Transports without a standing
    /// connection (in-process, HTTP) are always ready.
    fn ready(&self) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async { Ok(()) })
    }
}

/// What a transport's own connections last said of themselves, for [`Transport::connected`]
/// where the client library keeps no state to ask (redis-rs, rumqttc, rdkafka): each
/// connection that serves (a consumer's reader, an RPC queue's reader, an MQTT event loop)
/// holds a [`Link`] and reports what its last read found. Connected while no link is down.
#[derive(Debug, Default, Clone)]
pub struct LinkHealth {
    down: Arc<std::sync::atomic::AtomicUsize>,
}

impl LinkHealth {
    /// A link of one connection, up until it says otherwise.
    pub fn link(&self) -> Link {
        Link {
            down: false,
            health: self.clone(),
        }
    }

    /// Whether every link is up (true when there is none).
    pub fn connected(&self) -> bool {
        self.down.load(std::sync::atomic::Ordering::Relaxed) == 0
    }
}

/// One connection's state in a [`LinkHealth`]; forgotten when dropped.
#[derive(Debug)]
pub struct Link {
    down: bool,
    health: LinkHealth,
}

impl Link {
    /// The connection worked.
    pub fn up(&mut self) {
        if std::mem::replace(&mut self.down, false) {
            self.health
                .down
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The connection failed (lost, refused, timed out).
    pub fn down(&mut self) {
        if !std::mem::replace(&mut self.down, true) {
            self.health
                .down
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.up();
    }
}

/// How patiently to wait for a broker that is not reachable at start-up: `attempts` tries in
/// all, the waits between them doubling from `initial_backoff` up to `max_backoff`.
///
/// ```
/// use std::time::Duration;
/// use switchyard_core::transport::ConnectRetry;
///
/// let r = ConnectRetry::attempts(5);
/// assert_eq!(r.backoff(1), Duration::from_millis(200));
/// assert_eq!(r.backoff(2), Duration::from_millis(400));
/// assert_eq!(r.backoff(20), Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRetry {
    /// Tries in all (at least one).
    pub attempts: u32,
    /// Wait after the first failure.
    pub initial_backoff: Duration,
    /// Longest wait between tries.
    pub max_backoff: Duration,
}

impl ConnectRetry {
    /// One try, no retry.
    pub fn once() -> Self {
        Self::attempts(1)
    }

    /// `n` tries, waiting 200 ms, 400 ms, … up to 5 s between them.
    pub fn attempts(n: u32) -> Self {
        Self {
            attempts: n.max(1),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }

    /// The wait after failed try number `failed` (from 1).
    pub fn backoff(&self, failed: u32) -> Duration {
        crate::backoff::doubling(self.initial_backoff, self.max_backoff, failed)
    }
}

/// Waits until `transport` is [ready](Transport::ready), retrying an unreachable broker as
/// `retry` says and logging each failed try. Other errors (a bad URL, refused credentials
/// reported as such) are returned at once; after the last try, its error.
pub async fn wait_ready(
    transport: &dyn Transport,
    retry: &ConnectRetry,
) -> Result<(), TransportError> {
    let mut failed = 0;
    loop {
        match transport.ready().await {
            Ok(()) => return Ok(()),
            Err(e @ TransportError::Unreachable { .. }) if failed + 1 < retry.attempts => {
                failed += 1;
                let wait = retry.backoff(failed);
                tracing::warn!(
                    target: "switchyard",
                    error = %e,
                    attempt = failed,
                    of = retry.attempts,
                    ?wait,
                    "broker unreachable at start-up; retrying"
                );
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// `cell`'s value, made by `init` the first time (a connection, a reply subscription). Once set
/// it is returned without awaiting anything, and the set-up future is boxed: awaited inline,
/// that future (a broker client's connect, several KB) would be part of every publish's and
/// every call's future and be copied into each one's box (measured on NATS with callgrind:
/// 10,000 bytes of `memcpy` per call).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use switchyard_core::transport::get_or_init_boxed;
/// let cell = tokio::sync::OnceCell::new();
/// let first = get_or_init_boxed(&cell, || async { Ok::<_, ()>(7) }).await;
/// let again = get_or_init_boxed(&cell, || async { Ok::<_, ()>(8) }).await;
/// assert_eq!((first, again), (Ok(&7), Ok(&7)));
/// # }
/// ```
pub async fn get_or_init_boxed<T, E, F, Fut>(cell: &OnceCell<T>, init: F) -> Result<&T, E>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    if let Some(value) = cell.get() {
        return Ok(value);
    }
    Box::pin(cell.get_or_try_init(init)).await
}

/// Calls waiting for their replies, by correlation key (a correlation id, an inbox number):
/// what every broker transport's caller keeps between sending a call and reading its reply
/// off a reply queue, topic or channel.
///
/// [`wait`](Self::wait) registers a key and returns a [`ReplyWait`]; the task reading replies
/// hands each to [`complete`](Self::complete). A `ReplyWait` dropped before its reply came (the
/// caller timed out or was cancelled) forgets its key, so nothing is left behind.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use switchyard_core::transport::PendingReplies;
/// let pending: PendingReplies<u64, &str> = PendingReplies::default();
/// let wait = pending.wait(7);
/// assert!(pending.complete(&7, "the reply"));
/// assert_eq!(wait.await, Some("the reply"));
/// assert!(!pending.complete(&7, "late"), "nobody waits any more");
/// # }
/// ```
#[derive(Debug)]
pub struct PendingReplies<K, T> {
    waiting: std::sync::Mutex<std::collections::HashMap<K, oneshot::Sender<T>>>,
}

impl<K, T> Default for PendingReplies<K, T> {
    fn default() -> Self {
        Self {
            waiting: std::sync::Mutex::default(),
        }
    }
}

impl<K: Eq + std::hash::Hash + Clone, T> PendingReplies<K, T> {
    fn waiting(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<K, oneshot::Sender<T>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a call waiting on `key`. Register before sending the call: its reply can come
    /// at once.
    pub fn wait(&self, key: K) -> ReplyWait<'_, K, T> {
        let (tx, rx) = oneshot::channel();
        self.waiting().insert(key.clone(), tx);
        ReplyWait {
            pending: self,
            key,
            rx,
        }
    }

    /// Hands `reply` to the call waiting on `key`; `false` when none waits (it gave up).
    pub fn complete<Q>(&self, key: &Q, reply: T) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + std::hash::Hash + ?Sized,
    {
        let waiter = self.waiting().remove(key);
        waiter.is_some_and(|tx| tx.send(reply).is_ok())
    }

    /// Ends every wait with `None`: the replies can no longer come (the connection closed), and
    /// the callers learn it now rather than at their deadline.
    pub fn clear(&self) {
        self.waiting().clear();
    }
}

/// The deliveries a subscription holds unsettled, by a key of the transport's (an entry id, a
/// reply subject), for a broker that takes back what is not acknowledged in time (JetStream's
/// ack wait, a Redis group's idle claim): while a delivery is held, the transport renews it
/// with the broker ([`HeldDeliveries::renew_every`]), so a slow handler keeps its message and
/// a member that died (renewing nothing) still has its messages taken over; and a delivery of
/// a key already held is one to pass over ([`HeldDeliveries::hold`] says so).
#[derive(Debug)]
pub struct HeldDeliveries<K>(Arc<std::sync::Mutex<rustc_hash::FxHashSet<K>>>);

impl<K> Default for HeldDeliveries<K> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

/// One delivery held (see [`HeldDeliveries`]), until dropped: once it is settled or handed
/// back.
#[derive(Debug)]
pub struct Holding<K: Eq + std::hash::Hash> {
    held: Arc<std::sync::Mutex<rustc_hash::FxHashSet<K>>>,
    key: K,
}

impl<K: Eq + std::hash::Hash> Drop for Holding<K> {
    fn drop(&mut self) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

impl<K: Eq + std::hash::Hash + Clone + Send + 'static> HeldDeliveries<K> {
    /// Holds `key` until the returned guard is dropped; `None` when it is held already (a
    /// second delivery of it).
    pub fn hold(&self, key: K) -> Option<Holding<K>> {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        held.insert(key.clone()).then(|| Holding {
            held: self.0.clone(),
            key,
        })
    }

    /// Calls `renew` with the keys held, every `every` (the first time after one period),
    /// in a task of its own that ends once these deliveries and every guard of them are gone.
    pub fn renew_every<F, Fut>(&self, every: Duration, mut renew: F)
    where
        F: FnMut(Vec<K>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let held = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(held) = held.upgrade() else {
                    return;
                };
                let keys: Vec<K> = held
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .cloned()
                    .collect();
                drop(held);
                if !keys.is_empty() {
                    renew(keys).await;
                }
            }
        });
    }
}

/// One call's wait for its reply: `Some(reply)`, or `None` once
/// [`PendingReplies::clear`] ran. Dropped early, it forgets its key.
#[derive(Debug)]
pub struct ReplyWait<'a, K: Eq + std::hash::Hash + Clone, T> {
    pending: &'a PendingReplies<K, T>,
    key: K,
    rx: oneshot::Receiver<T>,
}

// Nothing in it is pinned structurally: the receiver is polled through a fresh `Pin`.
impl<K: Eq + std::hash::Hash + Clone, T> Unpin for ReplyWait<'_, K, T> {}

impl<K: Eq + std::hash::Hash + Clone, T> Future for ReplyWait<'_, K, T> {
    type Output = Option<T>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        Pin::new(&mut self.rx).poll(cx).map(Result::ok)
    }
}

impl<K: Eq + std::hash::Hash + Clone, T> Drop for ReplyWait<'_, K, T> {
    fn drop(&mut self) {
        self.pending.waiting().remove(&self.key);
    }
}

/// A running server; shut it down to stop taking new work and finish what is in flight.
#[derive(Debug)]
pub struct ServeHandle {
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    url: String,
}

impl ServeHandle {
    /// A handle for a server task that stops when `shutdown` fires.
    pub fn new(
        shutdown: oneshot::Sender<()>,
        task: JoinHandle<()>,
        url: impl Into<String>,
    ) -> Self {
        Self {
            shutdown: Some(shutdown),
            task: Some(task),
            url: url.into(),
        }
    }

    /// Where the service can be reached (for `http://127.0.0.1:0` the port actually bound).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops taking new work and waits for in-flight work to finish.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Waits until the server stops by itself (or forever).
    pub async fn wait(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServeHandle {
    fn drop(&mut self) {
        // Dropping the handle stops the server, as a dropped owner would otherwise leak it.
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl fmt::Debug for dyn Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Transport({})", self.url())
    }
}

/// An instance of a service served in this process, found by [`Transport::local`].
#[derive(Clone)]
pub struct LocalInstance {
    served: Arc<Served>,
    // Set when a caller may keep calling this instance without asking again.
    kept: Option<Unchanged>,
}

/// While a count of changes stays where it was seen.
#[derive(Clone)]
pub(crate) struct Unchanged {
    changes: Arc<AtomicU64>,
    seen: u64,
}

impl Unchanged {
    /// Whether the count is still where it was seen.
    #[inline]
    pub(crate) fn holds(&self) -> bool {
        self.changes.load(std::sync::atomic::Ordering::Acquire) == self.seen
    }
}

impl LocalInstance {
    /// `served`, to be asked for again on every call.
    pub fn new(served: Arc<Served>) -> Self {
        Self { served, kept: None }
    }

    /// `served`, which a caller may keep calling while `changes` (a count of the changes to
    /// the services it was picked among) stays at `seen`: it was the only instance of its
    /// service then, so no other would have been picked.
    pub fn kept_while(served: Arc<Served>, changes: Arc<AtomicU64>, seen: u64) -> Self {
        Self {
            served,
            kept: Some(Unchanged { changes, seen }),
        }
    }

    /// The instance.
    pub fn served(&self) -> &Arc<Served> {
        &self.served
    }

    /// How long a caller may keep this instance, if it may (see
    /// [`LocalInstance::kept_while`]).
    pub(crate) fn kept(&self) -> Option<&Unchanged> {
        self.kept.as_ref()
    }
}

impl std::fmt::Debug for LocalInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalInstance")
            .field("served", &self.served)
            .field("kept", &self.kept.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::LinkHealth;

    #[test]
    fn connected_while_no_link_is_down() {
        let health = LinkHealth::default();
        assert!(health.connected(), "no link yet");
        let (mut a, mut b) = (health.link(), health.link());
        a.down();
        a.down();
        assert!(!health.connected());
        b.down();
        a.up();
        assert!(!health.connected(), "b is still down");
        b.up();
        b.up();
        assert!(health.connected());
        a.down();
        drop(a);
        assert!(health.connected(), "a link dropped while down is forgotten");
    }
}
