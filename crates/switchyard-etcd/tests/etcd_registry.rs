//! The registry cases (`testkit::registry_conformance`) on etcd (`scripts/etcd.sh` starts one
//! on 127.0.0.1:2379): leases, pushed watches, compare-and-set on a key's version.

use std::sync::Arc;

use switchyard_core::registry::Registry;
use switchyard_core::testkit::{registry_conformance, require_server};
use switchyard_etcd::EtcdRegistry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_registry_passes_the_registry_cases() {
    if !require_server("etcd_registry", "etcd", "127.0.0.1:2379") {
        return;
    }
    let url = format!(
        "etcd://127.0.0.1:2379/registry{}",
        &switchyard_core::message::new_id()[..8]
    );
    registry_conformance(|| {
        Arc::new(EtcdRegistry::from_url(&url).expect("url")) as Arc<dyn Registry>
    })
    .await;
}

#[test]
fn a_url_names_the_server_and_the_namespace() {
    for bad in [
        "etcd://",
        "http://127.0.0.1:2379",
        "etcd://h?ns=a/b",
        "etcd://h?color=red",
    ] {
        assert!(EtcdRegistry::from_url(bad).is_err(), "{bad} refused");
    }
    let r = EtcdRegistry::from_url("etcd://127.0.0.1:2379/shop").expect("url");
    assert_eq!(r.url(), "etcd://127.0.0.1:2379/shop");
}
