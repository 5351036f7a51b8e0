//! Waits that double, shared by consumer redelivery and connection retries.

use std::time::Duration;

/// `initial` doubled for each attempt after the first, capped at `max` (no overflow).
pub(crate) fn doubling(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    initial.checked_mul(factor).unwrap_or(max).min(max)
}
