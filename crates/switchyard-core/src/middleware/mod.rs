//! The framework's fixed policies, one module per concern, in the order written down in
//! `docs/MIDDLEWARE.md`.
//!
//! **Around one delivery of an event**: each a tower [`Layer`](tower::Layer) over any service
//! of an event in, what to do with the delivery out ([`Disposition`]; the bounds are
//! [`Inner`]). [`consumer_stack`] composes them; every transport's consumer runs that one
//! stack, so a fix here (a size limit, a dead letter that cannot be published whole) holds on
//! all of them. The service's own event layers
//! ([`Service::event_layer`](crate::service::Service::event_layer)) run innermost, around the
//! handler, and see each attempt.
//!
//! **Around one call**: on the serving side, once the route is found, `auth`, `deadline` and
//! `recover`, tower layers composed into one concrete stack (`routed`) inside the service's
//! own layers; on the calling side, `trace` (context passed on) and `timeout` (the caller's
//! deadline), outside the client's layers. [`trace`] also makes the OpenTelemetry span of
//! every hop, when spans are on.

mod auth;
pub(crate) mod breaker;
pub(crate) mod budget;
pub(crate) mod bulkhead;
pub mod dead_letter;
mod deadline;
pub mod dedupe;
pub mod expiry;
pub mod limit;
pub mod limiter;
pub mod poison;
mod recover;
pub mod retry;
pub(crate) mod routed;
pub(crate) mod timeout;
pub mod trace;
pub(crate) mod window;

pub(crate) use auth::{token_matches, Auth};
pub(crate) use deadline::Deadline;
pub(crate) use recover::{panic_error, Recover};

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};

use crate::error::HandlerError;
use crate::layer::EventService;
use crate::message::Envelope;
use crate::policy::ConsumerPolicy;
use crate::transport::Publisher;

pub use dead_letter::{DeadLetter, DeadLetterLayer};
pub use dedupe::{Dedupe, DedupeLayer};
pub use expiry::{Expiry, ExpiryLayer};
pub use limit::{Limit, LimitLayer};
pub use poison::{Poison, PoisonLayer};
pub use retry::{Retry, RetryLayer};

/// What becomes of one delivery, as decided by the layers of the consumer stack.
#[derive(Debug)]
#[non_exhaustive]
pub enum Disposition {
    /// Handled (or already handled before): acknowledge it.
    Done,
    /// The handler failed and nothing has decided yet what to do about it.
    Failed(HandlerError),
    /// Hand it back for another delivery after `after`.
    Retry {
        /// How long the broker should wait before redelivering.
        after: Duration,
        /// Why it could not be handled now.
        cause: HandlerError,
    },
    /// Never to be handled: goes to the dead-letter topic with this reason.
    DeadLetter {
        /// Why: recorded in the dead letter's `x-error` header.
        cause: HandlerError,
        /// Attempts made at it, counting in-place retries.
        attempts: u32,
    },
}

/// What a layer of the consumer stack wraps: one delivery in, its [`Disposition`] out.
pub type DeliveryService = BoxCloneSyncService<Envelope, Disposition, Infallible>;

/// The stack every transport's consumer runs for a served service: dead letters outermost,
/// then the input check, expiry, retries, the inbox, poison detection, and the service's
/// event layers and handler.
///
/// One concrete type, not boxed: a clone of it (one per delivery) copies a few `Arc`s, and
/// only the layers that wait on something of their own (a dead letter's publish, the inbox, an
/// ordered retry) box their futures.
pub type ConsumerStack = DeadLetter<Limit<Expiry<Retry<Dedupe<Poison<Handle>>>>>>;

/// The consumer stack of a served service (see [`ConsumerStack`]).
pub fn consumer_stack(
    handler: EventHandler,
    policy: Arc<ConsumerPolicy>,
    limit: usize,
    dead_letters: Arc<dyn Publisher>,
) -> ConsumerStack {
    (
        DeadLetterLayer::new(dead_letters, policy.clone()),
        LimitLayer::new(limit),
        ExpiryLayer,
        RetryLayer::new(policy.clone()),
        DedupeLayer::new(policy),
        PoisonLayer,
    )
        .layer(Handle(handler))
}

