//! The context of a call: deadline and trace headers, visible to a handler through
//! [`current`] and passed on automatically by every client call made inside it.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::message::{header, Headers};

/// What a handler knows about the call it serves.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Context {
    /// When the caller stops waiting.
    pub deadline: Option<Instant>,
    /// The request's headers (trace context, version, …).
    pub headers: Headers,
}

impl Context {
    /// A context from received headers; the deadline is computed from the relative
    /// `x-deadline-ms` header.
    pub fn from_headers(headers: Headers) -> Self {
        let deadline = headers.deadline().map(|d| Instant::now() + d);
        Self { deadline, headers }
    }

    /// Time left before the deadline, if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The W3C `traceparent` of the call.
    pub fn traceparent(&self) -> Option<&str> {
        self.headers.get(header::TRACEPARENT)
    }
}

tokio::task_local! {
    static CURRENT: Context;
}

/// The context of the call being handled, if the current task is a handler.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// assert!(switchyard_core::context::current().is_none());
/// # }
/// ```
pub fn current() -> Option<Context> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `fut` with `ctx` as its [`current`] context.
pub async fn scope<F: Future>(ctx: Context, fut: F) -> F::Output {
    CURRENT.scope(ctx, fut).await
}

/// Awaits `fut` for at most `wait`; `None` on timeout. A future that is ready on its first
/// poll (an in-process handler that never waits) is answered without arming a timer, which
/// would cost more than the whole call.
pub(crate) async fn first_poll_or_timeout<F: std::future::Future>(
    wait: Duration,
    fut: F,
) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    match futures::poll!(fut.as_mut()) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => tokio::time::timeout(wait, fut).await.ok(),
    }
}

/// W3C trace context helpers.
pub mod trace {
    /// A `traceparent` for an outgoing call: the same trace as `parent` with a new span id,
    /// or a new trace when there is no (valid) parent.
    ///
    /// ```
    /// use switchyard_core::context::trace::child_traceparent;
    /// let root = child_traceparent(None);
    /// let child = child_traceparent(Some(&root));
    /// assert_eq!(&root[3..35], &child[3..35], "same trace id");
    /// assert_ne!(&root[36..52], &child[36..52], "new span id");
    /// ```
    pub fn child_traceparent(parent: Option<&str>) -> String {
        let fresh = uuid::Uuid::new_v4().simple().to_string();
        let span = &fresh[..16];
        match parent.and_then(parse) {
            Some((trace_id, flags)) => format!("00-{trace_id}-{span}-{flags}"),
            None => {
                let trace = uuid::Uuid::new_v4().simple().to_string();
                format!("00-{trace}-{span}-01")
            }
        }
    }

    fn parse(tp: &str) -> Option<(&str, &str)> {
        let mut parts = tp.split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        (hex(version, 2) && hex(trace, 32) && hex(span, 16) && hex(flags, 2))
            .then_some((trace, flags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn handlers_see_their_context() {
        let mut h = Headers::new();
        h.set_deadline(Duration::from_secs(5));
        let ctx = Context::from_headers(h);
        let seen = scope(ctx, async { current().and_then(|c| c.remaining()) }).await;
        let left = seen.expect("context inside scope");
        assert!(left <= Duration::from_secs(5) && left > Duration::from_secs(4));
        assert!(current().is_none());
    }

    #[test]
    fn malformed_traceparent_starts_a_new_trace() {
        let tp = trace::child_traceparent(Some("garbage"));
        assert_eq!(tp.len(), 55);
        assert!(tp.starts_with("00-"));
    }
}
