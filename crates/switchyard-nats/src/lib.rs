//! NATS transport for switchyard (`nats://HOST:PORT[?ns=NAMESPACE]`). Not for direct use; see
//! the `switchyard` crate.
//!
//! - **RPC** uses core NATS request/reply on `sy.rpc.<namespace>.<service>.<route>` (route
//!   `/a/b` → `a.b`, a `.` inside a segment written `%2E`); every instance of a service joins
//!   the queue group named after the service, so calls are shared among its instances and
//!   never reach another service. A call nobody serves fails at once (NATS "no responders").
//! - **Events** go through JetStream: one stream per topic (`SY_<topic>`, file storage), a
//!   durable pull consumer per consumer group, an ephemeral one per broadcast subscriber.
//!   Publishing waits for the stream's acknowledgement; deliveries are acked after the
//!   handler succeeds, nacked with a delay for redelivery, and a delivery dropped unsettled is
//!   nacked at once.
//! - Headers travel as NATS headers; events carry CloudEvents attributes as `ce-*` headers
//!   (the CloudEvents NATS binding, binary mode).

mod binding;
mod connection;
mod events;
mod options;
mod registry;
pub use registry::NatsRegistry;

pub use options::NatsOptions;
mod rpc;

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream;
use futures::future::BoxFuture;
use switchyard_core::error::{redact_url, TransportError};
use switchyard_core::transport::{
    Capabilities, DeliveryGuarantee, Ordering, Requester, Responder, Transport,
};
use tokio::sync::OnceCell;

use crate::connection::Replies;

/// The NATS transport.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use switchyard_core::Client;
/// let nats = Arc::new(switchyard_nats::NatsTransport::from_url("nats://127.0.0.1:4222")?);
/// let reply: String = Client::new(nats).service("app1").call("/helloworld", "Mr. Developer".to_string()).await?;
/// # Ok(()) }
/// ```
pub struct NatsTransport {
    pub(crate) url: String,
    pub(crate) server: String,
    pub(crate) namespace: String,
    pub(crate) client: OnceCell<async_nats::Client>,
    pub(crate) control: OnceCell<async_nats::Client>,
    // Topics whose stream is known to exist; checked on every publish, so a plain lock.
    pub(crate) streams: std::sync::Mutex<HashSet<String>>,
    pub(crate) js: OnceCell<jetstream::Context>,
    pub(crate) replies: OnceCell<Replies>,
    pub(crate) ack_wait: Duration,
    // Largest message `publish` accepts, below the server's own `max_payload`.
    pub(crate) max_message: usize,
    pub(crate) tls: bool,
    pub(crate) tls_ca: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport")
            .field("url", &redact_url(&self.url))
            .finish()
    }
}

impl Transport for NatsTransport {
    fn name(&self) -> &'static str {
        "nats"
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

    fn connected(&self) -> bool {
        self.client
            .get()
            .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected)
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move { self.client().await.map(drop) })
    }
}
