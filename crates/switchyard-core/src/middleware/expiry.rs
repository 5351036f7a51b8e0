//! Expiry: an event past the time its sender gave it ([`Envelope::with_ttl`]) is not handled
//! but dead-lettered, with how late it was, whatever transport kept it waiting.

use std::convert::Infallible;
use std::time::SystemTime;

use futures::future::{ready, Either, Ready};
use tower::Layer;

use super::{always_ready, Disposition, Inner};
use crate::error::{ErrorCode, HandlerError};
use crate::message::{header, Envelope};

/// Dead-letters an expired event instead of handling it.
#[derive(Clone, Debug)]
pub struct Expiry<S> {
    inner: S,
}

/// Layer of [`Expiry`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ExpiryLayer;

impl<S> Layer<S> for ExpiryLayer {
    type Service = Expiry<S>;
    fn layer(&self, inner: S) -> Expiry<S> {
        Expiry { inner }
    }
}

impl<S: Inner> tower::Service<Envelope> for Expiry<S> {
    type Response = Disposition;
    type Error = Infallible;
    type Future = Either<Ready<Result<Disposition, Infallible>>, S::Future>;

    always_ready!();

    fn call(&mut self, envelope: Envelope) -> Self::Future {
        // Only an event that says when it expires pays for reading the clock.
        if envelope.headers.get(header::EXPIRES_AT).is_some() {
            if let Some(late) = envelope.expired_by(SystemTime::now()) {
                return Either::Left(ready(Ok(Disposition::DeadLetter {
                    cause: HandlerError::new(
                        ErrorCode::DeadlineExceeded,
                        format!("expired {} ms before it could be handled", late.as_millis()),
                    ),
                    attempts: envelope.headers.attempt(),
                })));
            }
        }
        // Every layer here is always ready: no `poll_ready` of the inner one to wait for.
        Either::Right(self.inner.call(envelope))
    }
}
