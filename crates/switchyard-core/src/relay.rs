//! Relays: events published on one transport published again on another (`yard relay`),
//! at least once. A relay is a service: its handlers publish each event of its topics on the
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

use crate::error::HandlerError;
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
