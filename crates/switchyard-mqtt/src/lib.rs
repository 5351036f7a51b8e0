//! MQTT 5 transport for switchyard (`mqtt://[USER:PASS@]HOST:PORT[?ns=NAME]`), via rumqttc.
//! Not for direct use; see the `switchyard` crate.
//!
//! - **Events** are published at QoS 1 on the topic itself; `publish` returns once the
//!   broker's PUBACK came. A consumer group is the shared subscription `$share/<group>/<topic>`;
//!   a broadcast subscriber subscribes to the topic. Subscribers take messages at QoS 0 with
//!   at most `prefetch` waiting in the client; past that the client stops reading and TCP
//!   pushes back on the broker (at QoS 1 Mosquitto silently drops what a lagging subscriber
//!   has not taken beyond its queue limit). MQTT has no
//!   negative acknowledgement, so a nack re-publishes the message, after the delay and with
//!   `x-attempt` raised, on a retry topic only its group (or subscriber) listens to
//!   (`sy/retry/<group>/<topic>`), then acknowledges the original.
//! - **RPC** publishes the call at QoS 1 on `sy/rpc/<ns>/<service>/<route>` with an MQTT 5
//!   response topic (this client's `sy/reply/<id>`) and correlation data; the instances of a
//!   service share its calls through `$share/<service>/…`. A call nobody serves fails at once: the broker's PUBACK says "no matching
//!   subscribers". The call's remaining time becomes its message expiry.
//! - Headers travel as MQTT 5 user properties; events carry CloudEvents attributes as user
//!   properties and the content type in the Content Type property (the CloudEvents MQTT 5
//!   binding, binary mode), so a plain client (paho) reads and writes them.
//! - Sessions are clean: a message is kept for subscribers connected when it is published, so
//!   the transport does not declare itself durable.

mod binding;
mod connection;
mod events;
mod options;

pub use options::MqttOptions;
mod rpc;

use std::sync::Arc;

use futures::future::BoxFuture;

use switchyard_core::error::{redact_url, TransportError};

use switchyard_core::transport::{
    Capabilities, DeliveryGuarantee, Ordering, Requester, Responder, Transport,
};

use crate::connection::*;

/// The MQTT 5 transport.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use switchyard_core::Client;
/// let mqtt = Arc::new(switchyard_mqtt::MqttTransport::from_url("mqtt://127.0.0.1:1883?ns=app1")?);
/// let reply: String = Client::new(mqtt).service("app1").call("/helloworld", "Mr. Developer".to_string()).await?;
/// # Ok(()) }
/// ```
pub struct MqttTransport {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for MqttTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttTransport")
            .field("url", &redact_url(&self.inner.url))
            .finish()
    }
}

impl Transport for MqttTransport {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // Clean sessions: a message reaches the subscribers connected when it is
            // published; one that dies mid-message loses it (no other member gets it).
            durable: false,
            ordering: Ordering::None,
            delivery: DeliveryGuarantee::AtMostOnce,
            request_reply: true,
            consumer_groups: true,
            broadcast: true,
            // A nack (and a handler error) is redelivered through the retry topic.
            redelivery: true,
            services_share_url: true,
            keeps_for_later_groups: false,
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

    /// rumqttc keeps no connection state to ask: this is what the event loops of the
    /// consumers and the RPC server last said (lost on an error, back on the CONNACK).
    fn connected(&self) -> bool {
        self.inner.links.connected()
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move { self.inner.lane().await.map(drop) })
    }
}