/// The stack a log reader ([`View`](crate::event_log::View)) runs on each event: dead
/// letters, the input check, retries (in place when the policy keeps order), poison detection
/// and the handler. No expiry (a view folds the log's history, old or not) and no inbox (a
/// replay reads again on purpose).
pub type LogStack = DeadLetter<Limit<Retry<Poison<Handle>>>>;

/// The stack of a log reader (see [`LogStack`]).
pub fn log_stack(
    handler: EventHandler,
    policy: Arc<ConsumerPolicy>,
    limit: usize,
    dead_letters: Arc<dyn Publisher>,
) -> LogStack {
    (
        DeadLetterLayer::new(dead_letters, policy.clone()),
        LimitLayer::new(limit),
        RetryLayer::new(policy),
        PoisonLayer,
    )
        .layer(Handle(handler))
}

/// The stack for an event pushed by a sender that takes the outcome back and is itself the
/// retry and the dead letter (HTTP): the input check, expiry, the inbox, and the handler.
pub fn pushed_stack(
    handler: EventHandler,
    policy: Arc<ConsumerPolicy>,
    limit: usize,
) -> DeliveryService {
    let stack = (
        LimitLayer::new(limit),
        ExpiryLayer,
        DedupeLayer::new(policy),
    )
        .layer(Handle(handler));
    BoxCloneSyncService::new(stack)
}

/// What the stack calls innermost: the service's event handlers, through its event layers
/// when it has any.
#[derive(Clone)]
pub enum EventHandler {
    /// No event layers: straight to [`Service::handle_event`](crate::service::Service::handle_event).
    Service(Arc<crate::service::Service>),
    /// The service's event layers around its handlers.
    Layers(EventService),
}

/// Runs `stack` on one event.
pub async fn dispose<S: Inner>(stack: &S, envelope: Envelope) -> Disposition {
    call_inner(stack.clone(), envelope).await
}

/// The innermost service of the stack: the service's event layers and handler, their outcome
/// as a disposition.
#[derive(Clone)]
pub struct Handle(EventHandler);

impl tower::Service<Envelope> for Handle {
    type Response = Disposition;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Disposition, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, envelope: Envelope) -> Self::Future {
        let handler = self.0.clone();
        Box::pin(async move {
            let outcome = match handler {
                EventHandler::Service(service) => service.handle_event(envelope).await,
                EventHandler::Layers(stack) => stack.call_once(envelope).await,
            };
            Ok(match outcome {
                Ok(()) => Disposition::Done,
                Err(e) => Disposition::Failed(e),
            })
        })
    }
}

/// The `poll_ready` of every layer here: the stack has no back-pressure of its own (the
/// consumer's permits are the bound), so each is always ready.
macro_rules! always_ready {
    () => {
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), std::convert::Infallible>> {
            std::task::Poll::Ready(Ok(()))
        }
    };
}
pub(crate) use always_ready;

/// The bounds a layer here needs of what it wraps.
pub trait Inner:
    tower::Service<Envelope, Response = Disposition, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Inner for S where
    S: tower::Service<Envelope, Response = Disposition, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// Calls `inner` with `envelope`.
pub(crate) async fn call_inner<S: Inner>(inner: S, envelope: Envelope) -> Disposition {
    match inner.oneshot(envelope).await {
        Ok(d) => d,
        Err(never) => match never {},
    }
}

/// What a layer decides once the layers below have answered, without waiting for anything
/// else: its future is then [`Then`], not a boxed one.
pub(crate) trait Decide: Send + 'static {
    fn decide(self, disposition: Disposition) -> Disposition;
}

pin_project_lite::pin_project! {
    /// The inner future, its disposition passed through a [`Decide`].
    pub struct Then<F, D> {
        #[pin]
        inner: F,
        decide: Option<D>,
    }
}

impl<F, D> Then<F, D> {
    pub(crate) fn new(inner: F, decide: D) -> Self {
        Self {
            inner,
            decide: Some(decide),
        }
    }
}

impl<F, D> std::future::Future for Then<F, D>
where
    F: std::future::Future<Output = Result<Disposition, Infallible>>,
    D: Decide,
{
    type Output = Result<Disposition, Infallible>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.poll(cx) {
            Poll::Ready(Ok(d)) => match this.decide.take() {
                Some(decide) => Poll::Ready(Ok(decide.decide(d))),
                None => Poll::Ready(Ok(d)),
            },
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => Poll::Pending,
        }
    }
}
