//! The registry cases (`testkit::registry_conformance`) on NATS KV.

use std::sync::Arc;

use switchyard_core::registry::Registry;
use switchyard_core::testkit::{registry_conformance, require_server};
use switchyard_nats::NatsRegistry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_kv_registry_passes_the_registry_cases() {
    if !require_server("nats_registry", "NATS", "127.0.0.1:4222") {
        return;
    }
    let url = format!(
        "nats://127.0.0.1:4222/registry{}",
        &switchyard_core::message::new_id()[..8]
    );
    registry_conformance(|| {
        Arc::new(NatsRegistry::from_url(&url).expect("url")) as Arc<dyn Registry>
    })
    .await;
}
