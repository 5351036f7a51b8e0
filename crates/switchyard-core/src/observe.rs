//! Metrics in Prometheus' format: what every served service, consumer and client counts.
//!
//! Nothing is measured until [`install_prometheus`] is called (`yard --metrics ADDR` does):
//! then calls are counted by service, route and outcome with their latency, events by topic
//! and outcome, dead letters by topic, client calls, retries and the breaker's state by
//! destination. Labels come from the service's own routes and topics and the names callers
//! give their destinations, never from a message's content: a call of a route the service does
//! not have is counted under `route="<unknown>"`. The handles are made once per route and
//! topic when a service is served, so that measuring costs a call a few additions and two
//! clock reads, and costs nothing when nothing is installed.
//!
//! Latency histograms ([`Latency`]), the calls by outcome (server and client side) and the
//! calls in flight ([`Tally`], counts kept per thread) are kept here and written into the
//! exporter's text at each scrape; the other counters and gauges go through the `metrics`
//! facade. The exporter's histogram keeps every sample, timestamped, until its
//! upkeep folds it into buckets (a clock read and an epoch-guarded push per call), and its
//! gauges are `f64`s updated by compare-and-swap: together they cost an in-process call about
//! 50 ns more than two atomic adds into fixed buckets, as Prometheus' own client libraries
//! record.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ::metrics::{counter, gauge, Counter, Gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rustc_hash::FxHashMap;

use crate::clock::Stopwatch;
use crate::error::{ErrorCode, HandlerError};

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets, in seconds: 100 µs to 10 s.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

/// [`BUCKETS`] in nanoseconds, what a sample is compared with.
const BUCKET_NANOS: [u64; 14] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    10_000_000_000,
];

/// A latency histogram with fixed buckets ([`BUCKETS`]), recorded with two atomic adds.
#[derive(Debug, Default)]
pub(crate) struct Latency {
    /// Samples per bucket, not cumulative; the last is over the largest bound.
    buckets: [AtomicU64; 15],
    sum_nanos: AtomicU64,
}

impl Latency {
    /// Records one sample.
    pub(crate) fn record(&self, took: Duration) {
        self.record_many(took, 1);
    }

    /// Records one sample standing for `count` of them.
    fn record_many(&self, took: Duration, count: u64) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let at = BUCKET_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(BUCKET_NANOS.len());
        self.buckets[at].fetch_add(count, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(nanos.saturating_mul(count), Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut total = 0u64;
        for (i, bound) in BUCKETS.iter().enumerate() {
            total += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {total}");
        }
        total += self.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
    }
}

/// Up to four counts kept per thread, summed at each scrape: what a call counts itself in
/// (by outcome) and its service's calls in flight. Each thread adds to its own cells with a
/// plain load and store, which no other thread writes (the sum is read with loads), where one
/// count shared by every thread costs an atomic read-modify-write (a locked instruction)
/// each time: in process, where a call takes about 200 ns, those were most of what metrics
/// cost. The `thread_local` crate gives each thread its own cells and lets the scrape visit
/// every thread's; a thread that ends leaves its cells to the next one made, so nothing
/// counted is lost and the memory stays bounded by the threads alive at once.
#[derive(Default)]
pub(crate) struct Tally(thread_local::ThreadLocal<[AtomicU64; 4]>);

impl Tally {
    /// Adds `n` to count `at` (wrapping: a gauge takes one away by adding `u64::MAX`).
    #[inline]
    fn add(&self, at: usize, n: u64) {
        let cells = self.0.get_or_default();
        if let Some(cell) = cells.get(at) {
            // This thread's own cell: no other thread writes it, so no lost update.
            cell.store(
                cell.load(Ordering::Relaxed).wrapping_add(n),
                Ordering::Relaxed,
            );
        }
    }

    /// Count `at`, summed over every thread.
    fn sum(&self, at: usize) -> u64 {
        self.0.iter().fold(0, |total, cells| {
            total.wrapping_add(cells.get(at).map_or(0, |c| c.load(Ordering::Relaxed)))
        })
    }
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Tally")
            .field(&[self.sum(0), self.sum(1), self.sum(2), self.sum(3)])
            .finish()
    }
}

