//! RabbitMQ transport for switchyard (`amqp://USER:PASS@HOST:PORT/VHOST[?ns=NAME]`). Not for
//! direct use; see the `switchyard` crate.
//!
//! - **Events** are published, persistent and with publisher confirms, to the durable topic
//!   exchange `sy.events` with the topic as routing key. A consumer group is the durable
//!   queue `<topic>:<group>` bound to it (its members compete for its messages); a broadcast
//!   subscriber gets an exclusive, auto-deleted queue of its own. Deliveries are acked after
//!   the handler succeeds; prefetch (`basic.qos`) bounds what is in flight; a nack re-publishes
//!   the message to its queue after the delay with `x-attempt` raised, then acks the original;
//!   a delivery dropped unsettled is requeued at once.
//! - **RPC** goes to the named service's queue `sy.rpc.<ns>.<service>`, declared auto-delete
//!   by its serving instances, which share it. Calls are published `mandatory` with a correlation id and RabbitMQ's
//!   direct reply-to, so a call that no instance serves comes back at once (`Unreachable`)
//!   instead of waiting out its timeout; a call's remaining time becomes its `expiration`, so
//!   a call nobody took in time is dropped by the broker rather than run late.
//! - Headers travel as AMQP headers; events carry CloudEvents attributes as
//!   `cloudEvents:<attr>` headers, `message_id` and `content_type`, as the CloudEvents AMQP
//!   binding lays them out, so a plain client (pika) reads and writes them.
//! - The connection is re-opened when it breaks; subscriptions re-attach by themselves.
//!   Messages a broken channel held unacked are redelivered by the broker.

mod binding;
mod connection;
mod events;
mod options;

pub use options::AmqpOptions;
mod rpc;

use std::sync::Arc;

use futures::future::BoxFuture;

use switchyard_core::error::{redact_url, TransportError};
use switchyard_core::transport::{
    Capabilities, DeliveryGuarantee, Ordering, Requester, Responder, Transport,
};

use crate::connection::*;

/// The RabbitMQ transport.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use switchyard_core::Client;
/// let amqp = Arc::new(switchyard_amqp::AmqpTransport::from_url("amqp://guest:guest@127.0.0.1:5672/%2f?ns=app1")?);
/// let reply: String = Client::new(amqp).service("app1").call("/helloworld", "Mr. Developer".to_string()).await?;
/// # Ok(()) }
/// ```
pub struct AmqpTransport {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpTransport")
            .field("url", &redact_url(&self.inner.url))
            .finish()
    }
}

impl Transport for AmqpTransport {
    fn name(&self) -> &'static str {
        "amqp"
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
            replay: false,
        }
    }

    fn url(&self) -> String {
        redact_url(&self.inner.url)
    }

    fn requester(&self) -> Option<&dyn Requester> {
        Some(self)
    }

    fn responder(&self) -> Option<&dyn Responder> {
        Some(self)
    }

    fn connected(&self) -> bool {
        self.inner.link.lock().is_ok_and(|link| {
            link.as_ref()
                .is_some_and(|l| l.connection.status().connected())
        })
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move { self.inner.link().await.map(drop) })
    }
}
