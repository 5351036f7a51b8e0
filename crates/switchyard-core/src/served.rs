//! A service as it is served: its layers composed around its handlers, its identity, and the
//! one path every call and every event takes into it, whichever transport brought them.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::{ready, BoxFuture, Either};

use crate::call::{CallParts, CallRequest};
use crate::clock::Stopwatch;
use crate::error::HandlerError;
use crate::layer::{self, EventService};
use crate::message::Envelope;
use crate::middleware::limiter::Limiter;
use crate::middleware::{self, DeliveryService, Disposition, EventHandler};
use crate::observe::{Counting, EventOutcome, Measured, ServedMetrics, TopicMetrics};
use crate::service::Service;
use crate::values::Reply;

/// A service being served: the service, its layers composed around its handlers, and this
/// instance's identity. Transports that run their own server (HTTP) call [`Served::call`] for
/// each call they receive.
pub struct Served {
    service: Arc<Service>,
    instance: String,
    // `None` when the service has no layers: calls then go straight to `Service::dispatch`,
    // with no boxed future of their own.
    calls: Option<layer::Stack<CallRequest, Reply, HandlerError>>,
    events: Option<EventService>,
    // What an event pushed over HTTP goes through (`receive_event`).
    pushed: DeliveryService,
    // `None` unless metrics are recorded (`observe::install_prometheus`).
    metrics: Option<ServedMetrics>,
    // `None` unless the service sheds load (`Service::adaptive_limit`).
    limiter: Option<Limiter>,
}

impl fmt::Debug for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Served")
            .field("service", &self.service.name())
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Served {
    /// `service` with its layers composed, as a new instance with a fresh id.
    pub fn new(service: Arc<Service>) -> Self {
        let calls = (!service.call_layers.is_empty()).then(|| {
            layer::Stack::new(layer::stack(
                &service.call_layers,
                layer::Boxed::from_boxed(Dispatch(service.clone())),
            ))
        });
        let events = (!service.event_layers.is_empty()).then(|| {
            layer::stack(
                &service.event_layers,
                layer::Boxed::from_boxed(HandleEvent(service.clone())),
            )
        });
        let pushed = middleware::pushed_stack(
            event_handler(&service, &events),
            Arc::new(service.policy().clone()),
            service.body_limit(),
        );
        Self {
            metrics: ServedMetrics::new(&service),
            limiter: service
                .adaptive_limit
                .clone()
                .map(|l| Limiter::new(l, service.name())),
            service,
            instance: crate::message::new_id(),
            calls,
            events,
            pushed,
        }
    }

    /// The service.
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// The service's name: what callers address.
    pub fn name(&self) -> &str {
        self.service.name()
    }

    /// The service's version, if it has one.
    pub fn version(&self) -> Option<&str> {
        self.service.service_version()
    }

    /// The adaptive limit of calls in flight now, when the service sheds load
    /// (`Service::adaptive_limit`); its consumers take no more events at once than this.
    pub fn adaptive_limit(&self) -> Option<usize> {
        self.limiter.as_ref().map(Limiter::limit)
    }

    /// This instance's id, unique to one `serve`.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Answers one call through the service's layers.
    pub fn call(
        &self,
        request: CallRequest,
    ) -> impl Future<Output = Result<Reply, HandlerError>> + Send + '_ {
        let metrics = self
            .metrics
            .as_ref()
            .map(|m| (m, request.route.clone(), Stopwatch::start()));
        let admitted = match &self.limiter {
            Some(limiter) => match limiter.try_admit(Instant::now()) {
                Ok(admitted) => Some(admitted),
                Err(limit) => {
                    let refused = HandlerError::unavailable(format!(
                        "overloaded: {limit} calls in flight, the most it takes now; retry later"
                    ));
                    let refused = Either::Right(Either::Left(ready(Err(refused))));
                    return match metrics {
                        Some((metrics, route, started)) => {
                            Either::Right(Measured::new(metrics, &route, started, refused))
                        }
                        None => Either::Left(refused),
                    };
                }
            },
            None => None,
        };
        let call = match &self.calls {
            None => Either::Left(self.service.dispatch(request)),
            Some(stack) => Either::Right(stack.call_once(request)),
        };
        let call = match admitted {
            None => Either::Left(call),
            Some(admitted) => Either::Right(Either::Right(async move {
                let outcome = call.await;
                admitted.done(Instant::now());
                outcome
            })),
        };
        match metrics {
            Some((metrics, route, started)) => {
                Either::Right(Measured::new(metrics, &route, started, call))
            }
            None => Either::Left(call),
        }
    }

    /// Whether a call made in this process may await the in-place stack itself
    /// (`Service::dispatch_in_place`): the service has no layers and spans are off.
    #[inline]
    pub(crate) fn answers_in_place(&self) -> bool {
        self.calls.is_none() && !crate::middleware::trace::enabled()
    }

    /// A call made in this process and answered in place, counted when metrics are recorded
    /// (see [`Counting`]; `Service::dispatch_in_place` tells it the route); `timed` as for
    /// [`Served::call_local`].
    #[inline]
    pub(crate) fn count_local(&self, timed: Option<(Stopwatch, u64)>) -> Option<Counting<'_>> {
        self.metrics
            .as_ref()
            .map(|metrics| Counting::start_unrouted(metrics, timed))
    }

    /// A call made in this process, with its route and token borrowed; `timed` when its
    /// latency is measured: when it started (the caller's clock read, shared) and how many
    /// calls it stands for. The caller bounds it by its own timeout.
    pub(crate) fn call_local<'a>(
        &'a self,
        call: CallParts<'a>,
        timed: Option<(Stopwatch, u64)>,
    ) -> impl Future<Output = Result<Reply, HandlerError>> + Send + 'a {
        let route = call.route;
        let call = self.call_local_unmeasured(call);
        match &self.metrics {
            None => Either::Left(call),
            Some(metrics) => Either::Right(Measured::sampled(metrics, route, timed, call)),
        }
    }

    fn call_local_unmeasured<'a>(
        &'a self,
        call: CallParts<'a>,
    ) -> impl Future<Output = Result<Reply, HandlerError>> + Send + 'a {
        match &self.calls {
            None => Either::Left(self.service.dispatch_parts(call, false)),
            Some(stack) => {
                let Some(args) = call.args.into_owned() else {
                    let taken = HandlerError::internal("the call's arguments were taken already");
                    return Either::Right(Either::Left(ready(Err(taken))));
                };
                let request = CallRequest {
                    service: None,
                    route: call.route.to_string(),
                    args,
                    token: call.token.map(str::to_string),
                    headers: call.headers,
                    deadline: call.deadline,
                    // Made by a client in this process, which awaits it within its timeout.
                    bounded_by_caller: true,
                };
                Either::Right(Either::Right(stack.call_once(request)))
            }
        }
    }

    /// Receives one event pushed to this instance by a transport that hands the outcome back to
    /// its sender instead of redelivering (HTTP): WebSocket watchers, the inbox (a duplicate is
    /// accepted without running the handler again), then the event layers and the handler.
    /// The sender is the retry and the dead letter: a failure goes back to it.
    pub async fn receive_event(&self, envelope: Envelope) -> Result<(), HandlerError> {
        push_to_watchers(self, &envelope);
        // Counted like a broker's deliveries: a failure goes back to the sender, who retries.
        let metrics = self
            .topic_metrics(&envelope.subject)
            .map(|m| (m, Instant::now()));
        let (outcome, counted) = match middleware::dispose(&self.pushed, envelope).await {
            Disposition::Done => (Ok(()), EventOutcome::Done),
            Disposition::Retry { cause: e, .. } => (Err(e), EventOutcome::Retry),
            Disposition::Failed(e) | Disposition::DeadLetter { cause: e, .. } => {
                (Err(e), EventOutcome::Failed)
            }
        };
        if let Some((metrics, started)) = metrics {
            metrics.record(started, counted);
        }
        outcome
    }

    /// Counts a call refused before it reached the service because it names no route of it
    /// (a transport that looks routes up itself, like HTTP, calls this for its `404`).
    pub fn count_unrouted(&self) {
        if let Some(m) = &self.metrics {
            let unknown = HandlerError::new(crate::error::ErrorCode::NotFound, "no route");
            m.route("").record(std::time::Instant::now(), Err(&unknown));
        }
    }

    /// The metrics of `topic`'s events, when metrics are recorded.
    pub(crate) fn topic_metrics(&self, topic: &str) -> Option<&TopicMetrics> {
        self.metrics.as_ref().and_then(|m| m.topic(topic))
    }

    /// The service's event layers around its event handlers: one attempt at an event, what
    /// the consumer stack ([`middleware::consumer_stack`]) wraps.
    pub fn event_handler(&self) -> EventHandler {
        event_handler(&self.service, &self.events)
    }

    /// Pushes an event the service has no handler for to its WebSocket watchers of the topic
    /// (server push); `false` when nobody watches it.
    pub fn push_to_watchers(&self, envelope: &Envelope) -> bool {
        push_to_watchers(self, envelope)
    }

    /// Handles one delivery attempt of an event through the service's event layers.
    pub fn handle_event(
        &self,
        envelope: Envelope,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + '_ {
        match &self.events {
            None => Either::Left(self.service.handle_event(envelope)),
            Some(stack) => Either::Right(stack.call_once(envelope)),
        }
    }
}

