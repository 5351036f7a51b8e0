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
//! - **RPC** publishes the call at QoS 1 on `sy/rpc/<ns>/<route>` with an MQTT 5 response topic
//!   (this client's `sy/reply/<id>`) and correlation data; instances share the calls through
//!   `$share/<ns>/…`. A call nobody serves fails at once: the broker's PUBACK says "no matching
//!   subscribers". The call's remaining time becomes its message expiry.
//! - Headers travel as MQTT 5 user properties; events carry CloudEvents attributes as user
//!   properties and the content type in the Content Type property (the CloudEvents MQTT 5
//!   binding, binary mode), so a plain client (paho) reads and writes them.
//! - Sessions are clean: a message is kept for subscribers connected when it is published, so
//!   the transport does not declare itself durable.

mod transport;

pub use transport::MqttTransport;
