//! Reading a topic as a log: [`EventLog`] replays what a topic keeps from its beginning, then
//! follows what is published next; [`View`] folds those events into a state, keeps a
//! snapshot of it, and lets handlers read it (a view served over HTTP, say).
//!
//! A log reader belongs to no consumer group and settles nothing: each start reads the log
//! again (or from a snapshot's place on). Where a message stands is its [`LogCursor`] place,
//! stamped by the transport in [`header::LOG_POSITION`]. Logs only: Kafka, JetStream and Redis
//! Streams ([`Capabilities::replay`](crate::transport::Capabilities::replay)).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use crate::error::{HandlerError, TransportError};
use crate::message::{header, Envelope};
use crate::middleware::{self, Disposition, EventHandler};
use crate::policy::ConsumerPolicy;
use crate::service::Service;
use crate::transport::{SubscribeOptions, Subscription, Transport};

/// The lane of a log that is one sequence (a JetStream stream, a Redis stream).
pub const SINGLE_LANE: &str = "0";

/// A message's place as transports stamp it in [`header::LOG_POSITION`]: `LANE/PLACE`, what
/// [`LogCursor::advance`] reads.
pub fn position(lane: impl std::fmt::Display, place: impl std::fmt::Display) -> String {
    format!("{lane}/{place}")
}

/// A place in a log: for each lane (a Kafka partition; the one lane `0` of a JetStream stream
/// or a Redis stream) the place of the last message read there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LogCursor(BTreeMap<String, String>);

impl LogCursor {
    /// At the beginning: nothing read.
    pub fn new() -> Self {
        Self::default()
    }

    /// The place of the last message read in `lane`.
    pub fn get(&self, lane: &str) -> Option<&str> {
        self.0.get(lane).map(String::as_str)
    }

    /// Sets the place of the last message read in `lane`.
    pub fn set(&mut self, lane: impl Into<String>, place: impl Into<String>) {
        self.0.insert(lane.into(), place.into());
    }

    /// Whether nothing was read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Takes in a message's [`header::LOG_POSITION`] (`LANE/PLACE`); false when it does not
    /// read as one. A place behind the one kept is ignored.
    pub fn advance(&mut self, position: &str) -> bool {
        let Some((lane, place)) = position.split_once('/') else {
            return false;
        };
        match self.0.get_mut(lane) {
            Some(kept) if !is_after(place, kept) => {}
            // Written over in place: one message after another, no allocation.
            Some(kept) => {
                kept.clear();
                kept.push_str(place);
            }
            None => {
                self.0.insert(lane.to_string(), place.to_string());
            }
        }
        true
    }

    /// Whether every lane of `end` has been read up to its place.
    pub fn reached(&self, end: &LogCursor) -> bool {
        end.0
            .iter()
            .all(|(lane, place)| self.get(lane).is_some_and(|p| !is_after(place, p)))
    }
}

/// Whether place `a` comes after place `b`. Places are numbers (offsets, sequences) or
/// numbers joined by `-` (Redis entry ids, `ms-seq`), compared part by part as numbers.
/// Read for every message (and every lane of the end while a reader catches up), so nothing
/// is allocated: the parts are parsed as they are compared.
fn is_after(a: &str, b: &str) -> bool {
    fn parts(s: &str) -> impl Iterator<Item = Option<u64>> + '_ {
        s.split('-').map(|p| p.parse().ok())
    }
    if parts(a).chain(parts(b)).any(|p| p.is_none()) {
        return a > b;
    }
    parts(a).flatten().cmp(parts(b).flatten()) == std::cmp::Ordering::Greater
}