/// A series kept here rather than in the exporter (see the module's notes).
enum Own {
    Latency(Arc<Latency>),
    /// A gauge: count 0 of its tally, read as signed.
    Gauge(Arc<Tally>),
    /// A counter: count `.1` of its tally.
    Counter(Arc<Tally>, usize),
}

/// Every series kept here, by metric name then labels, written out at each scrape.
static OWN: Mutex<Vec<(&'static str, String, Own)>> = Mutex::new(Vec::new());

/// `name="value"` pairs, values escaped as Prometheus' text format says.
fn labels(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let value = value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(out, "{name}=\"{value}\"");
    }
    out
}

/// The series `name` with `pairs` as its labels, kept for scrapes: the one already kept under
/// those labels, if any (a service served again goes on counting, as the exporter's own
/// series do), else a new one.
fn kept<T: Default>(
    name: &'static str,
    pairs: &[(&str, &str)],
    wrap: fn(Arc<T>) -> Own,
    unwrap: fn(&Own) -> Option<&Arc<T>>,
) -> Arc<T> {
    let labels = labels(pairs);
    let Ok(mut own) = OWN.lock() else {
        return Arc::default();
    };
    let found = own
        .iter()
        .filter(|(n, l, _)| *n == name && *l == labels)
        .find_map(|(_, _, series)| unwrap(series).cloned());
    found.unwrap_or_else(|| {
        let series = Arc::new(T::default());
        own.push((name, labels, wrap(series.clone())));
        series
    })
}

/// A latency histogram `name` with `pairs` as its labels, kept for scrapes.
fn latency(name: &'static str, pairs: &[(&str, &str)]) -> Arc<Latency> {
    kept(name, pairs, Own::Latency, |s| match s {
        Own::Latency(h) => Some(h),
        _ => None,
    })
}

/// An integer gauge `name` with `pairs` as its labels, kept for scrapes: count 0 of the tally.
fn int_gauge(name: &'static str, pairs: &[(&str, &str)]) -> Arc<Tally> {
    kept(name, pairs, Own::Gauge, |s| match s {
        Own::Gauge(g) => Some(g),
        _ => None,
    })
}

/// Counters `name` with `pairs` as their labels and one more, `label`, whose values are
/// `values`: value `i` is count `i` of the returned tally. Kept for scrapes, as [`kept`] says.
fn counters(
    name: &'static str,
    pairs: &[(&str, &str)],
    label: &str,
    values: &[&str],
) -> Arc<Tally> {
    let with = |value: &str| {
        let mut all = pairs.to_vec();
        all.push((label, value));
        labels(&all)
    };
    let Ok(mut own) = OWN.lock() else {
        return Arc::default();
    };
    let first = with(values.first().copied().unwrap_or_default());
    let found = own.iter().find_map(|(n, l, series)| match series {
        Own::Counter(tally, 0) if *n == name && *l == first => Some(tally.clone()),
        _ => None,
    });
    found.unwrap_or_else(|| {
        let tally = Arc::new(Tally::default());
        for (i, value) in values.iter().take(4).enumerate() {
            own.push((name, with(value), Own::Counter(tally.clone(), i)));
        }
        tally
    })
}

/// The series kept here, in Prometheus' text format, one `# TYPE` line per metric name.
fn render_own(out: &mut String) {
    let Ok(own) = OWN.lock() else {
        return;
    };
    let mut names: Vec<&'static str> = own.iter().map(|(name, _, _)| *name).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let mut typed = false;
        for (_, labels, series) in own.iter().filter(|(n, _, _)| *n == name) {
            match series {
                Own::Latency(h) => {
                    if !typed {
                        let _ = writeln!(out, "# TYPE {name} histogram");
                    }
                    h.render(out, name, labels);
                }
                Own::Gauge(g) => {
                    if !typed {
                        let _ = writeln!(out, "# TYPE {name} gauge");
                    }
                    // Two's complement: what went in and out on different threads nets out.
                    #[allow(clippy::cast_possible_wrap)]
                    let value = g.sum(0) as i64;
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
                Own::Counter(tally, at) => {
                    if !typed {
                        let _ = writeln!(out, "# TYPE {name} counter");
                    }
                    let _ = writeln!(out, "{name}{{{labels}}} {}", tally.sum(*at));
                }
            }
            typed = true;
        }
    }
}

