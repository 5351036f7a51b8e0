//! Serving a service, written once for every transport: validate it, compose its layers, take
//! calls from the transport's [`Responder`](crate::transport::Responder) and answer them, run
//! its event consumers, and on shutdown stop taking work and finish what is in flight.
//!
//! ```text
//!   transport ──IncomingCall──▶ serve loop ──▶ service layers ──▶ route, token, deadline,
//!   (Responder::listen)         (this module)   (Service::layer)   panic recovery ──▶ handler
//!   transport ──Delivery──────▶ consumer ─────▶ event layers ────▶ event handler
//!   (Subscriber::subscribe)     (inbox, retry,   (Service::event_layer)
//!                                dead letters)
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{BoxFuture, Either};
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;

use crate::call::{CallParts, CallRequest};
use crate::consumer::ServiceConsumers;
use crate::error::{HandlerError, TransportError};
use crate::layer::{self, CallService, EventService};
use crate::message::Envelope;
use crate::service::Service;
use crate::transport::{IncomingCall, Listener, Transport};
use crate::values::Reply;

/// A service being served: the service, its layers composed around its handlers, and this
/// instance's identity. Transports that run their own server (HTTP) call [`Served::call`] for
/// each call they receive.
pub struct Served {
    service: Arc<Service>,
    instance: String,
    // `None` when the service has no layers: calls then go straight to `Service::dispatch`,
    // with no boxed future of their own.
    calls: Option<CallService>,
    events: Option<EventService>,
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
            layer::stack(
                &service.call_layers,
                BoxCloneSyncService::new(Dispatch(service.clone())),
            )
        });
        let events = (!service.event_layers.is_empty()).then(|| {
            layer::stack(
                &service.event_layers,
                BoxCloneSyncService::new(HandleEvent(service.clone())),
            )
        });
        Self {
            service,
            instance: crate::message::new_id(),
            calls,
            events,
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

    /// This instance's id, unique to one `serve`.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Answers one call through the service's layers.
    pub fn call(
        &self,
        request: CallRequest,
    ) -> impl Future<Output = Result<Reply, HandlerError>> + Send + '_ {
        match &self.calls {
            None => Either::Left(self.service.dispatch(request)),
            Some(stack) => Either::Right(stack.clone().oneshot(request)),
        }
    }

    /// A call made in this process, with its route and token borrowed. The caller bounds it by
    /// its own timeout.
    pub(crate) fn call_local<'a>(
        &'a self,
        call: CallParts<'a>,
    ) -> impl Future<Output = Result<Reply, HandlerError>> + Send + 'a {
        match &self.calls {
            None => Either::Left(self.service.dispatch_parts(call, false)),
            Some(stack) => {
                let request = CallRequest {
                    service: None,
                    route: call.route.to_string(),
                    args: call.args,
                    token: call.token.map(str::to_string),
                    headers: call.headers,
                    deadline: call.deadline,
                };
                Either::Right(stack.clone().oneshot(request))
            }
        }
    }

    /// Receives one event pushed to this instance by a transport that hands the outcome back to
    /// its sender instead of redelivering (HTTP): WebSocket watchers, the inbox (a duplicate is
    /// accepted without running the handler again), then the event layers and the handler.
    /// The sender is the retry and the dead letter: a failure goes back to it.
    pub async fn receive_event(&self, envelope: Envelope) -> Result<(), HandlerError> {
        use crate::consumer::{attempt, push_to_watchers, Attempt};
        push_to_watchers(self, &envelope);
        match attempt(self, &envelope, self.service.policy()).await {
            Attempt::Handled(outcome) => outcome,
            Attempt::Duplicate => Ok(()),
            Attempt::Claimed => Err(HandlerError::unavailable(format!(
                "event {} is being handled by another consumer; retry later",
                envelope.id
            ))),
            Attempt::InboxDown => Err(HandlerError::unavailable(
                "the inbox cannot be reached; retry later",
            )),
        }
    }

    /// Handles one delivery attempt of an event through the service's event layers.
    pub fn handle_event(
        &self,
        envelope: Envelope,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + '_ {
        match &self.events {
            None => Either::Left(self.service.handle_event(envelope)),
            Some(stack) => Either::Right(stack.clone().oneshot(envelope)),
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

/// Serves `service` on `transport` until the returned handle is shut down or dropped: its
/// routes through the transport's [`Responder`](crate::transport::Responder), its event
/// handlers through a consumer per topic (group = the service's name).
///
/// On a transport without request/reply (Kafka) only the service's events are served, and a
/// warning names the routes left out. A badly assembled service is refused
/// ([`TransportError::InvalidService`]).
pub async fn serve(
    transport: Arc<dyn Transport>,
    service: impl Into<Arc<Service>>,
) -> Result<ServeHandle, TransportError> {
    let service = service.into();
    service.validate()?;
    let served = Arc::new(Served::new(service));
    let listener = match transport.responder() {
        Some(responder) => Some(responder.listen(served.clone()).await?),
        None => {
            let routes = served.service().route_paths();
            if !routes.is_empty() {
                // The same service code runs on every transport: its events are served here,
                // its routes where there is request/reply.
                tracing::warn!(
                    target: "switchyard",
                    transport = transport.name(),
                    service = served.name(),
                    ?routes,
                    "this transport has no request/reply: only the service's events are served"
                );
            }
            None
        }
    };
    let consumers = if listener.as_ref().is_some_and(|l| l.receives_events) {
        ServiceConsumers::default()
    } else {
        let dead_letters = transport.clone();
        match ServiceConsumers::start(&served, transport.as_ref(), dead_letters).await {
            Ok(consumers) => consumers,
            Err(e) => {
                if let Some(listener) = listener {
                    listener.close.await;
                }
                return Err(e);
            }
        }
    };
    let url = listener
        .as_ref()
        .map_or_else(|| transport.url(), |l| l.url.clone());
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(run(served, listener, consumers, stop_rx));
    Ok(ServeHandle::new(stop_tx, task, url))
}

/// The serve loop: answers calls until told to stop (or the transport's calls end), then stops
/// taking work and waits for what is in flight.
async fn run(
    served: Arc<Served>,
    listener: Option<Listener>,
    consumers: ServiceConsumers,
    mut stop: oneshot::Receiver<()>,
) {
    let mut in_flight = JoinSet::new();
    let (calls, close) = match listener {
        Some(l) => (l.calls, Some(l.close)),
        None => (None, None),
    };
    match calls {
        Some(mut calls) => {
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    call = calls.next() => match call {
                        Some(call) => {
                            run_in_place_or_spawn(&mut in_flight, answer(served.clone(), call)).await;
                        }
                        None => break,
                    },
                }
                while in_flight.try_join_next().is_some() {}
            }
            // Dropping the stream stops the transport delivering calls.
            drop(calls);
        }
        None => {
            let _ = (&mut stop).await;
        }
    }
    // The calls taken finish (and are answered) before the transport lets go of what they
    // answer through.
    while in_flight.join_next().await.is_some() {}
    if let Some(close) = close {
        close.await;
    }
    consumers.stop().await;
}