/// A topic read as a log: what it keeps from the beginning (or from a cursor on), then what
/// is published next.
pub struct EventLog {
    subscription: Subscription,
    cursor: LogCursor,
    // Where the log ended when it was opened.
    end: LogCursor,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("cursor", &self.cursor)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl EventLog {
    /// Opens `topic` of `transport` from its beginning, or from just after `after`.
    /// [`TransportError::Unsupported`] on a transport that keeps no log.
    pub async fn open(
        transport: &dyn Transport,
        topic: &str,
        after: Option<LogCursor>,
    ) -> Result<Self, TransportError> {
        let Some(end) = transport.log_end(topic).await? else {
            return Err(TransportError::Unsupported {
                transport: transport.name(),
                operation: "reading a topic from its beginning (it keeps no log)",
            });
        };
        let cursor = after.clone().unwrap_or_default();
        let subscription = transport
            .subscribe(topic, SubscribeOptions::replay(after))
            .await?;
        Ok(Self {
            subscription,
            cursor,
            end,
        })
    }

    /// Whether everything the log held when it was opened has been read.
    pub fn caught_up(&self) -> bool {
        self.cursor.reached(&self.end)
    }

    /// The place of the last message read.
    pub fn cursor(&self) -> &LogCursor {
        &self.cursor
    }

    /// The next message, waiting for one to be published when everything was read; `None`
    /// when the transport ended the subscription. A message the transport could not read
    /// whole comes marked so ([`middleware::limit::UNREADABLE`]), for a dead letter.
    pub async fn next(&mut self) -> Option<Result<Envelope, TransportError>> {
        let delivery = match self.subscription.next().await? {
            Ok(d) => d,
            Err(e) => return Some(Err(e)),
        };
        let unreadable = delivery.unreadable_reason().map(str::to_string);
        // A log reader's settling does nothing; done so that no transport waits on it.
        let (mut envelope, settled) = delivery.ack_and_take().await;
        if let Err(e) = settled {
            tracing::debug!(target: "switchyard", error = %e, "log delivery not settled");
        }
        middleware::limit::mark_unreadable(&mut envelope, unreadable.as_deref());
        if let Some(p) = envelope.headers.get(header::LOG_POSITION) {
            self.cursor.advance(p);
        }
        Some(Ok(envelope))
    }
}

/// How a [`View`] folds one event into its state: an error that is not retryable (a
/// [`HandlerError::bad_request`]) dead-letters the event at once with that reason, any other
/// is retried in place, then dead-lettered; either way the view goes on with the next.
pub type Fold<S> = dyn Fn(&mut S, &Envelope) -> Result<(), HandlerError> + Send + Sync;

/// A state folded from a topic read as a log: replayed from the beginning (or from its
/// snapshot) at start, then kept up to date. Events go through the consumer stack of a log
/// reader ([`middleware::log_stack`]): too large, unreadable or refused by the fold, an event is
/// dead-lettered to `<topic>.dlq` with the reason.
pub struct View<S> {
    name: String,
    state: S,
    fold: Arc<Fold<S>>,
    snapshot: Option<PathBuf>,
    snapshot_every: Duration,
    policy: ConsumerPolicy,
}

impl<S> std::fmt::Debug for View<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("name", &self.name)
            .field("snapshot", &self.snapshot)
            .finish_non_exhaustive()
    }
}

/// What a snapshot file holds.
#[derive(Serialize, Deserialize)]
struct Snapshot<S> {
    topic: String,
    cursor: LogCursor,
    state: S,
}

impl<S> View<S>
where
    S: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// A view named `name` (the name its dead letters and logs carry), starting from `initial`
    /// and folding each event with `fold`.
    pub fn new(
        name: impl Into<String>,
        initial: S,
        fold: impl Fn(&mut S, &Envelope) -> Result<(), HandlerError> + Send + Sync + 'static,
    ) -> Self {
        let policy = ConsumerPolicy {
            // One event at a time, in the log's order, failures retried where they stand.
            concurrency: 1,
            ordered_by_key: true,
            max_attempts: 3,
            ..ConsumerPolicy::default()
        };
        Self {
            name: name.into(),
            state: initial,
            fold: Arc::new(fold),
            snapshot: None,
            snapshot_every: Duration::from_secs(5),
            policy,
        }
    }

    /// Keeps the state and its place in the log in the file `path` (written at most every
    /// `every` while events come, and when the view stops), and starts from it when it is
    /// there: a restart then reads only what came after.
    pub fn snapshot(mut self, path: impl Into<PathBuf>, every: Duration) -> Self {
        self.snapshot = Some(path.into());
        self.snapshot_every = every;
        self
    }

    /// Starts folding `topic` of `transport`. Returns once the log is open; the view is
    /// [`ViewReader::ready`] once it has read what the log held then.
    pub async fn start(
        mut self,
        transport: Arc<dyn Transport>,
        topic: &str,
    ) -> Result<RunningView<S>, TransportError> {
        let mut after = None;
        if let Some(path) = &self.snapshot {
            if let Some(s) = read_snapshot::<S>(path, topic) {
                tracing::info!(target: "switchyard", view = %self.name, path = %path.display(), "view starts from its snapshot");
                self.state = s.state;
                after = Some(s.cursor);
            }
        }
        let log = EventLog::open(transport.as_ref(), topic, after).await?;
        let state = Arc::new(RwLock::new(self.state));
        let fold = self.fold.clone();
        let folding = state.clone();
        let service = Service::new(self.name.clone())
            .consumer_policy(self.policy.clone())
            .on_envelope(topic, move |envelope: Envelope| {
                let outcome = {
                    let mut s = folding.write().unwrap_or_else(|p| p.into_inner());
                    fold(&mut s, &envelope)
                };
                async move { outcome }
            });
        let limit = service.body_limit();
        let stack = middleware::log_stack(
            EventHandler::Service(Arc::new(service)),
            Arc::new(self.policy),
            limit,
            transport.clone(),
        );
        let snapshots = self.snapshot.map(|path| Snapshots {
            path,
            topic: topic.to_string(),
            every: self.snapshot_every,
            written: log.cursor().clone(),
            last_write: Instant::now(),
        });
        let (ready_tx, ready) = watch::channel(log.caught_up());
        let (stop, stopped) = oneshot::channel();
        let reader = ViewReader { state, ready };
        let folding = Folding {
            log,
            transport,
            topic: topic.to_string(),
            stack,
            state: reader.state.clone(),
            ready: ready_tx,
            snapshots,
        };
        let task = tokio::spawn(folding.run(stopped));
        Ok(RunningView {
            reader,
            stop: Some(stop),
            task,
        })
    }
}

