//! The in-process transport passes the conformance suite.

use std::sync::Arc;

use switchyard_core::mem::MemTransport;
use switchyard_core::testkit::Harness;
use switchyard_core::transport::Transport;

fn harness() -> Harness {
    Harness::new(
        || format!("mem://conformance-{}", switchyard_core::message::new_id()),
        |url| Ok(Arc::new(MemTransport::from_url(url)?) as Arc<dyn Transport>),
    )
}

switchyard_core::conformance_suite!(harness());