/// Why the recorder could not be installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObserveError {
    /// Another metrics recorder is installed in this process already.
    #[error("cannot install the Prometheus recorder: {0}")]
    Install(String),
}

/// Installs the Prometheus recorder for this process; calling it again does nothing. Serve
/// services and make clients after it: their handles are made when they start.
pub fn install_prometheus() -> Result<(), ObserveError> {
    if PROMETHEUS.get().is_some() {
        return Ok(());
    }
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| ObserveError::Install(e.to_string()))?;
    if PROMETHEUS.set(handle.clone()).is_ok() {
        // The exporter keeps histogram samples until its upkeep folds them in: without it
        // they would pile up between scrapes. A thread of its own, so that it runs whether
        // or not this was called inside a runtime, and as long as the process does.
        let upkeep = std::thread::Builder::new()
            .name("switchyard-metrics".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(5));
                handle.run_upkeep();
            });
        if let Err(e) = upkeep {
            return Err(ObserveError::Install(format!("no upkeep thread: {e}")));
        }
    }
    Ok(())
}

/// Turns OpenTelemetry spans on for every hop (calls sent and answered, events published and
/// handled, dead letters), made through OpenTelemetry's global tracer provider: install the
/// provider (and its exporter) first. See [`middleware::trace`](crate::middleware::trace).
pub fn enable_tracing() {
    crate::middleware::trace::enable();
}

/// The metrics in Prometheus' text format, when [`install_prometheus`] was called.
pub fn render() -> Option<String> {
    PROMETHEUS.get().map(|handle| {
        let mut out = handle.render();
        render_own(&mut out);
        out
    })
}

/// The transports this process serves on, for readiness, each under the id of its serve.
static SERVING: Mutex<Vec<(u64, Arc<dyn crate::transport::Transport>)>> = Mutex::new(Vec::new());

/// A transport served on, counted for readiness until dropped (when its serve ends).
pub(crate) struct Serving(u64);

impl Drop for Serving {
    fn drop(&mut self) {
        if let Ok(mut serving) = SERVING.lock() {
            serving.retain(|(id, _)| *id != self.0);
        }
    }
}

/// Counts `transport` as served on until the returned guard is dropped.
pub(crate) fn serving(transport: Arc<dyn crate::transport::Transport>) -> Serving {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut serving) = SERVING.lock() {
        serving.push((id, transport));
    }
    Serving(id)
}

/// What this process waits for before it is ready (a hard dependency not discoverable yet),
/// each under the id of its guard.
static WAITING: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());

/// A reason this process is not ready, for as long as it lives.
#[derive(Debug)]
pub struct Waiting(u64);

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Ok(mut waiting) = WAITING.lock() {
            waiting.retain(|(id, _)| *id != self.0);
        }
    }
}

/// Makes this process not ready, saying `why`, until the returned guard is dropped.
pub fn waiting(why: impl Into<String>) -> Waiting {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut waiting) = WAITING.lock() {
        waiting.push((id, why.into()));
    }
    Waiting(id)
}

/// Why this process is not ready: the transports it serves on whose connection is down, and
/// what it waits for ([`waiting`]); empty when it is ready. `/readyz` answers 503 with these.
pub fn not_ready() -> Vec<String> {
    let mut why: Vec<String> = not_connected()
        .into_iter()
        .map(|url| format!("{url} not connected"))
        .collect();
    if let Ok(waiting) = WAITING.lock() {
        why.extend(waiting.iter().map(|(_, w)| w.clone()));
    }
    why
}

/// The URLs (credentials removed) of the transports this process serves on whose connection
/// is down now: empty when it is ready. `/readyz` answers 503 naming them otherwise.
pub fn not_connected() -> Vec<String> {
    let Ok(serving) = SERVING.lock() else {
        return Vec::new();
    };
    let mut down: Vec<String> = serving
        .iter()
        .filter(|(_, t)| !t.connected())
        .map(|(_, t)| t.url())
        .collect();
    down.sort();
    down.dedup();
    down
}

