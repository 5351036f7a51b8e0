//! A thousand instances on etcd (`testkit::registry_at_scale`): registered, watched, held
//! through busy handlers, removed.

use std::sync::Arc;

use switchyard_core::registry::Registry;
use switchyard_core::testkit::{registry_at_scale, require_server};
use switchyard_etcd::EtcdRegistry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_instances_on_etcd() {
    if !require_server("etcd_scale", "etcd", "127.0.0.1:2379") {
        return;
    }
    let url = format!(
        "etcd://127.0.0.1:2379/scale{}",
        &switchyard_core::message::new_id()[..8]
    );
    registry_at_scale(
        || Arc::new(EtcdRegistry::from_url(&url).expect("url")) as Arc<dyn Registry>,
        1_000,
        10,
    )
    .await;
}
