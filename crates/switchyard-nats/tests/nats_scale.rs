//! A thousand instances on NATS KV (`testkit::registry_at_scale`): registered, watched, held
//! through busy handlers, removed.

use std::sync::Arc;

use switchyard_core::registry::Registry;
use switchyard_core::testkit::{registry_at_scale, require_server};
use switchyard_nats::NatsRegistry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_instances_on_nats_kv() {
    if !require_server("nats_scale", "NATS", "127.0.0.1:4222") {
        return;
    }
    let url = format!(
        "nats://127.0.0.1:4222/scale{}",
        &switchyard_core::message::new_id()[..8]
    );
    registry_at_scale(
        || Arc::new(NatsRegistry::from_url(&url).expect("url")) as Arc<dyn Registry>,
        1_000,
        10,
    )
    .await;
}
