//! Adaptive concurrency limit on the serving side (load shedding): a call beyond the limit is
//! answered `Unavailable` (HTTP 503) at once instead of queueing, and the limit follows what
//! the service can take, found from its latency the way TCP Vegas finds a path's capacity
//! (Netflix's `concurrency-limits` `VegasLimit`):
//!
//! - every window of calls (as many as the limit, at least [`MIN_WINDOW`]), the queue is
//!   estimated from the window's mean latency against the least latency seen (the service with
//!   nothing waiting): `queue = limit × (1 − least / mean)`;
//! - a queue under `α = 2·log10(limit)` raises the limit (quickly when there is no queue at
//!   all), over `β = 4·log10(limit)` lowers it, in between keeps it (Netflix uses 3 and 6;
//!   the smaller queue keeps admitted calls within twice their unloaded latency at three
//!   times a service's capacity, with its throughput unchanged: `http_overload`);
//! - the limit rises only while calls actually reach it (a quiet service does not grow a limit
//!   it never tested);
//! - the least latency is measured, not guessed, as Envoy's adaptive concurrency filter does:
//!   at the first call and every [`PROBE_EVERY`] after, the limit is held at its minimum
//!   until [`MIN_WINDOW`] calls admitted with no more than that in flight have ended; the
//!   least of their latencies is the service's latency with nothing waiting. (A service
//!   overloaded from its first call never shows that latency otherwise, and a least that
//!   drifted up with what the windows saw followed the overload's own queueing and let the
//!   limit run away.)
//!
//! Written here rather than taken from tower: tower's `ConcurrencyLimit` is fixed and queues
//! (waits in `poll_ready`), where shedding needs a refusal at once, and no maintained crate
//! gives a latency-driven limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Least number of calls in one window.
pub const MIN_WINDOW: usize = 10;

/// How often the latency with nothing waiting is measured again.
pub const PROBE_EVERY: Duration = Duration::from_secs(10);

/// How the adaptive limit starts and how far it may move.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AdaptiveLimit {
    /// The limit before anything was measured.
    pub initial: usize,
    /// Never below this.
    pub min: usize,
    /// Never above this.
    pub max: usize,
}

impl Default for AdaptiveLimit {
    fn default() -> Self {
        Self {
            initial: 20,
            min: 2,
            max: 1_000,
        }
    }
}

impl AdaptiveLimit {
    /// Starts at `initial` calls in flight.
    pub fn initial(mut self, initial: usize) -> Self {
        self.initial = initial;
        self
    }

    /// Keeps the limit within `min..=max`.
    pub fn bounds(mut self, min: usize, max: usize) -> Self {
        self.min = min.max(1);
        self.max = max.max(self.min);
        self
    }
}

/// The limit of one served service instance and what it measures.
#[derive(Debug)]
pub(crate) struct Limiter {
    config: AdaptiveLimit,
    /// `switchyard_limiter_limit{service}`, when metrics are recorded.
    gauge: Option<metrics::Gauge>,
    limit: AtomicUsize,
    in_flight: AtomicUsize,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// The latency of a call that did not wait, in seconds, as last measured; 0 before.
    least: f64,
    /// A measurement of `least` under way: the limit it interrupted, how many calls it saw
    /// and their least latency.
    probe: Option<(usize, usize, f64)>,
    /// When `least` is measured again.
    next_probe: Option<Instant>,
    sum: f64,
    samples: usize,
    smallest: f64,
    /// The most calls in flight seen in this window.
    peak: usize,
}

/// A call admitted by the limiter; report how it went with [`Admitted::done`] (dropped
/// without it, the call counts as cancelled: its place is given back, its latency not used).
#[derive(Debug)]
pub(crate) struct Admitted<'a> {
    limiter: &'a Limiter,
    started: Instant,
    in_flight: usize,
    reported: bool,
}

impl Limiter {
    pub(crate) fn new(config: AdaptiveLimit, service: &str) -> Self {
        let initial = config.initial.clamp(config.min.max(1), config.max.max(1));
        let gauge = crate::observe::enabled().then(|| {
            let gauge =
                metrics::gauge!("switchyard_limiter_limit", "service" => service.to_string());
            gauge.set(initial as f64);
            gauge
        });
        Self {
            gauge,
            limit: AtomicUsize::new(initial),
            in_flight: AtomicUsize::new(0),
            window: Mutex::new(Window::default()),
            config,
        }
    }

