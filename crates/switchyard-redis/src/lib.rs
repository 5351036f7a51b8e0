//! Redis transport for switchyard (`redis://HOST:PORT[/DB][?ns=NAME&claim_idle_ms=N]`). Not
//! for direct use; see the `switchyard` crate.
//!
//! - **Events** live in Redis Streams (`sy:s:<topic>`): a consumer group per switchyard group
//!   (`XREADGROUP`, `XACK` after the handler succeeded), messages left pending by a consumer
//!   that died are taken over with `XAUTOCLAIM` after `claim_idle_ms` (default 30 s; a live
//!   consumer renews what it holds every third of that, however slow its handler), a nack
//!   re-adds the message with its attempt count raised (after the delay) to the group's own
//!   retry stream (`sy:r:<len>:<group>:<topic>`, read beside the topic's: a retry must not
//!   reach the other groups again) and acks the old entry. A stream holds at most `max_len`
//!   entries (a million): at that length the publisher trims what every group settled and
//!   refuses while what is left is as long, instead of Redis' `MAXLEN`, which drops entries
//!   unread. Broadcast subscribers read the stream from its end (`XREAD $`).
//! - **RPC**: calls are pushed on the named service's list `sy:rpc:<ns>:<service>` and taken by
//!   one of its serving instances (`BLPOP`); the reply is published on the caller's own
//!   channel. Serving instances keep a heartbeat in `sy:rpc:<ns>:<service>:alive`, so a call
//!   nobody serves fails at once.

mod binding;
mod connection;
mod events;
mod options;

pub use options::RedisOptions;
mod registry;
pub use registry::RedisRegistry;
mod rpc;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use redis::aio::ConnectionManager;
use switchyard_core::error::{redact_url, TransportError};
use switchyard_core::transport::{
    Capabilities, DeliveryGuarantee, LinkHealth, Ordering, Requester, Responder, Transport,
};
use tokio::sync::OnceCell;

use crate::rpc::Replies;

/// The Redis transport.
pub struct RedisTransport {
    pub(crate) url: String,
    pub(crate) client: redis::Client,
    pub(crate) namespace: String,
    pub(crate) claim_idle: Duration,
    // Largest payload `publish` accepts (`?max_message_bytes=`, default 1 MiB).
    pub(crate) max_message: usize,
    // Entries a topic's stream holds at most (`?max_len=`), and what the last look at each
    // topic's stream found.
    pub(crate) max_len: u64,
    pub(crate) room: std::sync::Mutex<HashMap<String, events::Room>>,
    pub(crate) con: OnceCell<ConnectionManager>,
    pub(crate) replies: OnceCell<Arc<Replies>>,
    // When a call last found a live instance of each service (ms since the epoch): within
    // `ALIVE_FOR_MS` of it a call is pushed without asking again.
    pub(crate) seen_alive_ms: std::sync::Mutex<HashMap<Arc<str>, u64>>,
    // What the serving connections' last reads found (`connected`).
    pub(crate) links: LinkHealth,
}

/// How long a seen heartbeat spares the next calls the liveness check. Heartbeats are
/// written every second and count for 5 s, so a dead service is noticed at most one second
/// later than the heartbeat alone allows; the check costs a Lua script per call (sequential
/// calls 0.76x of a raw client with it, 0.86x without).
pub(crate) const ALIVE_FOR_MS: u64 = 1_000;

impl std::fmt::Debug for RedisTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTransport")
            .field("url", &redact_url(&self.url))
            .finish()
    }
}

impl Transport for RedisTransport {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: true,
            ordering: Ordering::None,
            delivery: DeliveryGuarantee::AtLeastOnce,
            request_reply: true,
            consumer_groups: true,
            broadcast: true,
            redelivery: true,
            services_share_url: true,
            keeps_for_later_groups: true,
            replay: true,
        }
    }

    fn url(&self) -> String {
        redact_url(&self.url)
    }

    fn requester(&self) -> Option<&dyn Requester> {
        Some(self)
    }

    fn responder(&self) -> Option<&dyn Responder> {
        Some(self)
    }

    /// redis-rs keeps no connection state to ask: this is what the last read of each consumer
    /// and RPC queue found (they read at least every half second).
    fn connected(&self) -> bool {
        self.links.connected()
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move { self.con().await.map(drop) })
    }
}
