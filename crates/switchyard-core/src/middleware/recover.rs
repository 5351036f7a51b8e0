//! Panic recovery: a handler that panics, while it is called or while it runs, fails its own
//! call with a `500` and a log line; the service and every other call go on.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use futures::future::{ready, CatchUnwind, Either, Ready};
use futures::FutureExt;
use tower::Layer;

use super::routed::{call_ready, CallInner, Routed};
use crate::error::HandlerError;
use crate::values::Reply;

/// Turns a panicking handler into a failed call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Recover<S> {
    inner: S,
}

/// Layer of [`Recover`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RecoverLayer;

impl<S> Layer<S> for RecoverLayer {
    type Service = Recover<S>;
    fn layer(&self, inner: S) -> Recover<S> {
        Recover { inner }
    }
}

impl<'a, 'c, S: CallInner<'a, 'c>> tower::Service<Routed<'a, 'c>> for Recover<S> {
    type Response = Reply;
    type Error = HandlerError;
    type Future = Either<Ready<Result<Reply, HandlerError>>, Recovering<'a, S::Future>>;

    call_ready!();

    #[inline]
    fn call(&mut self, call: Routed<'a, 'c>) -> Self::Future {
        let path = call.path;
        // A closure that panics before it returns its future fails this call only, like one
        // that panics while polled.
        match catch_unwind(AssertUnwindSafe(|| self.inner.call(call))) {
            Ok(running) => Either::Right(Recovering {
                inner: AssertUnwindSafe(running).catch_unwind(),
                path,
            }),
            Err(panic) => Either::Left(ready(Err(panic_error(path, panic)))),
        }
    }
}

pin_project_lite::pin_project! {
    /// The handler's future, a panic in it answered as a failed call.
    pub(crate) struct Recovering<'a, F> {
        #[pin]
        inner: CatchUnwind<AssertUnwindSafe<F>>,
        path: &'a str,
    }
}

impl<F: Future<Output = Result<Reply, HandlerError>>> Future for Recovering<'_, F> {
    type Output = Result<Reply, HandlerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        this.inner
            .poll(cx)
            .map(|outcome| outcome.unwrap_or_else(|panic| Err(panic_error(this.path, panic))))
    }
}

/// The error a panic in the handler of `what` (a route or a topic) becomes, logged.
pub(crate) fn panic_error(what: &str, panic: Box<dyn Any + Send>) -> HandlerError {
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    tracing::error!(target: "switchyard", %what, panic = %msg, "handler panicked");
    HandlerError::internal(format!("handler for {what} panicked: {msg}"))
}