/// Whether metrics are being recorded.
pub(crate) fn enabled() -> bool {
    PROMETHEUS.get().is_some()
}

/// One in this many calls made in process has its latency measured, counted this many times
/// in the histogram (its count and sum stay estimates of all such calls; the calls themselves
/// are all counted, in `switchyard_calls_total`). A latency is two precise clock reads, which
/// cost more than the rest of an in-process call's metrics together; calls over a transport,
/// which take microseconds, are all measured.
pub(crate) const LOCAL_LATENCY_SAMPLE: u64 = 16;

/// Whether the latency of an in-process call starting now is measured (metrics installed,
/// and the call in the sample, see [`sample_local_latency`]): then its stopwatch, started, and
/// the number of calls it stands for.
#[inline]
pub(crate) fn local_latency_sample() -> Option<(Stopwatch, u64)> {
    (enabled() && sample_local_latency()).then(|| (Stopwatch::start(), LOCAL_LATENCY_SAMPLE))
}

thread_local! {
    /// In-process calls this thread makes before its next measured one.
    static UNTIL_SAMPLED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether the latency of the in-process call starting now is measured: a countdown per
/// thread (a random draw on every call cost more than the rest of the choice), restarted
/// after each measured call at a length drawn at random (uniform over 0 to twice the sample
/// less two, so one call in [`LOCAL_LATENCY_SAMPLE`] on average), so that no period in the
/// calls lines up with the sample.
#[inline]
pub(crate) fn sample_local_latency() -> bool {
    UNTIL_SAMPLED.with(|left| match left.get() {
        0 => {
            left.set(fastrand::u32(..=2 * LOCAL_LATENCY_SAMPLE as u32 - 2));
            true
        }
        n => {
            left.set(n - 1);
            false
        }
    })
}

/// What a call's outcome is counted as.
fn outcome(result: Result<(), &HandlerError>) -> usize {
    match result {
        Ok(()) => 0,
        Err(e) if e.code() == ErrorCode::DeadlineExceeded => 3,
        Err(e) if e.code().http_status() < 500 => 1,
        Err(_) => 2,
    }
}

const OUTCOMES: [&str; 4] = ["ok", "client_error", "server_error", "timeout"];

/// One route's handles.
pub(crate) struct RouteMetrics {
    /// By outcome, as [`OUTCOMES`] names them.
    calls: Arc<Tally>,
    seconds: Arc<Latency>,
}

impl RouteMetrics {
    fn new(service: &str, route: &str) -> Self {
        Self {
            calls: counters(
                "switchyard_calls_total",
                &[("service", service), ("route", route)],
                "outcome",
                &OUTCOMES,
            ),
            seconds: latency(
                "switchyard_call_duration_seconds",
                &[("service", service), ("route", route)],
            ),
        }
    }

    /// Records a call that started at `started`.
    pub(crate) fn record(&self, started: Instant, result: Result<(), &HandlerError>) {
        self.record_timed(Some((started.elapsed(), 1)), result);
    }

    /// Records a call, with its latency when it was measured: `took`, counted `weight` times
    /// (see [`LOCAL_LATENCY_SAMPLE`]).
    #[inline]
    fn record_timed(&self, took: Option<(Duration, u64)>, result: Result<(), &HandlerError>) {
        self.calls.add(outcome(result), 1);
        if let Some((took, weight)) = took {
            self.seconds.record_many(took, weight);
        }
    }
}

/// One topic's handles.
pub(crate) struct TopicMetrics {
    events: [Counter; 3],
    seconds: Arc<Latency>,
}

/// What an event's delivery came to.
#[derive(Clone, Copy)]
pub(crate) enum EventOutcome {
    Done = 0,
    Retry = 1,
    Failed = 2,
}

impl TopicMetrics {
    fn new(service: &str, topic: &str) -> Self {
        Self {
            events: ["done", "retry", "failed"].map(|o| {
                counter!("switchyard_events_total", "service" => service.to_string(), "topic" => topic.to_string(), "outcome" => o)
            }),
            seconds: latency(
                "switchyard_event_duration_seconds",
                &[("service", service), ("topic", topic)],
            ),
        }
    }

    pub(crate) fn record(&self, started: Instant, outcome: EventOutcome) {
        self.events[outcome as usize].increment(1);
        self.seconds.record(started.elapsed());
    }
}

/// A served service's handles: per route (each route keeps its own, see
/// [`Route`](crate::handler::Route)), per topic, and calls in flight.
pub(crate) struct ServedMetrics {
    service: Arc<crate::service::Service>,
    unknown: RouteMetrics,
    topics: FxHashMap<String, TopicMetrics>,
    pub(crate) in_flight: Arc<Tally>,
}

impl ServedMetrics {
    /// Handles for `service`'s routes and topics, or `None` when nothing is recorded. Each
    /// route keeps its handles itself, for calls that find them with the route.
    pub(crate) fn new(service: &Arc<crate::service::Service>) -> Option<Self> {
        if !enabled() {
            return None;
        }
        let name = service.name();
        for (path, route) in service.routes() {
            route
                .metrics
                .get_or_init(|| Arc::new(RouteMetrics::new(name, path)));
        }
        Some(Self {
            service: service.clone(),
            unknown: RouteMetrics::new(name, "<unknown>"),
            topics: service
                .topics()
                .into_iter()
                .map(|t| (t.to_string(), TopicMetrics::new(name, t)))
                .collect(),
            in_flight: int_gauge("switchyard_calls_in_flight", &[("service", name)]),
        })
    }

    /// The handles of the route at `path` (the unknown route's when the service has none).
    pub(crate) fn route(&self, path: &str) -> &RouteMetrics {
        self.service
            .route_at(path)
            .and_then(|route| route.metrics.get())
            .map_or(&self.unknown, |handles| handles)
    }

    pub(crate) fn topic(&self, topic: &str) -> Option<&TopicMetrics> {
        self.topics.get(topic)
    }
}

/// A client's handles, for its destination.
pub(crate) struct ClientMetrics {
    /// Count 0 the calls that succeeded, 1 those that failed.
    calls: Arc<Tally>,
    pub(crate) retries: Counter,
    pub(crate) budget_exhausted: Counter,
    pub(crate) refused: Counter,
    pub(crate) breaker: Gauge,
}

impl ClientMetrics {
    pub(crate) fn new(destination: &str) -> Self {
        let d = || destination.to_string();
        Self {
            calls: counters(
                "switchyard_client_calls_total",
                &[("destination", destination)],
                "outcome",
                &["ok", "error"],
            ),
            retries: counter!("switchyard_client_retries_total", "destination" => d()),
            budget_exhausted: counter!("switchyard_client_retry_budget_exhausted_total", "destination" => d()),
            refused: counter!("switchyard_client_breaker_refused_total", "destination" => d()),
            breaker: gauge!("switchyard_client_breaker_state", "destination" => d()),
        }
    }

    #[inline]
    pub(crate) fn call(&self, ok: bool) {
        self.calls.add(usize::from(!ok), 1);
    }
}

/// Counts a dead letter of `topic`.
pub(crate) fn dead_letter(topic: &str) {
    if enabled() {
        counter!("switchyard_dead_letters_total", "topic" => topic.to_string()).increment(1);
    }
}

/// A call being counted: in flight from its start (or, answered in its caller's task, from
/// when it first waits), then counted by its outcome with its latency (when measured), or as a
/// timeout when it is dropped before it ends (its caller gave up). Held beside the call's
/// future, or inside it ([`Measured`]).
pub(crate) struct Counting<'a> {
    metrics: &'a ServedMetrics,
    /// `None` until the route is found (as an unknown route's call when it is not).
    route: Option<&'a RouteMetrics>,
    // When it started and how many calls its latency stands for; `None` when its latency is
    // not measured (an in-process call outside the sample).
    timed: Option<(Stopwatch, u64)>,
    /// Whether it is counted in flight. Atomic only to be shared with the future that waits
    /// (a plain load and store, never contended).
    in_flight: AtomicBool,
}

