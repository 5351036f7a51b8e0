//! Counts over the last ten seconds, in one-second slots of atomics: what the retry budget and
//! the circuit breaker decide on. Written here rather than taken from tower's `TpsBudget`,
//! which locks a mutex and reads the clock on every call; a call here already has its start
//! time, and counting it is one atomic add.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Slots, one a second.
pub(crate) const SECONDS: u64 = 10;

#[derive(Default)]
struct Slot {
    second: AtomicU64,
    calls: AtomicU32,
    marked: AtomicU32,
}

/// Calls and marked calls (retries, failures) of the last [`SECONDS`] seconds.
pub(crate) struct Window {
    epoch: Instant,
    slots: [Slot; SECONDS as usize],
}

impl Window {
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            slots: Default::default(),
        }
    }

    /// Whole seconds from the window's start to `now`, plus one so that no slot's second is 0.
    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs() + 1
    }

    fn slot(&self, now: Instant) -> &Slot {
        self.slot_of(self.second(now))
    }

    fn slot_of(&self, second: u64) -> &Slot {
        let slot = &self.slots[(second % SECONDS) as usize];
        if slot.second.load(Relaxed) != second && slot.second.swap(second, Relaxed) != second {
            // A slot ten seconds old starts again. A count made by another thread between the
            // swap and these stores is lost: the window is an estimate, not a ledger.
            slot.calls.store(0, Relaxed);
            slot.marked.store(0, Relaxed);
        }
        slot
    }

    /// Counts one call at `now`, marked or not; the second it was counted in.
    pub(crate) fn add(&self, now: Instant, marked: bool) -> u64 {
        let second = self.second(now);
        let slot = self.slot_of(second);
        slot.calls.fetch_add(1, Relaxed);
        if marked {
            slot.marked.fetch_add(1, Relaxed);
        }
        second
    }

    /// Calls counted so far in the second of `now`.
    pub(crate) fn current(&self, now: Instant) -> u32 {
        self.slot(now).calls.load(Relaxed)
    }

    /// Counts one marked event at `now` that is not a call (a retry).
    pub(crate) fn mark(&self, now: Instant) {
        self.slot(now).marked.fetch_add(1, Relaxed);
    }

    /// Takes back a [`Window::mark`] made at `now`.
    pub(crate) fn unmark(&self, now: Instant) {
        let slot = self.slot(now);
        let _ = slot
            .marked
            .fetch_update(Relaxed, Relaxed, |m| m.checked_sub(1));
    }

    /// Calls and marked ones over the last [`SECONDS`] seconds, and how many seconds of it the
    /// window has seen (fewer just after it started).
    pub(crate) fn totals(&self, now: Instant) -> (u64, u64, u64) {
        let second = self.second(now);
        let (mut calls, mut marked) = (0, 0);
        for slot in &self.slots {
            if second.saturating_sub(slot.second.load(Relaxed)) < SECONDS {
                calls += u64::from(slot.calls.load(Relaxed));
                marked += u64::from(slot.marked.load(Relaxed));
            }
        }
        (calls, marked, second.min(SECONDS))
    }

    /// Forgets every count.
    pub(crate) fn clear(&self) {
        for slot in &self.slots {
            slot.calls.store(0, Relaxed);
            slot.marked.store(0, Relaxed);
        }
    }
}