async fn answer(served: Arc<Served>, call: IncomingCall) {
    let IncomingCall { request, reply } = call;
    let outcome = match request {
        Ok(request) => served
            .call(request)
            .await
            .map_err(HandlerError::into_remote),
        Err(error) => Err(error),
    };
    reply.send(outcome).await;
}

/// Runs `call` in place when it completes on its first poll (a handler that never waits) and
/// spawns it into `calls` otherwise, so that slow handlers still run side by side: a spawn per
/// call would cost more than most handlers.
pub async fn run_in_place_or_spawn<F>(calls: &mut JoinSet<()>, call: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let mut call = Box::pin(call);
    if futures::poll!(call.as_mut()).is_pending() {
        calls.spawn(call);
    }
}

/// A running server; shut it down to stop taking new work and finish what is in flight.
#[derive(Debug)]
pub struct ServeHandle {
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    url: String,
}

impl ServeHandle {
    /// A handle for a server task that stops when `shutdown` fires.
    pub fn new(
        shutdown: oneshot::Sender<()>,
        task: JoinHandle<()>,
        url: impl Into<String>,
    ) -> Self {
        Self {
            shutdown: Some(shutdown),
            task: Some(task),
            url: url.into(),
        }
    }

    /// Where the service can be reached (for `http://127.0.0.1:0` the port actually bound).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops taking new work and waits for in-flight work to finish.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Waits until the server stops by itself (or forever).
    pub async fn wait(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServeHandle {
    fn drop(&mut self) {
        // Dropping the handle stops the server, as a dropped owner would otherwise leak it.
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
