//! The RabbitMQ transport passes the conformance suite against the real broker on
//! 127.0.0.1:5672.

use std::sync::Arc;

use switchyard_amqp::AmqpTransport;
use switchyard_core::testkit::Harness;
use switchyard_core::transport::Transport;

fn harness() -> Harness {
    Harness::new(
        // Group queues of a run are deleted by the broker a minute after their last consumer.
        || {
            format!(
                "amqp://guest:guest@127.0.0.1:5672/%2f?ns=conf{}&queue_expires_ms=60000",
                &switchyard_core::message::new_id()[..8]
            )
        },
        |url| Ok(Arc::new(AmqpTransport::from_url(url)?) as Arc<dyn Transport>),
    )
    .require_tcp("RabbitMQ", "127.0.0.1:5672")
}

switchyard_core::conformance_suite!(harness());