impl<'a> Counting<'a> {
    /// A call of `route` starts, in flight at once (see [`Counting`]).
    pub(crate) fn start(
        metrics: &'a ServedMetrics,
        route: &str,
        timed: Option<(Stopwatch, u64)>,
    ) -> Self {
        let mut counting = Self::start_unrouted(metrics, timed);
        counting.route = Some(metrics.route(route));
        counting.waits();
        counting
    }

    /// A call answered in its caller's task starts: its route is not looked up yet
    /// ([`Counting::route_found`] says it), and it is in flight only once it waits
    /// ([`Counting::waits`]). A call that ends in the poll it starts in (most calls in process)
    /// is over before anything could read the gauge: it spares the gauge's two updates.
    pub(crate) fn start_unrouted(
        metrics: &'a ServedMetrics,
        timed: Option<(Stopwatch, u64)>,
    ) -> Self {
        Self {
            metrics,
            route: None,
            timed,
            in_flight: AtomicBool::new(false),
        }
    }

    /// The call's route, found: counted under its handles (made when it was served).
    #[inline]
    pub(crate) fn route_found(&mut self, route: &'a crate::handler::Route) {
        self.route = route.metrics.get().map(|handles| &**handles);
    }

    /// The call waits (or is to be counted in flight from now on).
    #[inline]
    pub(crate) fn waits(&self) {
        if !self.in_flight.load(Ordering::Relaxed) {
            self.in_flight.store(true, Ordering::Relaxed);
            self.metrics.in_flight.add(0, 1);
        }
    }

