//! The hook around every call and every event, on both sides: tower [`Layer`]s.
//!
//! A service takes layers around the calls it answers ([`Service::layer`]) and the events it
//! handles ([`Service::event_layer`]); a client takes layers around the calls it makes
//! ([`Client::layer`]) and the events it publishes ([`Client::publish_layer`]). Layers are
//! composed once, when a service is served or a layer is added to a client, and a call takes
//! its turn in that one composed stack ([`Stack`]) rather than a copy of it: it costs a boxed
//! future for the innermost service and one for each layer that makes a future of its own,
//! and nothing when there is no layer (tower's `Identity` is no layer).
//!
//! [`Service::layer`]: crate::service::Service::layer
//! [`Service::event_layer`]: crate::service::Service::event_layer
//! [`Client::layer`]: crate::client::Client::layer
//! [`Client::publish_layer`]: crate::client::Client::publish_layer

use std::any::Any;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{BoxFuture, Either};
use tower::util::Oneshot;
use tower::{Layer, Service, ServiceExt};

use crate::call::CallRequest;
use crate::error::{CallError, HandlerError, TransportError};
use crate::message::Envelope;
use crate::values::Reply;

/// What a service layer wraps on the serving side: a call in, the handler's reply out.
pub type CallService = Boxed<CallRequest, Reply, HandlerError>;
/// What an event layer wraps on the serving side: one delivery attempt of an event.
pub type EventService = Boxed<Envelope, (), HandlerError>;
/// What a client layer wraps: a call out, its reply back.
pub type ClientService = Boxed<CallRequest, Reply, CallError>;
/// What a publish layer wraps: an event out, the transport's confirmation back.
pub type PublishService = Boxed<Envelope, (), TransportError>;

/// A layer with its types erased, kept until the stack is built.
pub(crate) type LayerFn<Req, Res, E> =
    Arc<dyn Fn(Boxed<Req, Res, E>) -> Boxed<Req, Res, E> + Send + Sync>;
pub(crate) type CallLayerFn = LayerFn<CallRequest, Reply, HandlerError>;
pub(crate) type EventLayerFn = LayerFn<Envelope, (), HandlerError>;

/// A cloneable service with its type erased: what every layer wraps and is stored as.
///
/// Written here rather than using tower's `BoxCloneSyncService`, which boxes the future of the
/// service it erases even when that future is a box already (a second allocation per call for
/// each framework service innermost), and wraps a layer that hands back the very service it
/// was given (tower's `Identity`) in one more box, cloned and called through on every call.
pub struct Boxed<Req, Res, E>(Box<dyn Erased<Req, Res, E>>);

trait Erased<Req, Res, E>: Send + Sync {
    fn clone_box(&self) -> Box<dyn Erased<Req, Res, E>>;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>>;
    fn call(&mut self, request: Req) -> BoxFuture<'static, Result<Res, E>>;
}

/// A service whose future is boxed on each call.
#[derive(Clone)]
struct Boxing<S>(S);

impl<S, Req, Res, E> Erased<Req, Res, E> for Boxing<S>
where
    S: Service<Req, Response = Res, Error = E> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    Res: 'static,
    E: 'static,
{
    fn clone_box(&self) -> Box<dyn Erased<Req, Res, E>> {
        Box::new(self.clone())
    }
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.0.poll_ready(cx)
    }
    fn call(&mut self, request: Req) -> BoxFuture<'static, Result<Res, E>> {
        // A layer that hands back its inner service's future (one that only looks at the
        // request, or passes it on) returns a box already: not boxed a second time.
        let mut future = Some(self.0.call(request));
        let any: &mut dyn Any = &mut future;
        if let Some(boxed) = any
            .downcast_mut::<Option<BoxFuture<'static, Result<Res, E>>>>()
            .and_then(Option::take)
        {
            return boxed;
        }
        match future {
            Some(future) => Box::pin(future),
            None => unreachable!("the future was taken only when it was a box already"),
        }
    }
}

/// A service whose future is a box already.
#[derive(Clone)]
struct AlreadyBoxed<S>(S);

impl<S, Req, Res, E> Erased<Req, Res, E> for AlreadyBoxed<S>
where
    S: Service<Req, Response = Res, Error = E, Future = BoxFuture<'static, Result<Res, E>>>
        + Clone
        + Send
        + Sync
        + 'static,
{
    fn clone_box(&self) -> Box<dyn Erased<Req, Res, E>> {
        Box::new(self.clone())
    }
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.0.poll_ready(cx)
    }
    fn call(&mut self, request: Req) -> BoxFuture<'static, Result<Res, E>> {
        self.0.call(request)
    }
}

