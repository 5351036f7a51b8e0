//! The Redis transport passes the conformance suite against the real server on
//! 127.0.0.1:6379.

use std::sync::Arc;

use switchyard_core::testkit::Harness;
use switchyard_core::transport::Transport;
use switchyard_redis::RedisTransport;

fn harness() -> Harness {
    Harness::new(
        // A dead consumer's messages are taken over after 2 s.
        || {
            format!(
                "redis://127.0.0.1:6379?ns=conf{}&claim_idle_ms=2000",
                &switchyard_core::message::new_id()[..8]
            )
        },
        |url| Ok(Arc::new(RedisTransport::from_url(url)?) as Arc<dyn Transport>),
    )
    .require_tcp("Redis", "127.0.0.1:6379")
}

switchyard_core::conformance_suite!(harness());
