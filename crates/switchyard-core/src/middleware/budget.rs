//! Retry budget (Finagle's, Linkerd's): retries are at most a share of the calls made (20 %)
//! plus a few a second (10), over the last ten seconds, so that retries never multiply the
//! load on a destination that is down.

use std::time::Instant;

use super::window::Window;
use crate::policy::CallPolicy;

/// The retries a client may still make.
pub(crate) struct RetryBudget {
    ratio: f64,
    min_per_sec: u64,
    // Calls, and retries as marks.
    window: Window,
}

impl RetryBudget {
    pub(crate) fn new(policy: &CallPolicy) -> Self {
        Self {
            ratio: policy.retry_ratio.max(0.0),
            min_per_sec: u64::from(policy.retry_min_per_sec),
            window: Window::new(),
        }
    }

    /// A call was made (not a retry).
    pub(crate) fn deposit(&self, now: Instant) {
        self.window.add(now, false);
    }

    /// Takes one retry from the budget, if it has one.
    pub(crate) fn withdraw(&self, now: Instant) -> bool {
        // Counted first and given back if over: two callers at once never both take the
        // last retry.
        self.window.mark(now);
        let (calls, retries, seconds) = self.window.totals(now);
        // Float arithmetic on counts well below 2^52: exact enough.
        let allowed = calls as f64 * self.ratio + (self.min_per_sec * seconds) as f64;
        if retries as f64 <= allowed {
            true
        } else {
            self.window.unmark(now);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_share_of_the_calls_plus_a_few_a_second() {
        let budget = RetryBudget::new(&CallPolicy::default());
        let now = Instant::now();
        for _ in 0..1_000 {
            budget.deposit(now);
        }
        let granted = (0..1_000).filter(|_| budget.withdraw(now)).count();
        // 20 % of 1,000 calls, plus 10 for the one second seen.
        assert_eq!(granted, 210);
    }
}
