//! Metrics in Prometheus' format: what every served service, consumer and client counts.
//!
//! Nothing is measured until [`install_prometheus`] is called (`yard --metrics ADDR` does):
//! then calls are counted by service, route and outcome with their latency, events by topic
//! and outcome, dead letters by topic, client calls, retries and the breaker's state by
//! destination. Labels come from the service's own routes and topics and the names callers
//! give their destinations, never from a message's content: a call of a route the service does
//! not have is counted under `route="<unknown>"`. The handles are made once per route and
//! topic when a service is served, so that measuring costs a call a few atomic operations and
//! two clock reads, and costs nothing when nothing is installed.
//!
//! Latency histograms and the calls in flight are kept here ([`Latency`], an `AtomicI64`) and
//! written into the exporter's text at each scrape; counters and the other gauges go through
//! the `metrics` facade. The exporter's histogram keeps every sample, timestamped, until its
//! upkeep folds it into buckets (a clock read and an epoch-guarded push per call), and its
//! gauges are `f64`s updated by compare-and-swap: together they cost an in-process call about
//! 50 ns more than two atomic adds into fixed buckets, as Prometheus' own client libraries
//! record.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ::metrics::{counter, gauge, Counter, Gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rustc_hash::FxHashMap;

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

/// A series kept here rather than in the exporter (see the module's notes).
enum Own {
    Latency(Arc<Latency>),
    Gauge(Arc<AtomicI64>),
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
        Own::Gauge(_) => None,
    })
}