fn read_snapshot<S: DeserializeOwned>(path: &Path, topic: &str) -> Option<Snapshot<S>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(target: "switchyard", path = %path.display(), error = %e, "view snapshot not read; replaying from the beginning");
            return None;
        }
    };
    match serde_json::from_slice::<Snapshot<S>>(&bytes) {
        Ok(s) if s.topic == topic => Some(s),
        Ok(s) => {
            tracing::warn!(target: "switchyard", path = %path.display(), snapshot_topic = %s.topic, %topic, "view snapshot is of another topic; replaying from the beginning");
            None
        }
        Err(e) => {
            tracing::warn!(target: "switchyard", path = %path.display(), error = %e, "view snapshot unreadable; replaying from the beginning");
            None
        }
    }
}

/// The snapshot of a view: where it keeps it, how often, and what it last wrote.
struct Snapshots {
    path: PathBuf,
    topic: String,
    every: Duration,
    written: LogCursor,
    last_write: Instant,
}

impl Snapshots {
    /// Writes `state` at `cursor` when the cursor moved since the last write and `every` has
    /// passed (`now`: whenever it moved).
    async fn save<S: Serialize>(&mut self, cursor: &LogCursor, state: &RwLock<S>, now: bool) {
        if *cursor == self.written || (!now && self.last_write.elapsed() < self.every) {
            return;
        }
        #[derive(Serialize)]
        struct Ref<'a, S> {
            topic: &'a str,
            cursor: &'a LogCursor,
            state: &'a S,
        }
        // Serialized under the read lock (readers go on); written off the runtime's threads.
        let bytes = {
            let s = state.read().unwrap_or_else(|p| p.into_inner());
            serde_json::to_vec(&Ref {
                topic: &self.topic,
                cursor,
                state: &*s,
            })
        };
        let path = self.path.clone();
        let written = match bytes {
            Ok(bytes) => tokio::task::spawn_blocking(move || write_whole(&path, &bytes))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e))),
            Err(e) => Err(std::io::Error::other(e)),
        };
        self.last_write = Instant::now();
        match written {
            Ok(()) => self.written = cursor.clone(),
            Err(e) => {
                tracing::warn!(target: "switchyard", path = %self.path.display(), error = %e, "view snapshot not written")
            }
        }
    }
}

/// Writes `bytes` to a file beside `path`, synced, then renames it over `path`: a crash
/// mid-write leaves the previous snapshot.
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// What a running view's task holds.
struct Folding<S> {
    log: EventLog,
    // To open the log again when its subscription ends.
    transport: Arc<dyn Transport>,
    topic: String,
    stack: middleware::LogStack,
    state: Arc<RwLock<S>>,
    ready: watch::Sender<bool>,
    snapshots: Option<Snapshots>,
}

