//! How a service's event handlers are retried, ordered, de-duplicated and dead-lettered.

use std::sync::Arc;
use std::time::Duration;

use crate::inbox::InboxStore;

/// Retry and dead-letter policy of a consumer.
#[derive(Clone)]
pub struct ConsumerPolicy {
    /// Deliveries before a failing message goes to the dead-letter topic (default 5).
    pub max_attempts: u32,
    /// Delay before the second delivery (default 100 ms); doubles each attempt.
    pub initial_backoff: Duration,
    /// Longest delay between deliveries (default 10 s).
    pub max_backoff: Duration,
    /// Suffix of the dead-letter topic (default `.dlq`: `orders` → `orders.dlq`).
    pub dead_letter_suffix: String,
    /// Handlers running at once (default 64).
    pub concurrency: usize,
    /// Process messages with the same ordering key one at a time, in the order received,
    /// and messages with different keys in parallel (up to `concurrency`); a failing message
    /// is retried in place so that it keeps its turn (default false: no order at all).
    pub ordered_by_key: bool,
    /// Skip messages already processed (see [`crate::inbox`]); `None` by default.
    pub inbox: Option<Arc<dyn InboxStore>>,
    /// How long a claim in the inbox lasts before another consumer may run the message
    /// (default 30 s): longer than the slowest handler.
    pub inbox_lease: Duration,
}

impl std::fmt::Debug for ConsumerPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("dead_letter_suffix", &self.dead_letter_suffix)
            .field("concurrency", &self.concurrency)
            .field("ordered_by_key", &self.ordered_by_key)
            .field("inbox", &self.inbox.is_some())
            .finish()
    }
}

impl Default for ConsumerPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            dead_letter_suffix: ".dlq".into(),
            concurrency: 64,
            ordered_by_key: false,
            inbox: None,
            inbox_lease: Duration::from_secs(30),
        }
    }
}

impl ConsumerPolicy {
    /// The delay before delivery number `attempt + 1`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchyard_core::consumer::ConsumerPolicy;
    /// let p = ConsumerPolicy::default();
    /// assert_eq!(p.backoff(1), Duration::from_millis(100));
    /// assert_eq!(p.backoff(3), Duration::from_millis(400));
    /// assert_eq!(p.backoff(30), Duration::from_secs(10));
    /// ```
    pub fn backoff(&self, attempt: u32) -> Duration {
        crate::backoff::doubling(self.initial_backoff, self.max_backoff, attempt)
    }
}