/// An integer gauge `name` with `pairs` as its labels, kept for scrapes.
fn int_gauge(name: &'static str, pairs: &[(&str, &str)]) -> Arc<AtomicI64> {
    kept(name, pairs, Own::Gauge, |s| match s {
        Own::Gauge(g) => Some(g),
        Own::Latency(_) => None,
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
                    let _ = writeln!(out, "{name}{{{labels}}} {}", g.load(Ordering::Relaxed));
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

/// Whether the latency of the in-process call starting now is measured (drawn at random, so
/// that no period in the calls lines up with the sample).
#[inline]
pub(crate) fn sample_local_latency() -> bool {
    fastrand::u64(..LOCAL_LATENCY_SAMPLE) == 0
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
    calls: [Counter; 4],
    seconds: Arc<Latency>,
}

impl RouteMetrics {
    fn new(service: &str, route: &str) -> Self {
        Self {
            calls: OUTCOMES.map(|o| {
                counter!("switchyard_calls_total", "service" => service.to_string(), "route" => route.to_string(), "outcome" => o)
            }),
            seconds: latency(
                "switchyard_call_duration_seconds",
                &[("service", service), ("route", route)],
            ),
        }
    }

    /// Records a call that started at `started`.
    pub(crate) fn record(&self, started: Instant, result: Result<(), &HandlerError>) {
        self.record_timed(Some((started, 1)), result);
    }

    /// Records a call, with its latency when it was measured: since `started`, counted
    /// `weight` times (see [`LOCAL_LATENCY_SAMPLE`]).
    fn record_timed(&self, timed: Option<(Instant, u64)>, result: Result<(), &HandlerError>) {
        self.calls[outcome(result)].increment(1);
        if let Some((started, weight)) = timed {
            self.seconds.record_many(started.elapsed(), weight);
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

/// A served service's handles: per route, per topic, and calls in flight.
pub(crate) struct ServedMetrics {
    routes: FxHashMap<String, RouteMetrics>,
    unknown: RouteMetrics,
    topics: FxHashMap<String, TopicMetrics>,
    pub(crate) in_flight: Arc<AtomicI64>,
}

impl ServedMetrics {
    /// Handles for `service`'s routes and topics, or `None` when nothing is recorded.
    pub(crate) fn new(service: &crate::service::Service) -> Option<Self> {
        if !enabled() {
            return None;
        }
        let name = service.name();
        Some(Self {
            routes: service
                .route_paths()
                .into_iter()
                .map(|r| (r.to_string(), RouteMetrics::new(name, r)))
                .collect(),
            unknown: RouteMetrics::new(name, "<unknown>"),
            topics: service
                .topics()
                .into_iter()
                .map(|t| (t.to_string(), TopicMetrics::new(name, t)))
                .collect(),
            in_flight: int_gauge("switchyard_calls_in_flight", &[("service", name)]),
        })
    }

    pub(crate) fn route(&self, route: &str) -> &RouteMetrics {
        self.routes.get(route).unwrap_or(&self.unknown)
    }

    pub(crate) fn topic(&self, topic: &str) -> Option<&TopicMetrics> {
        self.topics.get(topic)
    }
}

/// A client's handles, for its destination.
pub(crate) struct ClientMetrics {
    calls: [Counter; 2],
    pub(crate) retries: Counter,
    pub(crate) budget_exhausted: Counter,
    pub(crate) refused: Counter,
    pub(crate) breaker: Gauge,
}

impl ClientMetrics {
    pub(crate) fn new(destination: &str) -> Self {
        let d = || destination.to_string();
        Self {
            calls: ["ok", "error"].map(
                |o| counter!("switchyard_client_calls_total", "destination" => d(), "outcome" => o),
            ),
            retries: counter!("switchyard_client_retries_total", "destination" => d()),
            budget_exhausted: counter!("switchyard_client_retry_budget_exhausted_total", "destination" => d()),
            refused: counter!("switchyard_client_breaker_refused_total", "destination" => d()),
            breaker: gauge!("switchyard_client_breaker_state", "destination" => d()),
        }
    }

    pub(crate) fn call(&self, ok: bool) {
        self.calls[usize::from(!ok)].increment(1);
    }
}

/// Counts a dead letter of `topic`.
pub(crate) fn dead_letter(topic: &str) {
    if enabled() {
        counter!("switchyard_dead_letters_total", "topic" => topic.to_string()).increment(1);
    }
}

/// A call being counted: in flight from its start, then counted by its outcome with its
/// latency (when measured), or as a timeout when it is dropped before it ends (its caller gave
/// up). Held beside the call's future, or inside it ([`Measured`]).
pub(crate) struct Counting<'a> {
    route: &'a RouteMetrics,
    in_flight: &'a AtomicI64,
    // When it started and how many calls its latency stands for; `None` when its latency is
    // not measured (an in-process call outside the sample).
    timed: Option<(Instant, u64)>,
    done: bool,
}

impl<'a> Counting<'a> {
    /// A call of `route` starts (see [`Counting`]).
    pub(crate) fn start(
        metrics: &'a ServedMetrics,
        route: &str,
        timed: Option<(Instant, u64)>,
    ) -> Self {
        metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            route: metrics.route(route),
            in_flight: &metrics.in_flight,
            timed,
            done: false,
        }
    }

    /// The call ended with `result`.
    pub(crate) fn finish(mut self, result: Result<(), &HandlerError>) {
        self.count(result);
    }

    fn count(&mut self, result: Result<(), &HandlerError>) {
        self.done = true;
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.route.record_timed(self.timed, result);
    }
}

impl Drop for Counting<'_> {
    fn drop(&mut self) {
        if !self.done {
            let gone = HandlerError::new(ErrorCode::DeadlineExceeded, "the caller left");
            self.count(Err(&gone));
        }
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
    pub(crate) fn new(metrics: &'a ServedMetrics, route: &str, started: Instant, inner: F) -> Self {
        Self::sampled(metrics, route, Some((started, 1)), inner)
    }

    /// `inner`, a call of `route`, counted; its latency measured when `timed` says when it
    /// started and how many calls it stands for.
    pub(crate) fn sampled(
        metrics: &'a ServedMetrics,
        route: &str,
        timed: Option<(Instant, u64)>,
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
