//! Tracing: the W3C trace context (`traceparent`, `tracestate`, `baggage`) passed on from a
//! handler to the calls and events it sends, and, once tracing is on ([`enable`]), an
//! OpenTelemetry span for every hop, named and described as the OpenTelemetry semantic
//! conventions for RPC and messaging say:
//!
//! | hop | kind | name | made in |
//! |---|---|---|---|
//! | a call sent | client | `service/route` | `Client::send` |
//! | a call answered | server | `service/route` | [`Trace`], first in the routed call stack |
//! | an event published | producer | `send topic` | `Client::publish_envelope` |
//! | an event handled (each attempt) | consumer | `process topic` | `Service::handle_event` |
//! | a dead letter | producer | `send topic.dlq`, linked to the message it stands for | the dead-letter layer |
//!
//! A span's context replaces the `traceparent` it was started under, so the next hop is its
//! child, and a trace starts at the first hop when none came in. Spans go to OpenTelemetry's
//! global tracer provider: whatever exporter the application installed (the facade's
//! `observe::otlp` installs OTLP from the standard `OTEL_*` variables). Off (the default),
//! each hop pays one atomic load and the context is passed on as before, a child `traceparent`
//! per outgoing call.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context as TaskContext, Poll};

use opentelemetry::global::{self, BoxedSpan, BoxedTracer};
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::KeyValue;
use tower::Layer;

use super::routed::{call_ready, CallInner, Routed};
use crate::context::{trace, Context};
use crate::error::{CallError, HandlerError};
use crate::message::{header, Envelope, Headers};
use crate::values::Reply;

/// The W3C baggage header, passed on untouched like `tracestate`.
pub const BAGGAGE: &str = "baggage";

static ON: AtomicBool = AtomicBool::new(false);

/// The tracer spans are made with, taken from the global provider when tracing is enabled:
/// asking the provider for one costs a lock, a scope and two boxes, once per span otherwise.
static TRACER: RwLock<Option<Arc<BoxedTracer>>> = RwLock::new(None);

/// Turns span recording on: from now on every hop makes a span through the tracer provider
/// installed globally now (`opentelemetry::global::set_tracer_provider`; without one, spans
/// are made and dropped). Call it again after installing another provider.
pub fn enable() {
    let tracer = Arc::new(global::tracer("switchyard"));
    if let Ok(mut slot) = TRACER.write() {
        *slot = Some(tracer);
    }
    ON.store(true, Ordering::Release);
}

/// Turns span recording off again (the trace context is still passed on).
pub fn disable() {
    ON.store(false, Ordering::Release);
}

/// Whether spans are being made.
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

fn tracer() -> Arc<BoxedTracer> {
    match TRACER.read().ok().and_then(|t| t.clone()) {
        Some(tracer) => tracer,
        None => Arc::new(global::tracer("switchyard")),
    }
}

/// Writes into `headers` the trace context a call or event sent inside `parent` carries. With
/// spans on, the parent's own `traceparent` (the span the send makes is its child); off, a
/// child `traceparent` made here.
pub(crate) fn propagate(parent: &Context, headers: &mut Headers) {
    if let Some(tp) = parent.traceparent() {
        if enabled() {
            headers.insert(header::TRACEPARENT, tp);
        } else {
            headers.insert(header::TRACEPARENT, trace::child_traceparent(Some(tp)));
        }
    }
    for name in [header::TRACESTATE, BAGGAGE] {
        if let Some(v) = parent.headers.get(name) {
            headers.insert(name, v);
        }
    }
}

/// The remote span context named by `headers`, if they carry a valid `traceparent`.
fn remote_parent(headers: &Headers) -> Option<SpanContext> {
    let tp = headers.get(header::TRACEPARENT)?;
    let mut parts = tp.split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || trace_id.len() != 32 || span_id.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let state = headers
        .get(header::TRACESTATE)
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    let context = SpanContext::new(trace_id, span_id, TraceFlags::new(flags), true, state);
    context.is_valid().then_some(context)
}

/// `00-<trace id>-<span id>-<flags>`, written out by hand: through `format!` and `LowerHex`
/// it cost more than the rest of starting a span with the no-op provider.
fn traceparent(context: &SpanContext) -> String {
    fn hex(out: &mut String, bytes: &[u8]) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for b in bytes {
            out.push(char::from(DIGITS[usize::from(b >> 4)]));
            out.push(char::from(DIGITS[usize::from(b & 0xf)]));
        }
    }
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    hex(&mut out, &context.trace_id().to_bytes());
    out.push('-');
    hex(&mut out, &context.span_id().to_bytes());
    out.push('-');
    hex(&mut out, &[context.trace_flags().to_u8()]);
    out
}

/// A span of one hop; ended (and its status set) by [`HopSpan::end`] or when dropped.
pub(crate) struct HopSpan(BoxedSpan);

