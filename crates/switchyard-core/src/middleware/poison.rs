//! Poison detection: a message that failed as a bad request (it does not decode, or its
//! content is invalid) could never succeed, so it is not retried.

use std::convert::Infallible;

use futures::future::BoxFuture;
use tower::Layer;

use super::{always_ready, call_inner, Disposition, Inner};
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
    type Future = BoxFuture<'static, Result<Disposition, Infallible>>;

    always_ready!();

    fn call(&mut self, envelope: Envelope) -> Self::Future {
        let inner = self.inner.clone();
        let attempts = envelope.headers.attempt();
        Box::pin(async move {
            Ok(match call_inner(inner, envelope).await {
                Disposition::Failed(e)
                    if matches!(e.code(), ErrorCode::BadRequest | ErrorCode::PayloadTooLarge) =>
                {
                    Disposition::DeadLetter { cause: e, attempts }
                }
                other => other,
            })
        })
    }
}