/// The innermost service of a call stack: route, token, deadline, panic recovery, handler.
#[derive(Clone)]
struct Dispatch(Arc<Service>);

impl tower::Service<CallRequest> for Dispatch {
    type Response = Reply;
    type Error = HandlerError;
    type Future = BoxFuture<'static, Result<Reply, HandlerError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: CallRequest) -> Self::Future {
        let service = self.0.clone();
        if request.bounded_by_caller {
            return Box::pin(async move { service.dispatch_bounded(request).await });
        }
        Box::pin(async move { service.dispatch(request).await })
    }
}

/// The innermost service of an event stack: the topic's handler.
#[derive(Clone)]
struct HandleEvent(Arc<Service>);

impl tower::Service<Envelope> for HandleEvent {
    type Response = ();
    type Error = HandlerError;
    type Future = BoxFuture<'static, Result<(), HandlerError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, envelope: Envelope) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.handle_event(envelope).await })
    }
}

/// The service's event layers around its handlers, or the handlers when it has no layers.
fn event_handler(service: &Arc<Service>, events: &Option<EventService>) -> EventHandler {
    match events {
        Some(stack) => EventHandler::Layers(stack.clone()),
        None => EventHandler::Service(service.clone()),
    }
}

/// Pushes the event to the service's WebSocket watchers of its topic; whether it had any.
pub(crate) fn push_to_watchers(served: &Served, env: &Envelope) -> bool {
    let hub = served.service().hub();
    let watched = hub.has_subscribers(&env.subject);
    if watched {
        if let Ok(text) = std::str::from_utf8(&env.payload) {
            hub.push(&env.subject, text);
        }
    }
    watched
}