impl<Req: 'static, Res: 'static, E: 'static> Boxed<Req, Res, E> {
    /// `service` with its type erased.
    pub fn new<S>(service: S) -> Self
    where
        S: Service<Req, Response = Res, Error = E> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        let mut slot = Some(service);
        let any: &mut dyn Any = &mut slot;
        // A layer that hands back the service it was given: nothing more to wrap.
        if let Some(same) = any.downcast_mut::<Option<Self>>().and_then(Option::take) {
            return same;
        }
        match slot {
            Some(service) => Self(Box::new(Boxing(service))),
            None => unreachable!("the service was taken only when it was already erased"),
        }
    }

    /// `service`, whose future is boxed already, with its type erased.
    pub(crate) fn from_boxed<S>(service: S) -> Self
    where
        S: Service<Req, Response = Res, Error = E, Future = BoxFuture<'static, Result<Res, E>>>
            + Clone
            + Send
            + Sync
            + 'static,
    {
        Self(Box::new(AlreadyBoxed(service)))
    }
}

impl<Req: Send + 'static, Res: Send + 'static, E: Send + 'static> Boxed<Req, Res, E> {
    /// Calls a clone of this stack with `request`: at once when it is ready, as a stack of
    /// layers with no back-pressure of their own is, and otherwise once it is (tower's
    /// `oneshot`, whose state machine moves the request and the future through it on every
    /// call, is kept for that case).
    pub(crate) fn call_once(&self, request: Req) -> CallOnce<Req, Res, E> {
        let mut service = self.clone();
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        match service.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => Either::Left(service.call(request)),
            Poll::Ready(Err(e)) => Either::Left(Box::pin(std::future::ready(Err(e)))),
            // Polled again, with the caller's waker, by `oneshot`.
            Poll::Pending => Either::Right(service.oneshot(request)),
        }
    }
}

/// A call of a stack: its future, or tower's `oneshot` waiting for it to be ready.
pub(crate) type CallOnce<Req, Res, E> =
    Either<BoxFuture<'static, Result<Res, E>>, Oneshot<Boxed<Req, Res, E>, Req>>;

/// A composed stack, called in place while no other call is in it (a caller in sequence, the
/// usual case in process), and through a clone of it while one is: cloning an erased stack
/// costs a box for each of its services, on every call. tower's contract holds either way:
/// each call goes to an instance that said it was ready, and an instance not ready is polled
/// again, with its caller's waker, until it is (it may hold a place in a queue). (A layer
/// whose services keep state of their own, per instance, sees one instance between calls in
/// sequence and clones beside it.)
pub(crate) struct Stack<Req, Res, E> {
    /// The instance calls take turns in.
    in_turn: std::sync::Mutex<Boxed<Req, Res, E>>,
    /// What a call finding `in_turn` busy clones.
    prototype: Boxed<Req, Res, E>,
}

impl<Req: Send + 'static, Res: Send + 'static, E: Send + 'static> Stack<Req, Res, E> {
    pub(crate) fn new(stack: Boxed<Req, Res, E>) -> Self {
        Self {
            in_turn: std::sync::Mutex::new(stack.clone()),
            prototype: stack,
        }
    }

    /// Calls the stack with `request` (see [`Stack`]).
    pub(crate) fn call_once(&self, request: Req) -> CallOnce<Req, Res, E> {
        let in_turn = match self.in_turn.try_lock() {
            Ok(service) => Some(service),
            // A layer panicked in `call`, in this instance: a fresh clone takes its place.
            Err(std::sync::TryLockError::Poisoned(p)) => {
                let mut service = p.into_inner();
                *service = self.prototype.clone();
                self.in_turn.clear_poison();
                Some(service)
            }
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        let Some(mut service) = in_turn else {
            return self.prototype.call_once(request);
        };
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        match service.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => Either::Left(service.call(request)),
            Poll::Ready(Err(e)) => Either::Left(Box::pin(std::future::ready(Err(e)))),
            // Not ready: this very instance waits for readiness (it may hold its place in a
            // queue, as a limit's semaphore does), polled again with the caller's waker; a
            // clone takes its turn here.
            Poll::Pending => {
                let waiting = std::mem::replace(&mut *service, self.prototype.clone());
                drop(service);
                Either::Right(waiting.oneshot(request))
            }
        }
    }
}

impl<Req, Res, E> std::fmt::Debug for Stack<Req, Res, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stack")
    }
}

impl<Req, Res, E> Clone for Boxed<Req, Res, E> {
    fn clone(&self) -> Self {
        Self(self.0.clone_box())
    }
}

impl<Req, Res, E> Service<Req> for Boxed<Req, Res, E> {
    type Response = Res;
    type Error = E;
    type Future = BoxFuture<'static, Result<Res, E>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.0.call(request)
    }
}

impl<Req, Res, E> std::fmt::Debug for Boxed<Req, Res, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Boxed")
    }
}