impl HopSpan {
    /// Starts a span under the context `headers` carry (a new trace when they carry none)
    /// and writes the span's own context into them for the next hop.
    fn start(
        name: String,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
        links: Vec<Link>,
        headers: &mut Headers,
    ) -> Self {
        let span = Self::under(name, kind, attributes, links, headers);
        let own = span.0.span_context();
        if own.is_valid() {
            headers.insert(header::TRACEPARENT, traceparent(own));
        }
        span
    }

    /// Starts a span under the context `headers` carry, leaving them as they are: for a step
    /// no hop follows (receiving, settling).
    fn under(
        name: String,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
        links: Vec<Link>,
        headers: &Headers,
    ) -> Self {
        let parent = match remote_parent(headers) {
            Some(remote) => opentelemetry::Context::new().with_remote_span_context(remote),
            None => opentelemetry::Context::new(),
        };
        let tracer = tracer();
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .with_links(links)
            .start_with_context(tracer.as_ref(), &parent);
        Self(span)
    }

    /// Records an event on the span (a retry, a settlement).
    pub(crate) fn event(&mut self, name: &'static str, attributes: Vec<KeyValue>) {
        self.0.add_event(name, attributes);
    }

    /// Ends the span with `error` as its status, if any.
    pub(crate) fn end(mut self, error: Option<(String, String)>) {
        if let Some((kind, message)) = error {
            self.0.set_attribute(KeyValue::new("error.type", kind));
            self.0.set_status(Status::error(message));
        }
        self.0.end();
    }
}

/// The span of a call sent to `service`'s `route` (kind client), when spans are on.
#[inline]
pub(crate) fn client_call(
    service: Option<&str>,
    route: &str,
    headers: &mut Headers,
) -> Option<HopSpan> {
    if enabled() {
        Some(start_client_call(service, route, headers))
    } else {
        None
    }
}

/// Ends a call's client span with the call's outcome.
#[inline(never)]
pub(crate) fn end_call(span: HopSpan, outcome: &Result<Reply, CallError>) {
    span.end(call_error(outcome));
}

#[inline(never)]
fn start_client_call(service: Option<&str>, route: &str, headers: &mut Headers) -> HopSpan {
    let mut attributes = vec![
        KeyValue::new("rpc.system", "switchyard"),
        KeyValue::new("rpc.method", route.to_string()),
    ];
    if let Some(s) = service {
        attributes.push(KeyValue::new("rpc.service", s.to_string()));
    }
    HopSpan::start(
        rpc_name(service, route),
        SpanKind::Client,
        attributes,
        Vec::new(),
        headers,
    )
}

fn rpc_name(service: Option<&str>, route: &str) -> String {
    match service {
        Some(s) => format!(
            "{s}{}{route}",
            if route.starts_with('/') { "" } else { "/" }
        ),
        None => route.to_string(),
    }
}

/// The span of an event published on `topic` (kind producer), when spans are on.
pub(crate) fn publish(topic: &str, id: &str, headers: &mut Headers) -> Option<HopSpan> {
    enabled().then(|| {
        HopSpan::start(
            format!("send {topic}"),
            SpanKind::Producer,
            messaging("send", topic, id),
            Vec::new(),
            headers,
        )
    })
}

/// The span of one attempt at handling an event of `topic` in `service` (kind consumer), when
/// spans are on.
pub(crate) fn process(
    service: &str,
    topic: &str,
    id: &str,
    headers: &mut Headers,
) -> Option<HopSpan> {
    if !enabled() {
        return None;
    }
    let mut attributes = messaging("process", topic, id);
    attributes.push(KeyValue::new(
        "messaging.consumer.group.name",
        service.to_string(),
    ));
    attributes.push(KeyValue::new(
        "messaging.delivery.attempt",
        i64::from(headers.attempt()),
    ));
    Some(HopSpan::start(
        format!("process {topic}"),
        SpanKind::Consumer,
        attributes,
        Vec::new(),
        headers,
    ))
}

/// The span of a delivery of `envelope` taken by a consumer (kind consumer), when spans are
/// on: from the moment it came off the subscription to the start of its handling (time
/// spent waiting for a worker, or behind its key). Under the message's own context, beside
/// its process and settle spans.
pub(crate) fn receive(envelope: &Envelope) -> Option<HopSpan> {
    enabled().then(|| {
        let mut attributes = messaging("receive", &envelope.subject, &envelope.id);
        attributes.push(KeyValue::new(
            "messaging.delivery.attempt",
            i64::from(envelope.headers.attempt()),
        ));
        HopSpan::under(
            format!("receive {}", envelope.subject),
            SpanKind::Consumer,
            attributes,
            Vec::new(),
            &envelope.headers,
        )
    })
}

