//! The clock a call's deadline is reckoned from.
//!
//! A precise read of the monotonic clock (`Instant::now`) is, on a virtual machine, a sizeable
//! part of a call made in process (`docs/PERFORMANCE.md`). A call whose timeout is a second or
//! more starts from the kernel's coarse clock instead: the same monotonic clock as it stood at
//! its last tick, several times cheaper to read, never more than a tick (1–4 ms) away from the
//! precise one — at most 0.4 % of such a timeout, finer than the millisecond of tokio's timers
//! that enforce it.
//! Shorter timeouts read the precise clock.
//! Written here because `std` has no coarse clock; `rustix` reads it without `unsafe`.
//!
//! A latency is measured by a [`Stopwatch`] instead: the processor's time-stamp counter,
//! calibrated, where it is steady (`quanta`; 9 ns a read here against 24 ns for `Instant::now`).

use std::time::{Duration, Instant};

/// Timeouts from which a call's start is read from the coarse clock.
pub(crate) const COARSE_FROM: Duration = Duration::from_secs(1);

/// When a call with `timeout` starts: from the coarse clock when the timeout allows it (see
/// the module's notes).
#[inline]
pub(crate) fn call_start(timeout: Duration) -> Instant {
    if timeout >= COARSE_FROM {
        coarse_now()
    } else {
        Instant::now()
    }
}

/// When a measured call started, to tell how long it took.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stopwatch(quanta::Instant);

impl Stopwatch {
    /// Started now.
    #[inline]
    pub(crate) fn start() -> Self {
        Self(quanta::Instant::now())
    }

    /// The time since it started.
    #[inline]
    pub(crate) fn elapsed(self) -> Duration {
        quanta::Instant::now().saturating_duration_since(self.0)
    }
}

/// The time left until `deadline`: from the coarse clock when that leaves a second or more
/// (a tick's error is then as small as a call start's, see the module's notes), else from the
/// precise one (a tick or two off either way, as the coarse clock is: 0.8 % of a second).
#[inline]
pub(crate) fn remaining_until(deadline: Instant) -> Duration {
    let roughly = deadline.saturating_duration_since(coarse_now());
    if roughly >= COARSE_FROM {
        roughly
    } else {
        deadline.saturating_duration_since(Instant::now())
    }
}

/// Now, to within a tick of the kernel's clock.
#[cfg(target_os = "linux")]
pub(crate) fn coarse_now() -> Instant {
    use std::sync::OnceLock;
    // An `Instant` and the coarse clock read together once: the coarse clock since then is
    // added to that `Instant` (both count the same monotonic time; they never drift apart).
    static BASE: OnceLock<(Instant, Duration)> = OnceLock::new();
    let coarse = coarse();
    let (base, at) = *BASE.get_or_init(|| (Instant::now(), coarse));
    base + coarse.saturating_sub(at)
}

/// Now (no coarse clock here).
#[cfg(not(target_os = "linux"))]
pub(crate) fn coarse_now() -> Instant {
    Instant::now()
}

#[cfg(target_os = "linux")]
fn coarse() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_stays_within_a_tick_or_two_of_the_precise_one() {
        let mut last = coarse_now();
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(50) {
            let coarse = coarse_now();
            let precise = Instant::now();
            assert!(coarse >= last, "the coarse clock went back");
            let apart = if coarse > precise {
                coarse - precise
            } else {
                precise - coarse
            };
            // A tick is 4 ms at most (250 Hz); its base and its reading each lag by up to one.
            assert!(apart <= Duration::from_millis(8), "{apart:?} apart");
            last = coarse;
        }
        assert!(
            coarse_now() >= started,
            "the coarse clock is not behind a past instant"
        );
    }

    #[test]
    fn what_is_left_of_a_deadline_is_read_coarsely_only_when_a_second_or_more_is() {
        let far = Instant::now() + Duration::from_secs(5);
        let left = remaining_until(far);
        assert!(
            left <= Duration::from_millis(5_008) && left >= Duration::from_millis(4_900),
            "{left:?}"
        );
        // Near: the precise clock, never more than what is truly left.
        let near = Instant::now() + Duration::from_millis(100);
        let left = remaining_until(near);
        assert!(left <= Duration::from_millis(100), "{left:?}");
        assert!(left >= Duration::from_millis(50), "{left:?}");
        assert_eq!(remaining_until(Instant::now()), Duration::ZERO);
    }

    #[test]
    fn short_timeouts_start_from_the_precise_clock() {
        let before = Instant::now();
        assert!(call_start(Duration::from_millis(100)) >= before);
    }

    #[test]
    fn a_stopwatch_agrees_with_the_monotonic_clock() {
        let (watch, since) = (Stopwatch::start(), Instant::now());
        std::thread::sleep(Duration::from_millis(20));
        let (took, truly) = (watch.elapsed(), since.elapsed());
        let apart = took.abs_diff(truly);
        assert!(took >= Duration::from_millis(20), "{took:?}");
        assert!(
            apart < Duration::from_millis(2),
            "{took:?} against {truly:?}"
        );
    }
}