/// A tower layer usable around `Req → Res, E`: any [`Layer`] over a [`Boxed`] service whose
/// service is cloneable, shareable and sendable. Implemented for every such layer; it only
/// names the bounds once for [`Service::layer`](crate::service::Service::layer),
/// [`Service::event_layer`](crate::service::Service::event_layer),
/// [`Client::layer`](crate::client::Client::layer) and
/// [`Client::publish_layer`](crate::client::Client::publish_layer).
pub trait LayerFor<Req, Res, E>: Send + Sync + 'static {
    /// This layer with its types erased.
    fn erased(self) -> ErasedLayer<Req, Res, E>;
}

/// A layer with its types erased (see [`LayerFor`]); nothing for tower's `Identity`, the
/// layer that adds nothing (a stack with only such layers is no stack: its calls take the
/// path of a service or client without layers).
pub struct ErasedLayer<Req, Res, E>(pub(crate) Option<LayerFn<Req, Res, E>>);

impl<L, Req, Res, E> LayerFor<Req, Res, E> for L
where
    L: Layer<Boxed<Req, Res, E>> + Send + Sync + 'static,
    L::Service: Service<Req, Response = Res, Error = E> + Clone + Send + Sync + 'static,
    <L::Service as Service<Req>>::Future: Send + 'static,
    Req: 'static,
    Res: 'static,
    E: 'static,
{
    fn erased(self) -> ErasedLayer<Req, Res, E> {
        if std::any::TypeId::of::<L>() == std::any::TypeId::of::<tower::layer::util::Identity>() {
            return ErasedLayer(None);
        }
        ErasedLayer(Some(Arc::new(move |inner| Boxed::new(self.layer(inner)))))
    }
}

/// `innermost` wrapped in `layers`, the first of them outermost.
pub(crate) fn stack<Req, Res, E>(
    layers: &[LayerFn<Req, Res, E>],
    innermost: Boxed<Req, Res, E>,
) -> Boxed<Req, Res, E> {
    layers
        .iter()
        .rev()
        .fold(innermost, |inner, layer| layer(inner))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A service counting its clones and the calls running in it at once.
    struct Counted {
        clones: Arc<AtomicUsize>,
        running: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
    }

    impl Clone for Counted {
        fn clone(&self) -> Self {
            self.clones.fetch_add(1, Ordering::SeqCst);
            Self {
                clones: self.clones.clone(),
                running: self.running.clone(),
                most: self.most.clone(),
            }
        }
    }

    impl Service<u32> for Counted {
        type Response = u32;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<'static, Result<u32, std::convert::Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, n: u32) -> Self::Future {
            assert_ne!(n, u32::MAX, "a layer that panics in `call`");
            let (running, most) = (self.running.clone(), self.most.clone());
            Box::pin(async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(n)
            })
        }
    }

    fn counted() -> (Counted, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let (clones, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let service = Counted {
            clones: clones.clone(),
            running: Arc::new(AtomicUsize::new(0)),
            most: most.clone(),
        };
        (service, clones, most)
    }

    #[tokio::test]
    async fn calls_in_sequence_take_turns_in_one_instance_of_the_stack() {
        let (service, clones, _) = counted();
        let stack = Stack::new(Boxed::new(service));
        let made = clones.load(Ordering::SeqCst);
        for n in 0..10 {
            assert_eq!(stack.call_once(n).await, Ok(n));
        }
        assert_eq!(clones.load(Ordering::SeqCst), made, "no clone a call");
    }

    #[tokio::test]
    async fn a_stack_whose_layer_panicked_in_call_goes_on_with_a_fresh_instance() {
        let (service, clones, _) = counted();
        let stack = Stack::new(Boxed::new(service));
        let panicked =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stack.call_once(u32::MAX)));
        assert!(panicked.is_err());
        let made = clones.load(Ordering::SeqCst);
        assert_eq!(stack.call_once(1).await, Ok(1));
        assert_eq!(
            clones.load(Ordering::SeqCst),
            made + 1,
            "one fresh instance"
        );
        assert_eq!(stack.call_once(2).await, Ok(2));
        assert_eq!(
            clones.load(Ordering::SeqCst),
            made + 1,
            "then in turn again"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stack_not_ready_is_waited_for_and_its_bound_holds() {
        let (service, _, most) = counted();
        // One call at a time: the instance in turn is not ready while one runs, so the next
        // call waits in it until it is (a clone of the stack, sharing the limit, takes its
        // turn); an instance left waiting unpolled would keep the one permit to itself.
        let limited = tower::limit::ConcurrencyLimitLayer::new(1).layer(service);
        let stack = Arc::new(Stack::new(Boxed::new(limited)));
        let calls: Vec<_> = (0..6)
            .map(|n| {
                let stack = stack.clone();
                tokio::spawn(async move { stack.call_once(n).await })
            })
            .collect();
        for (n, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.expect("joined"), Ok(n as u32));
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "the limit of one held");
    }
}
