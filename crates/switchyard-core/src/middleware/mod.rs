//! The framework's fixed policies around one delivery of an event, one module per concern,
//! each a tower [`Layer`](tower::Layer) over a [`DeliveryService`]: an event in, what to do
//! with the delivery out ([`Disposition`]). [`consumer_stack`] composes them in the order
//! written down in `docs/MIDDLEWARE.md`; every transport's consumer runs that one stack, so a
//! fix here (a size limit, a dead letter that cannot be published whole) holds on all of them.
//!
//! The service's own event layers ([`Service::event_layer`](crate::service::Service::event_layer))
//! run innermost, around the handler, and see each attempt.

pub mod dead_letter;
pub mod dedupe;
pub mod limit;
pub mod poison;
pub mod retry;

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
/// then the input check, retries, the inbox, poison detection, and the service's event layers
/// and handler.
///
/// Composed as one concrete type and boxed once: a clone of the stack (one per delivery) then
/// copies a few `Arc`s instead of allocating a box per layer.
pub fn consumer_stack(
    handler: EventHandler,
    policy: Arc<ConsumerPolicy>,
    limit: usize,
    dead_letters: Arc<dyn Publisher>,
) -> DeliveryService {
    let stack = (
        DeadLetterLayer::new(dead_letters, policy.clone()),
        LimitLayer::new(limit),
        RetryLayer::new(policy.clone()),
        DedupeLayer::new(policy),
        PoisonLayer,
    )
        .layer(Handle(handler));
    BoxCloneSyncService::new(stack)
}

/// The stack for an event pushed by a sender that takes the outcome back and is itself the
/// retry and the dead letter (HTTP): the input check, the inbox, and the handler.
pub fn pushed_stack(
    handler: EventHandler,
    policy: Arc<ConsumerPolicy>,
    limit: usize,
) -> DeliveryService {
    let stack = (LimitLayer::new(limit), DedupeLayer::new(policy)).layer(Handle(handler));
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
pub async fn dispose(stack: &DeliveryService, envelope: Envelope) -> Disposition {
    match stack.clone().oneshot(envelope).await {
        Ok(d) => d,
        Err(never) => match never {},
    }
}

/// The innermost service of the stack: the service's event layers and handler, their outcome
/// as a disposition.
#[derive(Clone)]
struct Handle(EventHandler);

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
                EventHandler::Layers(stack) => stack.oneshot(envelope).await,
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
    tower::Service<
        Envelope,
        Response = Disposition,
        Error = Infallible,
        Future = BoxFuture<'static, Result<Disposition, Infallible>>,
    > + Clone
    + Send
    + 'static
{
}

impl<S> Inner for S where
    S: tower::Service<
            Envelope,
            Response = Disposition,
            Error = Infallible,
            Future = BoxFuture<'static, Result<Disposition, Infallible>>,
        > + Clone
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
