//! Circuit breaker per destination: after repeated failures (so many in a row, or a share of
//! the calls of the last ten seconds since failures began) calls are refused at once for a while instead of waiting on a
//! destination that is down; then probes are let through, and the first one's outcome closes
//! or reopens it. Failures are the destination's (timeouts, unreachable, `Unavailable`), never
//! the caller's (a bad request, an unknown route).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::window::{Window, SECONDS};
use crate::error::{CallError, ErrorCode, TransportError};
use crate::policy::CallPolicy;

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused (`CallError::CircuitOpen`).
    Open,
    /// Its open time is over: probes go through, the others are refused.
    HalfOpen,
}

/// How a call was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Closed,
    Probe,
}

/// One destination's breaker.
pub(crate) struct Breaker {
    consecutive_limit: u32,
    ratio: f64,
    min_calls: u64,
    open_for: Duration,
    probes: u32,
    epoch: Instant,
    consecutive: AtomicU32,
    // When a probe may go, in ms after `epoch`; 0 while closed.
    open_until_ms: AtomicU64,
    probing: AtomicU32,
    // Calls, and failures as marks; successes are counted only while `failing`, so that a
    // healthy destination's calls cost one atomic read here.
    window: Window,
    failing: AtomicBool,
    // The second (of `window`) of the last failure.
    last_failure: AtomicU64,
}

