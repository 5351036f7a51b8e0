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

/// `f` of the context of the call being handled, borrowed (no copy of its headers); `None`
/// outside a handler.
#[inline]
pub(crate) fn with_current<R>(f: impl FnOnce(&Context) -> R) -> Option<R> {
    CURRENT.try_with(f).ok()
}

/// A future run with a context as its [`current`] one (see [`scope`]).
pub type Scoped<F> = tokio::task::futures::TaskLocalFuture<Context, F>;

/// Runs `fut` with `ctx` as its [`current`] context.
pub fn scope<F: Future>(ctx: Context, fut: F) -> Scoped<F> {
    CURRENT.scope(ctx, fut)
}

pin_project_lite::pin_project! {
    /// Awaits `fut` for at most `wait` (for ever when `None`); `None` on timeout. A future
    /// that is ready on its first poll (an in-process handler that never waits) is answered
    /// without arming a timer, which would cost more than the whole call.
    ///
    /// A struct rather than an `async fn`: an `async fn` keeps its argument and the pinned
    /// copy of it side by side, which made every call's future twice the handler's size and
    /// pushed a served call's boxed future past the allocator's small-size cache.
    pub(crate) struct FirstPollOrTimeout<F> {
        #[pin]
        fut: F,
        // Boxed, and only once the future has waited: a timer is 112 bytes, which every call's
        // future would otherwise carry (twice for a call in process) and copy as it is moved.
        timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
        wait: Option<Duration>,
    }
}

impl<F> FirstPollOrTimeout<F> {
    pub(crate) fn new(wait: Option<Duration>, fut: F) -> Self {
        Self {
            fut,
            timer: None,
            wait,
        }
    }
}

impl<F: Future> Future for FirstPollOrTimeout<F> {
    type Output = Option<F::Output>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Some(v));
        }
        let Some(wait) = *this.wait else {
            return Poll::Pending;
        };
        this.timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)))
            .as_mut()
            .poll(cx)
            .map(|()| None)
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
