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

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::consumer::ServiceConsumers;
use crate::error::{HandlerError, TransportError};
pub use crate::served::Served;
use crate::service::Service;
pub use crate::transport::ServeHandle;
use crate::transport::{IncomingCall, Listener, Transport};

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
    for (name, start) in &service.start_hooks {
        if let Err(reason) = start().await {
            return Err(TransportError::StartFailed {
                service: service.name().to_string(),
                hook: name.clone(),
                reason,
            });
        }
    }
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
            Ok(mut consumers) => {
                let subscriber: Arc<dyn crate::transport::Subscriber> = transport.clone();
                consumers.watch_lag(&served, subscriber);
                consumers
            }
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
    // Counted in readiness while it serves.
    let serving = crate::observe::serving(transport.clone());
    let task = tokio::spawn(async move {
        run(served, listener, consumers, stop_rx).await;
        drop(serving);
    });
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
    // Calls made in this process (`Transport::local`) run in their callers' tasks, each
    // holding the service: they have all ended when this loop holds its last reference. No
    // count is kept a call for it; a holder that never lets go is waited for no longer than
    // a call's default timeout.
    let waiting = Instant::now();
    while Arc::strong_count(&served) > 1 && waiting.elapsed() < crate::client::DEFAULT_TIMEOUT {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for (name, stop) in &served.service().stop_hooks {
        if let Err(reason) = stop().await {
            tracing::warn!(target: "switchyard", service = served.name(), hook = %name, %reason, "stop hook failed");
        }
    }
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