    /// The call ended with `result`.
    #[inline]
    pub(crate) fn finish(self, result: Result<(), &HandlerError>) {
        self.count(result);
        // Counted: nothing left for `drop` to count (a `Counting` owns nothing to free).
        std::mem::forget(self);
    }

    #[inline]
    fn count(&self, result: Result<(), &HandlerError>) {
        if self.in_flight.load(Ordering::Relaxed) {
            self.metrics.in_flight.add(0, u64::MAX);
        }
        self.route
            .unwrap_or(&self.metrics.unknown)
            .record_timed(self.timed.map(|(watch, n)| (watch.elapsed(), n)), result);
    }
}

pin_project_lite::pin_project! {
    /// A call answered in its caller's task, counted in flight by `counting` once it waits.
    pub(crate) struct CountedWait<'c, 'a, F> {
        #[pin]
        inner: F,
        counting: &'c Counting<'a>,
    }
}

impl<'c, 'a, F> CountedWait<'c, 'a, F> {
    pub(crate) fn new(counting: &'c Counting<'a>, inner: F) -> Self {
        Self { inner, counting }
    }
}

impl<F: std::future::Future> std::future::Future for CountedWait<'_, '_, F> {
    type Output = F::Output;

    #[inline]
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        let polled = this.inner.poll(cx);
        if polled.is_pending() {
            this.counting.waits();
        }
        polled
    }
}

impl Drop for Counting<'_> {
    /// Dropped before it was finished: its caller gave up.
    fn drop(&mut self) {
        let gone = HandlerError::new(ErrorCode::DeadlineExceeded, "the caller left");
        self.count(Err(&gone));
    }
}

pin_project_lite::pin_project! {
    /// A served call, measured (see [`Counting`]).
    pub(crate) struct Measured<'a, F> {
        #[pin]
        inner: F,
        counting: Option<Counting<'a>>,
    }
}

impl<'a, F> Measured<'a, F> {
    /// `inner`, a call of `route` that started at `started`, measured.
    pub(crate) fn new(
        metrics: &'a ServedMetrics,
        route: &str,
        started: Stopwatch,
        inner: F,
    ) -> Self {
        Self::sampled(metrics, route, Some((started, 1)), inner)
    }

    /// `inner`, a call of `route`, counted; its latency measured when `timed` says when it
    /// started and how many calls it stands for.
    pub(crate) fn sampled(
        metrics: &'a ServedMetrics,
        route: &str,
        timed: Option<(Stopwatch, u64)>,
        inner: F,
    ) -> Self {
        Self {
            inner,
            counting: Some(Counting::start(metrics, route, timed)),
        }
    }
}

