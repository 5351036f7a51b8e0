//! Inbox de-duplication: an event already handled (by this consumer or another sharing the
//! inbox) is acknowledged without running the handler again; one being handled elsewhere
//! right now is handed back for later.

use std::convert::Infallible;
use std::sync::Arc;

use futures::future::{BoxFuture, Either};
use tower::Layer;

use super::{always_ready, call_inner, Disposition, Inner};
use crate::error::HandlerError;
use crate::inbox::Claim;
use crate::message::Envelope;
use crate::policy::ConsumerPolicy;

/// Claims each event in the policy's inbox before the handler runs and records the outcome
/// after; passes straight through when the policy has no inbox.
#[derive(Clone)]
pub struct Dedupe<S> {
    inner: S,
    policy: Arc<ConsumerPolicy>,
}

/// Layer of [`Dedupe`].
#[derive(Clone)]
pub struct DedupeLayer {
    policy: Arc<ConsumerPolicy>,
}

impl DedupeLayer {
    /// De-duplication through `policy.inbox`, claims lasting `policy.inbox_lease`.
    pub fn new(policy: Arc<ConsumerPolicy>) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for DedupeLayer {
    type Service = Dedupe<S>;
    fn layer(&self, inner: S) -> Dedupe<S> {
        Dedupe {
            inner,
            policy: self.policy.clone(),
        }
    }
}

impl<S: Inner> tower::Service<Envelope> for Dedupe<S> {
    type Response = Disposition;
    type Error = Infallible;
    type Future = Either<BoxFuture<'static, Result<Disposition, Infallible>>, S::Future>;

    always_ready!();

    fn call(&mut self, envelope: Envelope) -> Self::Future {
        let Some(inbox) = self.policy.inbox.clone() else {
            // Every layer here is always ready: no `poll_ready` of the inner one to wait for.
            return Either::Right(self.inner.call(envelope));
        };
        let inner = self.inner.clone();
        let policy = self.policy.clone();
        Either::Left(Box::pin(async move {
            let id = envelope.id.clone();
            let later = policy.backoff(envelope.headers.attempt());
            match inbox.claim(&id, policy.inbox_lease).await {
                Ok(Claim::Fresh) => {}
                Ok(Claim::Done) => return Ok(Disposition::Done),
                Ok(Claim::InProgress) => {
                    return Ok(Disposition::Retry {
                        after: later,
                        cause: HandlerError::unavailable(format!(
                            "event {id} is being handled by another consumer; retry later"
                        )),
                    })
                }
                Err(e) => {
                    tracing::warn!(target: "switchyard", error = %e, "inbox unavailable");
                    return Ok(Disposition::Retry {
                        after: later,
                        cause: HandlerError::unavailable(
                            "the inbox cannot be reached; retry later",
                        ),
                    });
                }
            }
            let disposition = call_inner(inner, envelope).await;
            let recorded = match &disposition {
                Disposition::Done => inbox.done(&id).await,
                _ => inbox.release(&id).await,
            };
            if let Err(e) = recorded {
                tracing::warn!(target: "switchyard", error = %e, "could not record the message in the inbox");
            }
            Ok(disposition)
        }))
    }
}
