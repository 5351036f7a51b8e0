//! Poison detection: a message that failed as a bad request (it does not decode, or its
//! content is invalid) could never succeed, so it is not retried.

use std::convert::Infallible;

use tower::Layer;

use super::{always_ready, Decide, Disposition, Inner, Then};
use crate::error::ErrorCode;
use crate::message::Envelope;

/// Turns a failure with [`ErrorCode::BadRequest`] (or a payload too large) into a dead letter.
#[derive(Clone, Debug)]
pub struct Poison<S> {
    inner: S,
}

/// Layer of [`Poison`].
#[derive(Clone, Copy, Debug, Default)]
pub struct PoisonLayer;

impl<S> Layer<S> for PoisonLayer {
    type Service = Poison<S>;
    fn layer(&self, inner: S) -> Poison<S> {
        Poison { inner }
    }
}

impl<S: Inner> tower::Service<Envelope> for Poison<S> {
    type Response = Disposition;
    type Error = Infallible;
    type Future = Then<S::Future, Verdict>;

    always_ready!();

    fn call(&mut self, envelope: Envelope) -> Self::Future {
        let attempts = envelope.headers.attempt();
        // Every layer here is always ready: no `poll_ready` of the inner one to wait for.
        Then::new(self.inner.call(envelope), Verdict { attempts })
    }
}

/// Poison's decision on what the handler answered.
pub struct Verdict {
    attempts: u32,
}

impl Decide for Verdict {
    fn decide(self, disposition: Disposition) -> Disposition {
        match disposition {
            Disposition::Failed(e)
                if matches!(e.code(), ErrorCode::BadRequest | ErrorCode::PayloadTooLarge) =>
            {
                Disposition::DeadLetter {
                    cause: e,
                    attempts: self.attempts,
                }
            }
            other => other,
        }
    }
}
