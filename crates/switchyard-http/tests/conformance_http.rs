//! The HTTP transport passes the conformance suite.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use switchyard_core::testkit::{free_port, Harness};
use switchyard_core::transport::Transport;
use switchyard_http::HttpTransport;

/// One transport per URL: an HTTP address can be bound by one listener only, so every
/// subscriber of a case shares it (as subscribers in one process would).
static OPEN: LazyLock<Mutex<HashMap<String, Arc<dyn Transport>>>> = LazyLock::new(Default::default);

fn harness() -> Harness {
    Harness::new(
        || format!("http://127.0.0.1:{}", free_port()),
        |url| {
            let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = open.get(url) {
                return Ok(t.clone());
            }
            let t: Arc<dyn Transport> = Arc::new(HttpTransport::from_url(url)?);
            open.insert(url.to_string(), t.clone());
            Ok(t)
        },
    )
}

switchyard_core::conformance_suite!(harness());
