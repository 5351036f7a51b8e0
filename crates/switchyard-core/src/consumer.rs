//! The consumer loop every transport uses to feed a service's event handlers: ack after the
//! handler succeeds, nack with backoff when it fails, dead-letter after too many attempts or
//! at once for a message that cannot decode, and drain in-flight work on shutdown.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;

use crate::error::ErrorCode;
use crate::error::TransportError;
use crate::message::header;
pub use crate::policy::ConsumerPolicy;
use crate::pool::{KeyedPool, PoolConfig};
use crate::served::{attempt, push_to_watchers, Attempt, Served};
use crate::transport::{Delivery, Publisher, SubscribeOptions, Subscriber, Subscription};

/// The consumers of a served service's event handlers, one per topic.
#[derive(Debug, Default)]
pub struct ServiceConsumers {
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ServiceConsumers {
    /// Subscribes to each of the served service's topics as consumer group named after the
    /// service (prefetch = the policy's concurrency) and runs [`run`] on each; dead letters go
    /// to `dead_letters`. [`crate::server::serve`] uses this.
    pub async fn start(
        served: &Arc<Served>,
        subscriber: &dyn Subscriber,
        dead_letters: Arc<dyn Publisher>,
    ) -> Result<Self, TransportError> {
        let mut consumers = Self::default();
        let service = served.service();
        for topic in service.topics() {
            let policy = service.policy().clone();
            let options = SubscribeOptions::group(service.name()).prefetch(policy.concurrency);
            let subscription = match subscriber.subscribe(topic, options).await {
                Ok(s) => s,
                Err(e) => {
                    consumers.stop().await;
                    return Err(e);
                }
            };
            let (tx, rx) = oneshot::channel();
            consumers.stops.push(tx);
            consumers.tasks.push(tokio::spawn(run(
                served.clone(),
                subscription,
                dead_letters.clone(),
                policy,
                rx,
            )));
        }
        Ok(consumers)
    }

    /// Stops taking deliveries and waits until the ones in flight are handled and settled.
    pub async fn stop(self) {
        for s in self.stops {
            let _ = s.send(());
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Runs the served service's handler for every delivery of `subscription` until `stop` fires or the
/// stream ends; then waits for the handlers in flight and settles them.
pub async fn run(
    served: Arc<Served>,
    mut subscription: Subscription,
    dead_letters: Arc<dyn Publisher>,
    policy: ConsumerPolicy,
    mut stop: oneshot::Receiver<()>,
) {
    if policy.ordered_by_key {
        return run_ordered(served, subscription, dead_letters, policy, stop).await;
    }
    let permits = Arc::new(Semaphore::new(policy.concurrency.max(1)));
    let policy = Arc::new(policy);
    let mut in_flight = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = &mut stop => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let next = tokio::select! {
            _ = &mut stop => break,
            n = subscription.next() => n,
        };
        match next {
            Some(Ok(delivery)) => {
                let (served, dl, policy) = (served.clone(), dead_letters.clone(), policy.clone());
                in_flight.spawn(async move {
                    handle_one(&served, delivery, dl.as_ref(), &policy).await;
                    drop(permit);
                });
            }
            Some(Err(e)) => {
                tracing::warn!(target: "switchyard", error = %e, "subscription error");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None => break,
        }
        while in_flight.try_join_next().is_some() {}
    }
    // Graceful shutdown: no new deliveries; the ones already taken finish and are settled.
    while in_flight.join_next().await.is_some() {}
}

/// [`run`] with per-key order: deliveries go through a [`KeyedPool`] keyed by their ordering
/// key, so a key's messages are handled one at a time in the order received.
async fn run_ordered(
    served: Arc<Served>,
    mut subscription: Subscription,
    dead_letters: Arc<dyn Publisher>,
    policy: ConsumerPolicy,
    mut stop: oneshot::Receiver<()>,
) {
    let n = policy.concurrency.max(1);
    let (pool, results) = KeyedPool::<String, ()>::new(PoolConfig {
        workers: n,
        max_in_flight: n,
    });
    // Outcomes are settled inside each job; the results only need taking.
    let drain = tokio::spawn(results.for_each(|_| async {}));
    let policy = Arc::new(policy);
    loop {
        let next = tokio::select! {
            _ = &mut stop => break,
            n = subscription.next() => n,
        };
        match next {
            Some(Ok(delivery)) => {
                let key = delivery.envelope.ordering_key().map(str::to_string);
                let (served, dl, policy) = (served.clone(), dead_letters.clone(), policy.clone());
                let job = async move {
                    handle_one(&served, delivery, dl.as_ref(), &policy).await;
                    Ok::<(), std::convert::Infallible>(())
                };
                if pool.submit(key, job).await.is_err() {
                    break;
                }
            }
            Some(Err(e)) => {
                tracing::warn!(target: "switchyard", error = %e, "subscription error");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None => break,
        }
    }
    pool.shutdown().await;
    let _ = drain.await;
}

async fn handle_one(
    served: &Served,
    delivery: Delivery,
    dead_letters: &dyn Publisher,
    policy: &ConsumerPolicy,
) {
    let env = delivery.envelope.clone();
    let mut attempt_no = env.headers.attempt();
    push_to_watchers(served, &env);
    let outcome = loop {
        let outcome = match attempt(served, &env, policy).await {
            Attempt::Handled(outcome) => outcome,
            // A duplicate of a message already processed: effectively once.
            Attempt::Duplicate => return settle(delivery.ack().await),
            Attempt::Claimed | Attempt::InboxDown => {
                return settle(delivery.nack(Some(policy.backoff(attempt_no))).await)
            }
        };
        match outcome {
            // In key order, a failed message is retried where it stands: a redelivery would
            // put it behind the key's later messages.
            Err(e)
                if policy.ordered_by_key
                    && e.code() != ErrorCode::BadRequest
                    && attempt_no < policy.max_attempts =>
            {
                tracing::debug!(target: "switchyard", error = %e, attempt = attempt_no, "handler failed; retrying in place");
                tokio::time::sleep(policy.backoff(attempt_no)).await;
                attempt_no += 1;
            }
            other => break other,
        }
    };
    let attempt = attempt_no;
    let settled = match outcome {
        Ok(()) => delivery.ack().await,
        Err(e) if e.code() == ErrorCode::BadRequest || attempt >= policy.max_attempts => {
            // A poison message (does not decode) is not retried: it could never succeed.
            let mut dead = env;
            dead.headers.insert(header::ERROR, e.message());
            dead.headers
                .insert("x-original-topic", dead.subject.clone());
            dead.headers.insert(header::ATTEMPT, attempt.to_string());
            dead.subject = format!("{}{}", dead.subject, policy.dead_letter_suffix);
            match dead_letters.publish(dead).await {
                Ok(()) => delivery.ack().await,
                Err(pe) => {
                    tracing::error!(target: "switchyard", error = %pe, "dead-letter publish failed; message will be redelivered");
                    delivery.nack(Some(policy.backoff(attempt))).await
                }
            }
        }
        Err(e) => {
            tracing::debug!(target: "switchyard", error = %e, attempt, "handler failed; redelivering");
            delivery.nack(Some(policy.backoff(attempt))).await
        }
    };
    settle(settled);
}

fn settle(result: Result<(), crate::error::TransportError>) {
    if let Err(e) = result {
        tracing::warn!(target: "switchyard", error = %e, "could not settle delivery");
    }
}
