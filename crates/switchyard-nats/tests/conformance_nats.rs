//! The NATS transport passes the conformance suite against the real server on 127.0.0.1:4222
//! (JetStream enabled). The restart case runs on its own in `nats_restart.rs`.

use std::sync::Arc;

use switchyard_core::testkit::Harness;
use switchyard_core::transport::Transport;
use switchyard_nats::NatsTransport;

fn harness() -> Harness {
    Harness::new(
        // A short ack wait: a consumer that dies mid-message hands it on within 3 s.
        || {
            format!(
                "nats://127.0.0.1:4222/conf{}?ack_wait_ms=3000",
                &switchyard_core::message::new_id()[..8]
            )
        },
        |url| Ok(Arc::new(NatsTransport::from_url(url)?) as Arc<dyn Transport>),
    )
    .require_tcp("NATS", "127.0.0.1:4222")
}

switchyard_core::conformance_suite!(harness());
