//! The registry cases (`testkit::registry_conformance`) on Redis: leases as key expiries.

use std::sync::Arc;

use switchyard_core::registry::Registry;
use switchyard_core::testkit::{registry_conformance, require_server};
use switchyard_redis::RedisRegistry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_registry_passes_the_registry_cases() {
    if !require_server("redis_registry", "Redis", "127.0.0.1:6379") {
        return;
    }
    let url = format!(
        "redis://127.0.0.1:6379?ns=registry{}",
        &switchyard_core::message::new_id()[..8]
    );
    registry_conformance(|| {
        Arc::new(RedisRegistry::from_url(&url).expect("url")) as Arc<dyn Registry>
    })
    .await;
}