/// The span of settling a delivery of `envelope` with the broker (kind client), when spans
/// are on: `operation` is `ack` or `nack`.
pub(crate) fn settle(operation: &'static str, envelope: &Envelope) -> Option<HopSpan> {
    enabled().then(|| {
        let mut attributes = messaging("settle", &envelope.subject, &envelope.id);
        attributes.push(KeyValue::new("messaging.operation.name", operation));
        HopSpan::under(
            format!("{operation} {}", envelope.subject),
            SpanKind::Client,
            attributes,
            Vec::new(),
            &envelope.headers,
        )
    })
}

/// The span of a dead letter published on `topic` (kind producer), when spans are on: its
/// `headers` are the original message's, so the span is in the original's trace and linked to
/// it.
pub(crate) fn dead_letter(topic: &str, id: &str, headers: &mut Headers) -> Option<HopSpan> {
    if !enabled() {
        return None;
    }
    let links = remote_parent(headers)
        .map(|original| vec![Link::with_context(original)])
        .unwrap_or_default();
    Some(HopSpan::start(
        format!("send {topic}"),
        SpanKind::Producer,
        messaging("send", topic, id),
        links,
        headers,
    ))
}

fn messaging(operation: &'static str, topic: &str, id: &str) -> Vec<KeyValue> {
    vec![
        KeyValue::new("messaging.operation.type", operation),
        KeyValue::new("messaging.destination.name", topic.to_string()),
        KeyValue::new("messaging.message.id", id.to_string()),
    ]
}

/// Makes the server span of a routed call, when spans are on: first in the call stack, so the
/// token check, the deadline and the handler are all inside it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Trace<S> {
    inner: S,
}

/// Layer of [`Trace`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TraceLayer;

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Trace<S> {
        Trace { inner }
    }
}

impl<'a, 'c, S: CallInner<'a, 'c>> tower::Service<Routed<'a, 'c>> for Trace<S> {
    type Response = Reply;
    type Error = HandlerError;
    type Future = Traced<S::Future>;

    call_ready!();

    fn call(&mut self, mut call: Routed<'a, 'c>) -> Self::Future {
        // Put in the stack only when spans are on (`routed::traced_stack`).
        let span = Some({
            HopSpan::start(
                rpc_name(Some(call.service), call.path),
                SpanKind::Server,
                vec![
                    KeyValue::new("rpc.system", "switchyard"),
                    KeyValue::new("rpc.service", call.service.to_string()),
                    KeyValue::new("rpc.method", call.path.to_string()),
                ],
                Vec::new(),
                &mut call.context.headers,
            )
        });
        Traced {
            inner: self.inner.call(call),
            span,
        }
    }
}

pin_project_lite::pin_project! {
    /// A call's future, its span ended with its outcome.
    pub(crate) struct Traced<F> {
        #[pin]
        inner: F,
        span: Option<HopSpan>,
    }
}

impl<F: Future<Output = Result<Reply, HandlerError>>> Future for Traced<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = std::task::ready!(this.inner.poll(cx));
        if let Some(span) = this.span.take() {
            span.end(handler_error(&outcome));
        }
        Poll::Ready(outcome)
    }
}

/// What a span records of a handler's failure: its code as the error type, and its message.
pub(crate) fn handler_error<T>(outcome: &Result<T, HandlerError>) -> Option<(String, String)> {
    outcome
        .as_ref()
        .err()
        .map(|e| (e.code().to_string(), e.message().to_string()))
}

/// What a span records of a failed call: the remote error's code, or what kept the call from
/// being answered, as the error type; and the error's text.
pub(crate) fn call_error<T>(outcome: &Result<T, CallError>) -> Option<(String, String)> {
    let e = outcome.as_ref().err()?;
    let kind = match e {
        CallError::Remote { error, .. } => return Some((error.code.to_string(), e.to_string())),
        CallError::Timeout { .. } => "timeout",
        CallError::Unreachable { .. } => "unreachable",
        CallError::CircuitOpen { .. } => "circuit_open",
        CallError::NoInstance { .. } => "no_instance",
        CallError::NoVersion { .. } => "no_version",
        CallError::Limited { .. } => "limited",
        CallError::Decode { .. } => "decode",
        CallError::Encode { .. } => "encode",
        CallError::NoService { .. } => "no_service",
        _ => "transport",
    };
    Some((kind.to_string(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_reads_and_writes_back_the_same() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = Headers::new();
        headers.insert(header::TRACEPARENT, tp);
        headers.insert(header::TRACESTATE, "congo=t61rcWkgMzE");
        let context = remote_parent(&headers).expect("valid");
        assert!(context.is_remote());
        assert_eq!(context.trace_state().header(), "congo=t61rcWkgMzE");
        assert_eq!(traceparent(&context), tp);
    }

    #[test]
    fn an_invalid_traceparent_names_no_parent() {
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        ] {
            let mut headers = Headers::new();
            headers.insert(header::TRACEPARENT, bad);
            assert!(remote_parent(&headers).is_none(), "{bad}");
        }
    }
}