impl Breaker {
    pub(crate) fn new(policy: &CallPolicy) -> Self {
        Self {
            consecutive_limit: policy.breaker_consecutive,
            ratio: policy.breaker_ratio,
            min_calls: u64::from(policy.breaker_min_calls.max(1)),
            open_for: Duration::from_millis(policy.breaker_open_ms),
            probes: policy.breaker_probes.max(1),
            epoch: Instant::now(),
            consecutive: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probing: AtomicU32::new(0),
            window: Window::new(),
            failing: AtomicBool::new(false),
            last_failure: AtomicU64::new(0),
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        // At least 1: 0 means closed.
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Lets a call through, or says how long calls stay refused.
    #[inline]
    pub(crate) fn admit(&self, now: Instant) -> Result<Admission, Duration> {
        let until = self.open_until_ms.load(Relaxed);
        if until == 0 {
            return Ok(Admission::Closed);
        }
        let at = self.ms(now);
        if at < until {
            return Err(Duration::from_millis(until - at));
        }
        if self.probing.fetch_add(1, Relaxed) < self.probes {
            Ok(Admission::Probe)
        } else {
            self.probing.fetch_sub(1, Relaxed);
            // Another probe is out: wait for its outcome.
            Err(Duration::ZERO)
        }
    }

    /// Records the outcome of a call let through by [`Breaker::admit`].
    #[inline]
    pub(crate) fn record(&self, admission: Admission, now: Instant, failed: bool) {
        if admission == Admission::Probe {
            self.probing.fetch_sub(1, Relaxed);
            if failed {
                self.open(now);
            } else {
                self.close();
            }
            return;
        }
        if !failed {
            // Read first: a call that succeeds writes nothing shared when all is well.
            if self.consecutive.load(Relaxed) != 0 {
                self.consecutive.store(0, Relaxed);
            }
            if self.failing.load(Relaxed) {
                let second = self.window.add(now, false);
                if second.saturating_sub(self.last_failure.load(Relaxed)) >= SECONDS {
                    // No failure for a whole window: back to counting nothing.
                    self.failing.store(false, Relaxed);
                }
            }
            return;
        }
        let second = self.window.add(now, true);
        self.last_failure.store(second, Relaxed);
        self.failing.store(true, Relaxed);
        let in_a_row = self.consecutive.fetch_add(1, Relaxed) + 1;
        let (calls, failures, _) = self.window.totals(now);
        let by_count = self.consecutive_limit > 0 && in_a_row >= self.consecutive_limit;
        let by_share = calls >= self.min_calls && failures as f64 >= calls as f64 * self.ratio;
        if by_count || by_share {
            self.open(now);
        }
    }

    fn open(&self, now: Instant) {
        let until = self
            .ms(now)
            .saturating_add(u64::try_from(self.open_for.as_millis()).unwrap_or(u64::MAX));
        if self.open_until_ms.swap(until, Relaxed) == 0 {
            tracing::warn!(
                target: "switchyard",
                open_for = ?self.open_for,
                "circuit breaker opened: calls are refused until a probe succeeds"
            );
        }
        self.consecutive.store(0, Relaxed);
        self.window.clear();
        self.failing.store(false, Relaxed);
    }

    fn close(&self) {
        if self.open_until_ms.swap(0, Relaxed) != 0 {
            tracing::info!(target: "switchyard", "circuit breaker closed: a probe succeeded");
        }
        self.consecutive.store(0, Relaxed);
        self.window.clear();
        self.failing.store(false, Relaxed);
    }

    /// Where the breaker stands at `now`.
    pub(crate) fn state(&self, now: Instant) -> BreakerState {
        match self.open_until_ms.load(Relaxed) {
            0 => BreakerState::Closed,
            until if self.ms(now) < until => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }
}

/// Whether `error` is the destination's failure (it counts against its breaker), rather than
/// the caller's.
pub(crate) fn destination_failed(error: &CallError) -> bool {
    match error {
        CallError::Timeout { .. } => true,
        CallError::Remote { error, .. } => {
            error.code == ErrorCode::DeadlineExceeded || retryable_code(error.code)
        }
        other => retryable(other),
    }
}

/// Whether a call that failed with `error` may be tried again: the destination was not
/// reached, or said it could not take the call now. A timeout is not retried (its deadline is
/// spent), nor an answer of the handler's own.
pub(crate) fn retryable(error: &CallError) -> bool {
    match error {
        CallError::Unreachable { .. } => true,
        CallError::Transport(TransportError::Unreachable { .. }) => true,
        CallError::Remote { error, .. } => retryable_code(error.code),
        _ => false,
    }
}

fn retryable_code(code: ErrorCode) -> bool {
    code == ErrorCode::Unavailable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing(b: &Breaker, now: Instant, n: u32) {
        for _ in 0..n {
            let a = b.admit(now).expect("admitted");
            b.record(a, now, true);
        }
    }

    #[test]
    fn opens_after_failures_in_a_row_then_a_probe_decides() {
        let policy = CallPolicy::default().breaker_open_for(Duration::from_millis(100));
        let b = Breaker::new(&policy);
        let t0 = Instant::now();
        failing(&b, t0, 4);
        assert_eq!(b.state(t0), BreakerState::Closed);
        failing(&b, t0, 1);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert!(b.admit(t0).is_err(), "refused while open");
        let later = t0 + Duration::from_millis(150);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        let probe = b.admit(later).expect("a probe goes");
        assert!(b.admit(later).is_err(), "one probe at a time");
        b.record(probe, later, true);
        assert_eq!(
            b.state(later),
            BreakerState::Open,
            "a failed probe reopens it"
        );
        let again = later + Duration::from_millis(150);
        let probe = b.admit(again).expect("a probe goes");
        b.record(probe, again, false);
        assert_eq!(b.state(again), BreakerState::Closed);
    }

    #[test]
    fn opens_on_a_share_of_failures() {
        let b = Breaker::new(&CallPolicy::default());
        let now = Instant::now();
        let mut calls = 0;
        // Every other call fails: never 5 in a row, but half of them.
        while let Ok(a) = b.admit(now) {
            b.record(a, now, calls % 2 == 0);
            calls += 1;
            assert!(
                calls <= 40,
                "still closed after {calls} calls, half of them failed"
            );
        }
        assert_eq!(b.state(now), BreakerState::Open);
        assert!(
            calls >= 20,
            "opened after {calls} calls, before its minimum of 20"
        );
    }
}
