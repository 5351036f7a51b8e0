//! Retry with backoff: a failed event is handed back for redelivery after a doubling delay
//! (or, when the consumer keeps per-key order, retried where it stands, since a redelivery
//! would put it behind its key's later messages), until `max_attempts`; then it is given up
//! as a dead letter.

use std::convert::Infallible;
use std::sync::Arc;

use futures::future::BoxFuture;
use tower::Layer;

use super::{always_ready, call_inner, Disposition, Inner};
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
    type Future = BoxFuture<'static, Result<Disposition, Infallible>>;

    always_ready!();

    fn call(&mut self, envelope: Envelope) -> Self::Future {
        let inner = self.inner.clone();
        let policy = self.policy.clone();
        Box::pin(async move {
            let mut attempt = envelope.headers.attempt();
            if !policy.ordered_by_key {
                // One attempt here; the broker brings the next.
                return Ok(match call_inner(inner, envelope).await {
                    Disposition::Failed(e) if attempt >= policy.max_attempts => {
                        Disposition::DeadLetter {
                            cause: e,
                            attempts: attempt,
                        }
                    }
                    Disposition::Failed(e) => {
                        tracing::debug!(target: "switchyard", error = %e, attempt, "handler failed; redelivering");
                        Disposition::Retry {
                            after: policy.backoff(attempt),
                            cause: e,
                        }
                    }
                    other => other,
                });
            }
            loop {
                let mut this = envelope.clone();
                if attempt != envelope.headers.attempt() {
                    this.headers.insert(header::ATTEMPT, attempt.to_string());
                }
                let e = match call_inner(inner.clone(), this).await {
                    Disposition::Failed(e) => e,
                    other => return Ok(other),
                };
                if attempt >= policy.max_attempts {
                    return Ok(Disposition::DeadLetter {
                        cause: e,
                        attempts: attempt,
                    });
                }
                let after = policy.backoff(attempt);
                tracing::debug!(target: "switchyard", error = %e, attempt, "handler failed; retrying in place");
                tokio::time::sleep(after).await;
                attempt += 1;
            }
        })
    }
}
