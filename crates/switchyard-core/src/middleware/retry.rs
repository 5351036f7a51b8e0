//! Retry with backoff: a failed event is handed back for redelivery after a doubling delay
//! (or, when the consumer keeps per-key order, retried where it stands, since a redelivery
//! would put it behind its key's later messages), until `max_attempts`; then it is given up
//! as a dead letter.

use std::convert::Infallible;
use std::sync::Arc;

use futures::future::{BoxFuture, Either};
use tower::Layer;

use super::{always_ready, call_inner, Decide, Disposition, Inner, Then};
use crate::message::{header, Envelope};
use crate::policy::ConsumerPolicy;

/// Decides what a failure becomes: another attempt or a dead letter.
#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    policy: Arc<ConsumerPolicy>,
}

/// Layer of [`Retry`].
#[derive(Clone)]
pub struct RetryLayer {
    policy: Arc<ConsumerPolicy>,
}

impl RetryLayer {
    /// Retries as `policy` says: `max_attempts`, its backoff, in place when `ordered_by_key`.
    pub fn new(policy: Arc<ConsumerPolicy>) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            policy: self.policy.clone(),
        }
    }
}

impl<S: Inner> tower::Service<Envelope> for Retry<S> {
    type Response = Disposition;
    type Error = Infallible;
    type Future =
        Either<BoxFuture<'static, Result<Disposition, Infallible>>, Then<S::Future, Redeliver>>;

    always_ready!();

    fn call(&mut self, envelope: Envelope) -> Self::Future {
        let attempt = envelope.headers.attempt();
        if !self.policy.ordered_by_key {
            // One attempt here; the broker brings the next. Every layer here is always ready:
            // no `poll_ready` of the inner one to wait for.
            let decide = Redeliver {
                policy: self.policy.clone(),
                attempt,
            };
            return Either::Right(Then::new(self.inner.call(envelope), decide));
        }
        let inner = self.inner.clone();
        let policy = self.policy.clone();
        Either::Left(Box::pin(async move {
            let mut attempt = attempt;
            loop {
                let mut this = envelope.clone();
                if attempt != envelope.headers.attempt() {
                    this.headers.insert(header::ATTEMPT, attempt.to_string());
                }
                let decide = Redeliver {
                    policy: policy.clone(),
                    attempt,
                };
                // The same decision as for a redelivery, except that the wait is here.
                match decide.decide(call_inner(inner.clone(), this).await) {
                    Disposition::Retry { after, .. } => tokio::time::sleep(after).await,
                    other => return Ok(other),
                }
                attempt += 1;
            }
        }))
    }
}

/// What a failure becomes: another attempt after the backoff, or a dead letter after
/// `max_attempts`.
pub struct Redeliver {
    policy: Arc<ConsumerPolicy>,
    attempt: u32,
}

impl Decide for Redeliver {
    fn decide(self, disposition: Disposition) -> Disposition {
        match disposition {
            Disposition::Failed(e) if self.attempt >= self.policy.max_attempts => {
                Disposition::DeadLetter {
                    cause: e,
                    attempts: self.attempt,
                }
            }
            Disposition::Failed(e) => {
                tracing::debug!(target: "switchyard", error = %e, attempt = self.attempt, "handler failed; retrying");
                Disposition::Retry {
                    after: self.policy.backoff(self.attempt),
                    cause: e,
                }
            }
            other => other,
        }
    }
}
