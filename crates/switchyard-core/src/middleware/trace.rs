//! Trace context, passed on: a call or an event sent from inside a handler continues the
//! handler's trace (a child W3C `traceparent`, the same `tracestate`); one sent from outside
//! any handler starts none here (the transport's first hop may).

use crate::context::{trace, Context};
use crate::message::{header, Headers};

/// Writes into `headers` the trace context a call or event sent inside `parent` carries.
pub(crate) fn propagate(parent: &Context, headers: &mut Headers) {
    if let Some(tp) = parent.traceparent() {
        headers.insert(header::TRACEPARENT, trace::child_traceparent(Some(tp)));
    }
    if let Some(ts) = parent.headers.get(header::TRACESTATE) {
        headers.insert(header::TRACESTATE, ts);
    }
}
