//! Bulkhead and rate limit per destination: a client refuses a call at once, rather than queue
//! it, when the destination already has as many of its calls as allowed, or had as many this
//! second. A slow destination then costs its callers a fast error, not their own capacity.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Instant;

use super::window::Window;
use crate::error::CallError;
use crate::policy::CallPolicy;

/// A destination's bulkhead and rate limit.
pub(crate) struct Bulkhead {
    max_in_flight: u32,
    max_per_sec: u32,
    in_flight: AtomicU32,
    // Calls of each second.
    rate: Window,
}

/// A call let through the bulkhead: its place is given back when it ends, however it ends.
pub(crate) struct Slot<'a>(Option<&'a AtomicU32>);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(in_flight) = self.0 {
            in_flight.fetch_sub(1, Relaxed);
        }
    }
}

impl Bulkhead {
    pub(crate) fn new(policy: &CallPolicy) -> Self {
        Self {
            max_in_flight: policy.max_in_flight,
            max_per_sec: policy.max_per_sec,
            in_flight: AtomicU32::new(0),
            rate: Window::new(),
        }
    }

    /// Lets a call of `route` through, or refuses it.
    #[inline]
    pub(crate) fn enter(&self, route: &str, now: Instant) -> Result<Slot<'_>, CallError> {
        let refuse = |limit: String| {
            Err(CallError::Limited {
                route: route.to_string(),
                limit,
            })
        };
        if self.max_per_sec > 0 {
            if self.rate.current(now) >= self.max_per_sec {
                return refuse(format!("{} calls a second", self.max_per_sec));
            }
            self.rate.add(now, false);
        }
        if self.max_in_flight == 0 {
            return Ok(Slot(None));
        }
        if self.in_flight.fetch_add(1, Relaxed) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Relaxed);
            return refuse(format!("{} calls at once", self.max_in_flight));
        }
        Ok(Slot(Some(&self.in_flight)))
    }
}