impl<T, F: std::future::Future<Output = Result<T, HandlerError>>> std::future::Future
    for Measured<'_, F>
{
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        let outcome = std::task::ready!(this.inner.poll(cx));
        if let Some(counting) = this.counting.take() {
            counting.finish(outcome.as_ref().map(|_| ()));
        }
        std::task::Poll::Ready(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_in_process_call_in_the_sample_size_is_measured_with_no_period() {
        let calls = 32_000;
        let mut gaps = Vec::new();
        let mut since = 0u64;
        for _ in 0..calls {
            since += 1;
            if sample_local_latency() {
                gaps.push(since);
                since = 0;
            }
        }
        // Gaps drawn uniformly from 1 to 31: 2,000 measured, with a deviation of about 25.
        let measured = gaps.len() as f64;
        let expected = calls as f64 / LOCAL_LATENCY_SAMPLE as f64;
        assert!((measured - expected).abs() < 200.0, "{measured} measured");
        assert!(gaps
            .iter()
            .all(|g| (1..2 * LOCAL_LATENCY_SAMPLE).contains(g)));
        let lengths: std::collections::HashSet<_> = gaps.iter().collect();
        assert!(lengths.len() > 20, "gap lengths {lengths:?}");
    }

    #[test]
    fn a_tally_sums_every_threads_counts_including_threads_that_ended() {
        let tally = Arc::new(Tally::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let tally = tally.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        tally.add(usize::from(i % 2 == 0), 1);
                        // In and out again, on this thread: a gauge nets to zero.
                        tally.add(3, 1);
                        tally.add(3, u64::MAX);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        // Every thread has ended: their counts stay, and a new thread goes on from one.
        std::thread::spawn({
            let tally = tally.clone();
            move || tally.add(0, 5)
        })
        .join()
        .expect("thread");
        assert_eq!(tally.sum(0), 40_005);
        assert_eq!(tally.sum(1), 40_000);
        assert_eq!(tally.sum(3), 0);
        // Into one thread, out of another: the sum is the calls still in.
        tally.add(2, 1);
        std::thread::spawn({
            let tally = tally.clone();
            move || {
                tally.add(2, u64::MAX);
                tally.add(2, u64::MAX);
            }
        })
        .join()
        .expect("thread");
        assert_eq!(tally.sum(2) as i64, -1);
    }

    #[test]
    fn a_latency_histogram_is_written_cumulative_with_escaped_labels() {
        let h = latency(
            "test_render_seconds",
            &[("service", "a\"b"), ("route", "/x")],
        );
        h.record(Duration::from_micros(50));
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(20));
        let again = latency(
            "test_render_seconds",
            &[("service", "a\"b"), ("route", "/x")],
        );
        assert!(Arc::ptr_eq(&h, &again), "one series per labels");
        let mut out = String::new();
        render_own(&mut out);
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("test_render_seconds"))
            .collect();
        let labels = r#"service="a\"b",route="/x""#;
        assert_eq!(lines[0], "# TYPE test_render_seconds histogram");
        assert!(
            lines.contains(
                &format!(r#"test_render_seconds_bucket{{{labels},le="0.0001"}} 1"#).as_str()
            ),
            "{out}"
        );
        assert!(
            lines.contains(
                &format!(r#"test_render_seconds_bucket{{{labels},le="0.0025"}} 1"#).as_str()
            ),
            "{out}"
        );
        assert!(
            lines.contains(
                &format!(r#"test_render_seconds_bucket{{{labels},le="0.005"}} 2"#).as_str()
            ),
            "{out}"
        );
        assert!(
            lines
                .contains(&format!(r#"test_render_seconds_bucket{{{labels},le="10"}} 2"#).as_str()),
            "{out}"
        );
        assert!(
            lines.contains(
                &format!(r#"test_render_seconds_bucket{{{labels},le="+Inf"}} 3"#).as_str()
            ),
            "{out}"
        );
        assert!(
            lines.contains(&format!("test_render_seconds_count{{{labels}}} 3").as_str()),
            "{out}"
        );
        assert!(
            lines.contains(&format!("test_render_seconds_sum{{{labels}}} 20.00305").as_str()),
            "{out}"
        );
    }
}
