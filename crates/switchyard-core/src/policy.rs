//! Policies, one model each for code and configuration files: how a service's event handlers
//! are retried, ordered, de-duplicated and dead-lettered ([`ConsumerPolicy`]); how a client's
//! calls are retried and kept off a failing destination ([`CallPolicy`]).

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

/// How a client's calls are retried and kept off a destination that keeps failing: retries
/// with backoff and full jitter for the routes declared idempotent, within a retry budget, and
/// a circuit breaker. One model, set in code or read from a configuration file (serde, every
/// field optional; durations in milliseconds), so that `yard` can print the one in force.
///
/// ```
/// use switchyard_core::policy::CallPolicy;
/// let p: CallPolicy = serde_json::from_str(r#"{"idempotent": ["/price"], "max_attempts": 4}"#).unwrap();
/// assert!(p.retries("/price") && !p.retries("/order"));
/// assert_eq!((p.retry_ratio, p.retry_min_per_sec), (0.2, 10), "the budget is on by default");
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CallPolicy {
    /// Routes safe to call more than once: only their calls are retried (default none).
    pub idempotent: Vec<String>,
    /// Attempts at a call of an idempotent route, the first included (default 3).
    pub max_attempts: u32,
    /// Longest wait before the second attempt, ms (default 20); doubles at each attempt, and
    /// the wait is drawn at random below it (full jitter). Time waiting counts against the
    /// call's deadline: no retry is made that could not finish in time.
    pub backoff_ms: u64,
    /// Longest wait between attempts, ms (default 1,000).
    pub max_backoff_ms: u64,
    /// Retry budget: retries are at most this share of the calls of the last 10 s (default
    /// 0.2) ...
    pub retry_ratio: f64,
    /// ... plus this many a second (default 10), so that a dead destination gets at most
    /// ≈ 1.2 × the calls offered, never a storm.
    pub retry_min_per_sec: u32,
    /// Circuit breaker: it opens after this many failures in a row (default 5; 0: never on a
    /// count) ...
    pub breaker_consecutive: u32,
    /// ... or when this share of the calls of the last 10 s failed (default 0.5) ...
    pub breaker_ratio: f64,
    /// ... of at least this many calls (default 20).
    pub breaker_min_calls: u32,
    /// How long an open breaker refuses calls before letting a probe through, ms (default
    /// 5,000). A probe that succeeds closes it; one that fails opens it again.
    pub breaker_open_ms: u64,
    /// Probes let through at once while half-open (default 1).
    pub breaker_probes: u32,
    /// Bulkhead: calls to the destination at once, beyond which a call is refused at once
    /// (`CallError::Limited`) rather than queued behind a slow destination (default 0: no
    /// limit).
    pub max_in_flight: u32,
    /// Rate limit: calls a second to the destination, beyond which a call is refused at once
    /// (default 0: no limit).
    pub max_per_sec: u32,
    /// What differs for some routes (default none): `{"/price": {"timeout_ms": 200}}`.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub routes: std::collections::BTreeMap<String, RoutePolicy>,
}

/// What one route's calls do differently from the rest of a [`CallPolicy`]; each field unset
/// keeps the policy's.
///
/// ```
/// use switchyard_core::policy::CallPolicy;
/// let p: CallPolicy = serde_json::from_str(
///     r#"{"routes": {"/price": {"timeout_ms": 200, "idempotent": true, "max_attempts": 5}}}"#,
/// ).unwrap();
/// assert!(p.retries("/price") && !p.retries("/order"));
/// assert_eq!(p.attempts("/price"), 5);
/// assert_eq!(p.timeout("/price"), Some(std::time::Duration::from_millis(200)));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RoutePolicy {
    /// How long a call of the route waits for its reply, ms, instead of the client's timeout
    /// (a call given its own timeout keeps it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Whether the route is idempotent (retried), whatever `idempotent` lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotent: Option<bool>,
    /// Attempts at a call of the route, the first included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
}

impl RoutePolicy {
    /// Calls of the route wait at most `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// The route is (or is not) idempotent.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = Some(idempotent);
        self
    }

    /// Attempts at a call of the route, the first included.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts.max(1));
        self
    }
}

