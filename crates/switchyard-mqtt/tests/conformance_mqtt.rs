//! The MQTT transport passes the conformance suite against the real Mosquitto on
//! 127.0.0.1:1883.

use std::sync::Arc;

use switchyard_core::testkit::Harness;
use switchyard_core::transport::Transport;
use switchyard_mqtt::MqttTransport;

fn harness() -> Harness {
    Harness::new(
        || {
            format!(
                "mqtt://127.0.0.1:1883?ns=conf{}",
                &switchyard_core::message::new_id()[..8]
            )
        },
        |url| Ok(Arc::new(MqttTransport::from_url(url)?) as Arc<dyn Transport>),
    )
    .require_tcp("Mosquitto", "127.0.0.1:1883")
}

switchyard_core::conformance_suite!(harness());
