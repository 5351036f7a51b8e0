//! Deadline on the serving side: a call whose caller has already stopped waiting (it waited
//! in a queue, say) is answered `504` without running its handler, and a running handler is
//! stopped when the caller's deadline passes (`504`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use futures::future::{ready, Either, Ready};
use tower::Layer;

use super::routed::{call_ready, CallInner, Routed};
use crate::context::FirstPollOrTimeout;
use crate::error::{ErrorCode, HandlerError};
use crate::values::Reply;

/// Holds a call to its caller's deadline.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline<S> {
    inner: S,
}

/// Layer of [`Deadline`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

impl<'a, 'c, S: CallInner<'a, 'c>> tower::Service<Routed<'a, 'c>> for Deadline<S> {
    type Response = Reply;
    type Error = HandlerError;
    type Future = Either<Ready<Result<Reply, HandlerError>>, Bounded<'a, S::Future>>;

    call_ready!();

    fn call(&mut self, call: Routed<'a, 'c>) -> Self::Future {
        let remaining = match call.context.deadline {
            Some(deadline) if call.enforce_deadline => {
                Some(crate::clock::remaining_until(deadline))
            }
            _ => None,
        };
        let path = call.path;
        if remaining.is_some_and(|r| r.is_zero()) {
            return Either::Left(ready(Err(HandlerError::new(
                ErrorCode::DeadlineExceeded,
                format!("{path}: the caller's deadline passed before the call was handled"),
            ))));
        }
        Either::Right(Bounded {
            inner: FirstPollOrTimeout::new(remaining, self.inner.call(call)),
            path,
        })
    }
}

pin_project_lite::pin_project! {
    /// The handler's future, stopped with a `504` at the deadline.
    pub(crate) struct Bounded<'a, F> {
        #[pin]
        inner: FirstPollOrTimeout<F>,
        path: &'a str,
    }
}

impl<F: Future<Output = Result<Reply, HandlerError>>> Future for Bounded<'_, F> {
    type Output = Result<Reply, HandlerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        this.inner.poll(cx).map(|outcome| {
            outcome.unwrap_or_else(|| {
                Err(HandlerError::new(
                    ErrorCode::DeadlineExceeded,
                    format!("{} did not finish within the caller's deadline", this.path),
                ))
            })
        })
    }
}