impl Default for CallPolicy {
    fn default() -> Self {
        Self {
            idempotent: Vec::new(),
            max_attempts: 3,
            backoff_ms: 20,
            max_backoff_ms: 1_000,
            retry_ratio: 0.2,
            retry_min_per_sec: 10,
            breaker_consecutive: 5,
            breaker_ratio: 0.5,
            breaker_min_calls: 20,
            breaker_open_ms: 5_000,
            breaker_probes: 1,
            max_in_flight: 0,
            max_per_sec: 0,
            routes: std::collections::BTreeMap::new(),
        }
    }
}

impl CallPolicy {
    /// Declares `routes` idempotent: their calls are retried.
    pub fn idempotent<I, S>(mut self, routes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.idempotent.extend(routes.into_iter().map(Into::into));
        self
    }

    /// Sets the attempts at a call of an idempotent route, the first included.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Sets the breaker's count of failures in a row (0: never on a count).
    pub fn breaker_consecutive(mut self, failures: u32) -> Self {
        self.breaker_consecutive = failures;
        self
    }

    /// Sets how long an open breaker refuses calls.
    pub fn breaker_open_for(mut self, wait: Duration) -> Self {
        self.breaker_open_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Sets the bulkhead: calls to the destination at once (0: no limit).
    pub fn max_in_flight(mut self, calls: u32) -> Self {
        self.max_in_flight = calls;
        self
    }

    /// Sets the rate limit: calls a second to the destination (0: no limit).
    pub fn max_per_sec(mut self, calls: u32) -> Self {
        self.max_per_sec = calls;
        self
    }

    /// Overrides `route`'s part of the policy.
    pub fn route(mut self, route: impl Into<String>, policy: RoutePolicy) -> Self {
        self.routes.insert(route.into(), policy);
        self
    }

    #[inline]
    fn for_route(&self, route: &str) -> Option<&RoutePolicy> {
        // Most policies override nothing: no lookup then.
        if self.routes.is_empty() {
            None
        } else {
            self.routes.get(route)
        }
    }

    /// Whether calls of `route` are retried.
    #[inline]
    pub fn retries(&self, route: &str) -> bool {
        let own = self.for_route(route);
        let idempotent = own
            .and_then(|p| p.idempotent)
            .unwrap_or_else(|| self.idempotent.iter().any(|r| r == route));
        idempotent && self.attempts(route) > 1
    }

    /// Attempts at a call of `route`, the first included.
    pub fn attempts(&self, route: &str) -> u32 {
        self.for_route(route)
            .and_then(|p| p.max_attempts)
            .unwrap_or(self.max_attempts)
    }

    /// Whether the policy can be applied: at least one attempt a call, shares between 0 and
    /// 1, a backoff no longer than its cap. Checked before a policy read from configuration
    /// replaces the one in force.
    ///
    /// ```
    /// use switchyard_core::policy::CallPolicy;
    /// assert!(CallPolicy::default().check().is_ok());
    /// let p: CallPolicy = serde_json::from_str(r#"{"breaker_ratio": 1.5}"#).unwrap();
    /// assert!(p.check().unwrap_err().contains("breaker_ratio"));
    /// ```
    pub fn check(&self) -> Result<(), String> {
        let share = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} {v} is not a share between 0 and 1"))
            }
        };
        share("retry_ratio", self.retry_ratio)?;
        share("breaker_ratio", self.breaker_ratio)?;
        if self.max_attempts == 0 {
            return Err("max_attempts 0: a call is attempted at least once".into());
        }
        if self.backoff_ms > self.max_backoff_ms {
            return Err(format!(
                "backoff_ms {} over max_backoff_ms {}",
                self.backoff_ms, self.max_backoff_ms
            ));
        }
        for (route, policy) in &self.routes {
            if policy.max_attempts == Some(0) {
                return Err(format!("{route}: max_attempts 0"));
            }
        }
        Ok(())
    }

    /// How long a call of `route` waits, when the policy says so for it.
    #[inline]
    pub fn timeout(&self, route: &str) -> Option<Duration> {
        self.for_route(route)
            .and_then(|p| p.timeout_ms)
            .map(Duration::from_millis)
    }

    /// The longest wait before attempt `attempt + 1` (the wait itself is drawn below it).
    pub fn backoff_cap(&self, attempt: u32) -> Duration {
        crate::backoff::doubling(
            Duration::from_millis(self.backoff_ms),
            Duration::from_millis(self.max_backoff_ms),
            attempt,
        )
    }
}
