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

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ::metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rustc_hash::FxHashMap;

use crate::error::{ErrorCode, HandlerError};

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets, in seconds: 100 µs to 10 s.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

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
        .set_buckets(&BUCKETS)
        .map_err(|e| ObserveError::Install(e.to_string()))?
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
    PROMETHEUS.get().map(PrometheusHandle::render)
}

/// Whether metrics are being recorded.
pub(crate) fn enabled() -> bool {
    PROMETHEUS.get().is_some()
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
    seconds: Histogram,
}

impl RouteMetrics {
    fn new(service: &str, route: &str) -> Self {
        Self {
            calls: OUTCOMES.map(|o| {
                counter!("switchyard_calls_total", "service" => service.to_string(), "route" => route.to_string(), "outcome" => o)
            }),
            seconds: histogram!("switchyard_call_duration_seconds", "service" => service.to_string(), "route" => route.to_string()),
        }
    }

    /// Records a call that started at `started`.
    pub(crate) fn record(&self, started: Instant, result: Result<(), &HandlerError>) {
        self.calls[outcome(result)].increment(1);
        self.seconds.record(started.elapsed().as_secs_f64());
    }
}

/// One topic's handles.
pub(crate) struct TopicMetrics {
    events: [Counter; 3],
    seconds: Histogram,
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
            seconds: histogram!("switchyard_event_duration_seconds", "service" => service.to_string(), "topic" => topic.to_string()),
        }
    }

    pub(crate) fn record(&self, started: Instant, outcome: EventOutcome) {
        self.events[outcome as usize].increment(1);
        self.seconds.record(started.elapsed().as_secs_f64());
    }
}

/// A served service's handles: per route, per topic, and calls in flight.
pub(crate) struct ServedMetrics {
    routes: FxHashMap<String, RouteMetrics>,
    unknown: RouteMetrics,
    topics: FxHashMap<String, TopicMetrics>,
    pub(crate) in_flight: Gauge,
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
            in_flight: gauge!("switchyard_calls_in_flight", "service" => name.to_string()),
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

pin_project_lite::pin_project! {
    /// A served call, measured: counted by outcome with its latency, and in flight meanwhile.
    /// A call dropped unfinished (its caller gave up) is counted as a timeout.
    pub(crate) struct Measured<'a, F> {
        #[pin]
        inner: F,
        route: &'a RouteMetrics,
        in_flight: &'a Gauge,
        started: Instant,
        done: bool,
    }

    impl<'a, F> PinnedDrop for Measured<'a, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.done {
                this.in_flight.decrement(1.0);
                let gone = HandlerError::new(ErrorCode::DeadlineExceeded, "the caller left");
                this.route.record(*this.started, Err(&gone));
            }
        }
    }
}

impl<'a, F> Measured<'a, F> {
    pub(crate) fn new(metrics: &'a ServedMetrics, route: &str, inner: F) -> Self {
        metrics.in_flight.increment(1.0);
        Self {
            inner,
            route: metrics.route(route),
            in_flight: &metrics.in_flight,
            started: Instant::now(),
            done: false,
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
        *this.done = true;
        this.in_flight.decrement(1.0);
        this.route
            .record(*this.started, outcome.as_ref().map(|_| ()));
        std::task::Poll::Ready(outcome)
    }
}
