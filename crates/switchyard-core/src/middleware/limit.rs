//! One check on every input, whichever transport brought it: an event the transport could not
//! read whole, or larger than the service accepts, is not handled (a broker takes what its raw
//! clients send, up to its own limit, far above the service's).

use std::convert::Infallible;

use futures::future::{ready, Either, Ready};
use tower::Layer;

use super::{always_ready, Disposition, Inner};
use crate::error::{ErrorCode, HandlerError};
use crate::message::Envelope;

/// The header by which the consumer tells this layer that the transport could not read the
/// message whole, and why. Set only by the consumer (see [`mark_unreadable`]): one that came
/// with the message is removed first.
pub const UNREADABLE: &str = "x-switchyard-unreadable";

/// Marks `envelope` as unreadable for `reason`, or clears any such mark it came with.
pub fn mark_unreadable(envelope: &mut Envelope, reason: Option<&str>) {
    envelope.headers.remove(UNREADABLE);
    if let Some(reason) = reason {
        envelope.headers.insert(UNREADABLE, reason);
    }
}

/// Dead-letters an event the transport could not read, or whose payload is over `limit`
/// bytes, instead of handling it.
#[derive(Clone, Debug)]
pub struct Limit<S> {
    inner: S,
    limit: usize,
}

/// Layer of [`Limit`].
#[derive(Clone, Copy, Debug)]
pub struct LimitLayer {
    limit: usize,
}

impl LimitLayer {
    /// Events above `limit` bytes of payload are refused.
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;
    fn layer(&self, inner: S) -> Limit<S> {
        Limit {
            inner,
            limit: self.limit,
        }
    }
}

impl<S: Inner> tower::Service<Envelope> for Limit<S> {
    type Response = Disposition;
    type Error = Infallible;
    type Future = Either<Ready<Result<Disposition, Infallible>>, S::Future>;

    always_ready!();

    fn call(&mut self, envelope: Envelope) -> Self::Future {
        let refuse = |cause| {
            Either::Left(ready(Ok(Disposition::DeadLetter {
                cause,
                attempts: envelope.headers.attempt(),
            })))
        };
        if let Some(reason) = envelope.headers.get(UNREADABLE) {
            return refuse(HandlerError::bad_request(format!(
                "unreadable message: {reason}"
            )));
        }
        let size = envelope.payload.len();
        if size > self.limit {
            return refuse(HandlerError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "payload of {size} bytes is over the limit of {} bytes",
                    self.limit
                ),
            ));
        }
        // Every layer here is always ready: no `poll_ready` of the inner one to wait for.
        Either::Right(self.inner.call(envelope))
    }
}
