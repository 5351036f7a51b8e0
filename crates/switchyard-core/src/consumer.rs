//! The consumer loop every transport uses to feed a service's event handlers: ack after the
//! handler succeeds, nack with backoff when it fails, dead-letter after too many attempts or
//! at once for a message that cannot decode, and drain in-flight work on shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;

use crate::error::TransportError;
use crate::middleware::dead_letter::FIRST_FAILED_AT;
use crate::middleware::trace::{self, HopSpan};
use crate::middleware::{self, ConsumerStack, Disposition};
use crate::observe::EventOutcome;
pub use crate::policy::ConsumerPolicy;
use crate::pool::{KeyedPool, PoolConfig};
use crate::served::{push_to_watchers, Served};
use crate::transport::{Delivery, Publisher, SubscribeOptions, Subscriber, Subscription};

/// How often a consumer group's lag is read from the broker.
pub const LAG_EVERY: Duration = Duration::from_secs(2);

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
            // A message delivered this often was never settled by the consumer (which settles
            // by `max_attempts`): its client library could not read it. The broker then hands
            // it over as unreadable, to be dead-lettered.
            let options = SubscribeOptions::group(service.name())
                .prefetch(policy.concurrency)
                .max_deliveries(policy.max_attempts.saturating_add(2));
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

    /// Reports the lag of each of the service's consumer groups (`switchyard_consumer_lag`)
    /// every [`LAG_EVERY`], where the broker tells it ([`Subscriber::lag`]), while metrics
    /// are recorded.
    pub fn watch_lag(&mut self, served: &Arc<Served>, subscriber: Arc<dyn Subscriber>) {
        if !crate::observe::enabled() {
            return;
        }
        let service = served.service();
        let group = service.name().to_string();
        for topic in service.topics() {
            let gauge = ::metrics::gauge!(
                "switchyard_consumer_lag",
                "service" => group.clone(),
                "topic" => topic.to_string()
            );
            let (subscriber, group, topic) = (subscriber.clone(), group.clone(), topic.to_string());
            let (tx, mut rx) = oneshot::channel();
            self.stops.push(tx);
            self.tasks.push(tokio::spawn(async move {
                loop {
                    match subscriber.lag(&topic, &group).await {
                        Ok(Some(lag)) => gauge.set(lag as f64),
                        // The broker does not tell: nothing to report, ever.
                        Ok(None) => return,
                        Err(e) => {
                            tracing::debug!(target: "switchyard", %topic, error = %e, "consumer lag not read")
                        }
                    }
                    tokio::select! {
                        _ = &mut rx => return,
                        _ = tokio::time::sleep(LAG_EVERY) => {}
                    }
                }
            }));
        }
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
    let policy = Arc::new(policy);
    let stack = middleware::consumer_stack(
        served.event_handler(),
        policy.clone(),
        served.service().body_limit(),
        dead_letters,
    );
    if policy.ordered_by_key {
        return run_ordered(served, subscription, stack, policy, stop).await;
    }
    let permits = Arc::new(Semaphore::new(policy.concurrency.max(1)));
    let mut in_flight = JoinSet::new();
    loop {
        // A service that sheds load (`Service::adaptive_limit`) takes no more events at once
        // than its limit of calls allows now: when the limiter lowers it, the consumer takes
        // fewer deliveries (those the broker already sent wait in the subscription).
        if let Some(limit) = served.adaptive_limit() {
            if in_flight.len() >= limit {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = in_flight.join_next() => continue,
                }
            }
        }
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
                let received = trace::receive(&delivery.envelope);
                let (served, stack, policy) = (served.clone(), stack.clone(), policy.clone());
                in_flight.spawn(async move {
                    handle_one(&served, delivery, received, &stack, &policy).await;
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
    stack: ConsumerStack,
    policy: Arc<ConsumerPolicy>,
    mut stop: oneshot::Receiver<()>,
) {
    let n = policy.concurrency.max(1);
    let (pool, results) = KeyedPool::<String, ()>::new(PoolConfig {
        workers: n,
        max_in_flight: n,
    });
    // Outcomes are settled inside each job; the results only need taking.
    let drain = tokio::spawn(results.for_each(|_| async {}));
    loop {
        let next = tokio::select! {
            _ = &mut stop => break,
            n = subscription.next() => n,
        };
        match next {
            Some(Ok(delivery)) => {
                let received = trace::receive(&delivery.envelope);
                let key = delivery.envelope.ordering_key().map(str::to_string);
                let (served, stack, policy) = (served.clone(), stack.clone(), policy.clone());
                let job = async move {
                    handle_one(&served, delivery, received, &stack, &policy).await;
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
    mut delivery: Delivery,
    received: Option<HopSpan>,
    stack: &ConsumerStack,
    policy: &ConsumerPolicy,
) {
    if let Some(span) = received {
        span.end(None);
    }
    push_to_watchers(served, &delivery.envelope);
    let attempt = delivery.envelope.headers.attempt();
    let metrics = served
        .topic_metrics(&delivery.envelope.subject)
        .map(|m| (m, Instant::now()));
    let mut envelope = delivery.envelope.clone();
    middleware::limit::mark_unreadable(&mut envelope, delivery.unreadable_reason());
    let (settled, outcome) = match middleware::dispose(stack, envelope).await {
        Disposition::Done => {
            let span = trace::settle("ack", &delivery.envelope);
            (settle_ended(span, delivery.ack().await), EventOutcome::Done)
        }
        Disposition::Retry { after, .. } => {
            // The first failure's time goes with the message, for its dead letter.
            let headers = &mut delivery.envelope.headers;
            if headers.get(FIRST_FAILED_AT).is_none() {
                headers.insert(FIRST_FAILED_AT, middleware::dead_letter::now_rfc3339());
            }
            let span = trace::settle("nack", &delivery.envelope);
            (
                settle_ended(span, delivery.nack(Some(after)).await),
                EventOutcome::Retry,
            )
        }
        // Every failure is decided by the stack; one that is not is retried, never lost.
        Disposition::Failed(_) | Disposition::DeadLetter { .. } => {
            let span = trace::settle("nack", &delivery.envelope);
            let nacked = delivery.nack(Some(policy.backoff(attempt))).await;
            (settle_ended(span, nacked), EventOutcome::Failed)
        }
    };
    if let Some((metrics, started)) = metrics {
        metrics.record(started, outcome);
    }
    if let Err(e) = settled {
        tracing::warn!(target: "switchyard", error = %e, "could not settle delivery");
    }
}

/// Ends a settle span with how settling went.
fn settle_ended(
    span: Option<HopSpan>,
    result: Result<(), TransportError>,
) -> Result<(), TransportError> {
    if let Some(span) = span {
        span.end(
            result
                .as_ref()
                .err()
                .map(|e| ("settle".to_string(), e.to_string())),
        );
    }
    result
}