    /// The limit now.
    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// A place for one call, or `None` when the limit is reached (`Err` the limit).
    pub(crate) fn try_admit(&self, now: Instant) -> Result<Admitted<'_>, usize> {
        let limit = self.limit();
        let in_flight = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        if in_flight > limit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(limit);
        }
        Ok(Admitted {
            limiter: self,
            started: now,
            in_flight,
            reported: false,
        })
    }

    fn record(&self, now: Instant, latency: Duration, in_flight: usize) {
        let Ok(mut w) = self.window.lock() else {
            return;
        };
        let secs = latency.as_secs_f64().max(1e-9);
        let floor = self.config.min.max(1);
        if let Some((saved, seen, least)) = &mut w.probe {
            // Only calls that found no more than the minimum in flight did not wait.
            if in_flight <= floor {
                *seen += 1;
                *least = if *least == 0.0 { secs } else { least.min(secs) };
            }
            if *seen >= MIN_WINDOW {
                let (saved, least) = (*saved, *least);
                self.limit.store(saved, Ordering::Relaxed);
                *w = Window {
                    least,
                    next_probe: Some(now + PROBE_EVERY),
                    ..Window::default()
                };
            }
            return;
        }
        if w.next_probe.is_none_or(|at| now >= at) {
            w.probe = Some((self.limit(), 0, 0.0));
            self.limit.store(floor, Ordering::Relaxed);
            return;
        }
        w.sum += secs;
        w.samples += 1;
        w.peak = w.peak.max(in_flight);
        if w.smallest == 0.0 || secs < w.smallest {
            w.smallest = secs;
        }
        let limit = self.limit();
        if w.samples < limit.max(MIN_WINDOW) {
            return;
        }
        w.least = w.least.min(w.smallest);
        let mean = w.sum / w.samples as f64;
        let next = vegas(limit, w.least, mean, w.peak);
        let next = next.clamp(floor, self.config.max.max(floor));
        self.limit.store(next, Ordering::Relaxed);
        if let Some(g) = &self.gauge {
            g.set(next as f64);
        }
        *w = Window {
            least: w.least,
            next_probe: w.next_probe,
            ..Window::default()
        };
    }
}

/// The next limit after a window of mean latency `mean` with `least` the latency of a call that
/// did not wait, when at most `peak` calls were in flight.
fn vegas(limit: usize, least: f64, mean: f64, peak: usize) -> usize {
    let l = limit as f64;
    let log = l.log10().max(1.0);
    let queue = l * (1.0 - least / mean);
    let (alpha, beta) = (2.0 * log, 4.0 * log);
    let used = peak * 2 >= limit;
    let next = if queue <= log && used {
        l + beta
    } else if queue < alpha && used {
        l + log
    } else if queue > beta {
        l - log
    } else {
        l
    };
    next.round().max(1.0) as usize
}

impl Admitted<'_> {
    /// The call ended (answered, successfully or not, by the service itself): its latency
    /// goes into the limit.
    pub(crate) fn done(mut self, now: Instant) {
        self.reported = true;
        self.limiter.in_flight.fetch_sub(1, Ordering::AcqRel);
        let latency = now.saturating_duration_since(self.started);
        self.limiter.record(now, latency, self.in_flight);
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.limiter.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_lowers_the_limit_and_no_queue_raises_it() {
        // 40 in flight where 10 ms calls take 40 ms: 30 wait; the limit comes down.
        assert!(vegas(40, 0.010, 0.040, 40) < 40);
        // No waiting at all, the limit used: it goes up by β.
        assert!(vegas(40, 0.010, 0.010, 40) > 45);
        // A small queue (α ≤ queue ≤ β): kept.
        assert_eq!(vegas(40, 0.010, 0.0115, 40), 40);
        // Unused, it does not grow.
        assert_eq!(vegas(40, 0.010, 0.010, 5), 40);
    }

    #[test]
    fn calls_beyond_the_limit_are_refused_and_places_come_back() {
        let limiter = Limiter::new(AdaptiveLimit::default().initial(2).bounds(2, 2), "t");
        let now = Instant::now();
        let a = limiter.try_admit(now).expect("first");
        let b = limiter.try_admit(now).expect("second");
        assert_eq!(limiter.try_admit(now).err(), Some(2));
        drop(a);
        let c = limiter.try_admit(now).expect("a place came back");
        b.done(now);
        c.done(now);
        assert_eq!(limiter.in_flight.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_limit_settles_near_what_a_fixed_capacity_takes() {
        // A service that runs 8 calls at a time, 10 ms each, fed more than it takes: with
        // `limit` in flight, a call's latency is 10 ms × max(1, limit / 8).
        for initial in [2, 20, 200] {
            let limiter = Limiter::new(AdaptiveLimit::default().initial(initial), "t");
            let mut now = Instant::now();
            for _ in 0..300 {
                let limit = limiter.limit();
                let latency =
                    Duration::from_micros((10_000.0 * (limit as f64 / 8.0).max(1.0)) as u64);
                let batch: Vec<_> = (0..limit)
                    .map(|_| limiter.try_admit(now).expect("place"))
                    .collect();
                now += latency;
                for admitted in batch {
                    admitted.done(now);
                }
            }
            let limit = limiter.limit();
            assert!(
                (9..=16).contains(&limit),
                "limit {limit} for a capacity of 8, from {initial}"
            );
        }
    }
}