impl<S: Serialize + Send + Sync + 'static> Folding<S> {
    /// Folds the log until `stop` fires, then writes the snapshot.
    async fn run(self, mut stop: oneshot::Receiver<()>) {
        let Folding {
            mut log,
            transport,
            topic,
            stack,
            state,
            ready,
            mut snapshots,
        } = self;
        loop {
            let next = tokio::select! {
                _ = &mut stop => break,
                n = log.next() => n,
            };
            match next {
                Some(Ok(envelope)) => {
                    // Retries happen in place (the policy keeps order); a retry that still comes
                    // out is waited for here, so the log's order holds.
                    while let Disposition::Retry { after, .. } =
                        middleware::dispose(&stack, envelope.clone()).await
                    {
                        tokio::time::sleep(after).await;
                    }
                    if !*ready.borrow() && log.caught_up() {
                        let _ = ready.send(true);
                    }
                    if let Some(s) = &mut snapshots {
                        s.save(log.cursor(), &state, false).await;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(target: "switchyard", error = %e, "log read failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                None => {
                    tracing::warn!(target: "switchyard", %topic, "log subscription ended; opening it again from the view's place");
                    if !reopen(&mut log, transport.as_ref(), &topic, &mut stop).await {
                        break;
                    }
                }
            }
        }
        if let Some(s) = &mut snapshots {
            s.save(log.cursor(), &state, true).await;
        }
    }
}

/// Opens `log` again from its place after the transport ended its subscription (its
/// connection gone for good): tried once a second until it opens (true) or `stop` fires
/// (false). The end seen at the first opening is kept: `ready` means caught up with it.
async fn reopen(
    log: &mut EventLog,
    transport: &dyn Transport,
    topic: &str,
    stop: &mut oneshot::Receiver<()>,
) -> bool {
    loop {
        tokio::select! {
            _ = &mut *stop => return false,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        match EventLog::open(transport, topic, Some(log.cursor.clone())).await {
            Ok(again) => {
                log.subscription = again.subscription;
                return true;
            }
            Err(e) => {
                tracing::warn!(target: "switchyard", %topic, error = %e, "log not opened again yet")
            }
        }
    }
}

/// Reads a running view's state; cheap to clone (one per HTTP handler, say).
pub struct ViewReader<S> {
    state: Arc<RwLock<S>>,
    ready: watch::Receiver<bool>,
}

impl<S> Clone for ViewReader<S> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            ready: self.ready.clone(),
        }
    }
}

impl<S> std::fmt::Debug for ViewReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewReader")
            .field("ready", &*self.ready.borrow())
            .finish_non_exhaustive()
    }
}

impl<S> ViewReader<S> {
    /// `f` of the state as it is now.
    pub fn read<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(&self.state.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether the view has read what its log held when it started.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until [`ViewReader::is_ready`].
    pub async fn ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }
}

/// A view folding its log on a task of its own, until [`RunningView::stop`].
#[derive(Debug)]
pub struct RunningView<S> {
    reader: ViewReader<S>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl<S> RunningView<S> {
    /// A reader of the state.
    pub fn reader(&self) -> ViewReader<S> {
        self.reader.clone()
    }

    /// Stops reading the log once the event being folded is done, and writes the snapshot.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl<S> Drop for RunningView<S> {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_compare_as_numbers_part_by_part() {
        assert!(is_after("10", "9"));
        assert!(!is_after("9", "10"));
        assert!(is_after("1700000000001-0", "1700000000000-5"));
        assert!(is_after("1700000000000-10", "1700000000000-9"));
        assert!(!is_after("5", "5"));
        assert!(is_after("1-2", "1"), "more parts, the same before: after");
        assert!(is_after("b", "a"), "not numbers: compared as text");
        assert!(is_after("9", "10x"), "one of them not a number: as text");
    }

    #[test]
    fn a_cursor_reaches_an_end_lane_by_lane() {
        let mut end = LogCursor::new();
        end.set("0", "4");
        end.set("1", "2");
        let mut c = LogCursor::new();
        assert!(!c.reached(&end));
        assert!(c.advance("0/4"));
        assert!(!c.reached(&end), "lane 1 not read yet");
        assert!(c.advance("1/3"));
        assert!(c.reached(&end));
        assert!(!c.advance("garbage"));
        assert!(c.advance("0/1"), "an earlier place is read but not kept");
        assert_eq!(c.get("0"), Some("4"));
        assert!(LogCursor::new().reached(&LogCursor::new()), "an empty log");
    }
}
