//! Relays between transports (`yard relay`): events ([`relay`]) and calls ([`calls`]).
//!
//! Events published on one transport are published again on another, at least once. A relay is a service: its handlers publish each event of its topics on the
//! destination, so it is acknowledged on its source only after the destination confirmed it
//! (a relay killed at any point loses nothing; what it repeats, an inbox downstream absorbs),
//! and a destination that refuses gets the consumer's retries with backoff, then the source's
//! dead letters — the pipeline every consumer has, not a loop of its own.
//!
//! The envelope crosses unchanged — its id (an inbox knows a repeat by it), its headers
//! (trace context, an expiry, CloudEvents attributes) and its payload — but for the attempt
//! count, which is the hop's own: a message retried at the relay starts at its first attempt
//! on the destination.

use std::sync::Arc;

use crate::client::Client;
use crate::error::{CallError, ErrorCode, HandlerError};
use crate::handler::untyped;
use crate::message::{header, Envelope};
use crate::service::Service;
use crate::transport::Transport;

/// The name a relay serves under unless told another: its consumer group on the source.
pub const RELAY_NAME: &str = "relay";

/// A service named `name` that publishes every event of `topics` on `to`, as it came. Serve
/// it on the source transport (`server::serve(from, relay(…))`).
pub fn relay(name: &str, to: Arc<dyn Transport>, topics: &[String]) -> Service {
    let mut service = Service::new(name);
    for topic in topics {
        let to = to.clone();
        service = service.on_envelope(topic, move |mut envelope: Envelope| {
            let to = to.clone();
            async move {
                envelope.headers.remove(header::ATTEMPT);
                to.publish(envelope).await.map_err(|e| {
                    HandlerError::unavailable(format!(
                        "the relay's destination {} refused: {e}",
                        to.url()
                    ))
                })
            }
        });
    }
    service
}

/// A service named `service` whose `routes` forward each call, arguments as they came, to
/// the service of that name on `to`, and answer with its reply or its error (the code kept).
/// Serve it on the source transport: a caller there (over HTTP, say) reaches a service on
/// another transport (RabbitMQ, say). The call's remaining time and trace context go on with
/// it, as with any call made inside a handler.
pub fn calls(service: &str, to: Arc<dyn Transport>, routes: &[String]) -> Service {
    let client = Client::new(to).service(service);
    let mut relay = Service::new(service);
    for route in routes {
        let (client, path) = (client.clone(), route.clone());
        relay = relay.route(
            route,
            untyped(move |args, kwargs| {
                let (client, path) = (client.clone(), path.clone());
                async move {
                    let mut request = client.request(&path).args(args);
                    for (name, value) in kwargs {
                        request = request.kwarg(&name, value);
                    }
                    request
                        .send::<serde_json::Value>()
                        .await
                        .map_err(relayed_error)
                }
            }),
        );
    }
    relay
}

/// The error a relayed call answers with: the destination's own, code and message, when it
/// answered; else what stopped the call.
fn relayed_error(e: CallError) -> HandlerError {
    match e {
        CallError::Remote { error, .. } => HandlerError::new(error.code, error.message),
        CallError::Timeout { .. } => HandlerError::new(ErrorCode::DeadlineExceeded, e.to_string()),
        other => HandlerError::new(ErrorCode::Unavailable, format!("relayed call: {other}")),
    }
}
