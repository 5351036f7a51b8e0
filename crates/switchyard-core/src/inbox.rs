//! Inbox deduplication: a consumer records the ids of the messages it processed and skips a
//! message it has seen, so that at-least-once delivery gives effectively-once processing.
//!
//! A message is *claimed* for a lease before its handler runs, marked *done* after it
//! succeeded, and *released* when it failed (so that its redelivery runs it again). A
//! delivery that finds its id claimed by a live lease is still in progress elsewhere and is
//! redelivered later; one that finds it done is acknowledged without running the handler. A
//! consumer that dies mid-message leaves a claim whose lease runs out, after which the
//! redelivery runs it. Stores: [`MemoryInbox`] here; Redis and PostgreSQL in
//! `switchyard-inbox`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

/// What claiming an id found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// First time (or the previous claim expired): run the handler.
    Fresh,
    /// Already processed: acknowledge without running the handler.
    Done,
    /// Claimed by a live lease elsewhere: try again later.
    InProgress,
}

/// The store failed; the consumer redelivers the message later.
#[derive(Debug, thiserror::Error)]
#[error("inbox store failed: {0}")]
pub struct InboxError(#[source] pub crate::error::BoxError);

/// Where processed message ids are kept.
pub trait InboxStore: Send + Sync + 'static {
    /// Claims `id` for `lease`.
    fn claim<'a>(
        &'a self,
        id: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, InboxError>>;
    /// Marks `id` processed, remembered for the store's retention.
    fn done<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), InboxError>>;
    /// Gives up a claim after the handler failed, so that a redelivery runs it again.
    fn release<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), InboxError>>;
}

#[derive(Clone, Copy)]
enum State {
    Claimed(Instant),
    Done(Instant),
}

/// An in-memory inbox, bounded in entries and in time.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use switchyard_core::inbox::{Claim, InboxStore, MemoryInbox};
/// let inbox = MemoryInbox::new(10_000, Duration::from_secs(3600));
/// assert_eq!(inbox.claim("m1", Duration::from_secs(30)).await.unwrap(), Claim::Fresh);
/// inbox.done("m1").await.unwrap();
/// assert_eq!(inbox.claim("m1", Duration::from_secs(30)).await.unwrap(), Claim::Done);
/// # }
/// ```
pub struct MemoryInbox {
    capacity: usize,
    retention: Duration,
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    states: HashMap<String, State>,
    /// Ids in the order they were first claimed, to evict the oldest beyond capacity.
    order: VecDeque<String>,
}

impl std::fmt::Debug for MemoryInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryInbox")
            .field("capacity", &self.capacity)
            .field("retention", &self.retention)
            .finish()
    }
}

impl MemoryInbox {
    /// Keeps at most `capacity` ids, each for at most `retention` after it was processed.
    pub fn new(capacity: usize, retention: Duration) -> Self {
        Self {
            capacity: capacity.max(1),
            retention,
            inner: Mutex::new(Entries::default()),
        }
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .states
            .len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl InboxStore for MemoryInbox {
    fn claim<'a>(
        &'a self,
        id: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, InboxError>> {
        let now = Instant::now();
        let mut e = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let claim = match e.states.get(id) {
            Some(State::Done(until)) if *until > now => Claim::Done,
            Some(State::Claimed(until)) if *until > now => Claim::InProgress,
            existing => {
                let new = existing.is_none();
                e.states.insert(id.to_string(), State::Claimed(now + lease));
                if new {
                    e.order.push_back(id.to_string());
                }
                while e.states.len() > self.capacity {
                    match e.order.pop_front() {
                        Some(old) => {
                            e.states.remove(&old);
                        }
                        None => break,
                    }
                }
                Claim::Fresh
            }
        };
        Box::pin(async move { Ok(claim) })
    }

    fn done<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), InboxError>> {
        let mut e = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = e.states.get_mut(id) {
            *s = State::Done(Instant::now() + self.retention);
        }
        Box::pin(async { Ok(()) })
    }

    fn release<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), InboxError>> {
        let mut e = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(e.states.get(id), Some(State::Claimed(_))) {
            e.states.remove(id);
            e.order.retain(|x| x != id);
        }
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn claims_expire_and_memory_stays_bounded() {
        let inbox = MemoryInbox::new(3, Duration::from_secs(60));
        assert_eq!(
            inbox.claim("a", Duration::from_millis(30)).await.unwrap(),
            Claim::Fresh
        );
        assert_eq!(
            inbox.claim("a", Duration::from_millis(30)).await.unwrap(),
            Claim::InProgress
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            inbox.claim("a", Duration::from_secs(5)).await.unwrap(),
            Claim::Fresh,
            "a dead consumer's claim expires"
        );
        inbox.release("a").await.unwrap();
        assert_eq!(
            inbox.claim("a", Duration::from_secs(5)).await.unwrap(),
            Claim::Fresh,
            "a released claim runs again"
        );
        for id in ["b", "c", "d", "e"] {
            inbox.claim(id, Duration::from_secs(5)).await.unwrap();
            inbox.done(id).await.unwrap();
        }
        assert_eq!(inbox.len(), 3);
        assert_eq!(
            inbox.claim("e", Duration::from_secs(5)).await.unwrap(),
            Claim::Done
        );
    }
}
