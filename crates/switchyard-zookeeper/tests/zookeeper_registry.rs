//! The registry cases (`testkit::registry_conformance`) on ZooKeeper (`scripts/zookeeper.sh`
//! starts one on 127.0.0.1:2181): ephemeral records, persistent recursive watches, versioned
//! compare-and-set, and the layout of services, their instances and their subscribers.

use std::sync::Arc;
use std::time::Duration;

use switchyard_core::registry::{Instance, Registry};
use switchyard_core::testkit::{registry_conformance, require_server};
use switchyard_zookeeper::ZkRegistry;

const ZK: &str = "127.0.0.1:2181";

fn namespace() -> String {
    format!("registry{}", &switchyard_core::message::new_id()[..8])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_registry_passes_the_registry_cases() {
    if !require_server("zookeeper_registry", "ZooKeeper", ZK) {
        return;
    }
    let url = format!("zk://{ZK}/{}", namespace());
    registry_conformance(|| {
        Arc::new(ZkRegistry::from_url(&url).expect("url")) as Arc<dyn Registry>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_dropped_without_deregistering_takes_its_instances_with_it() {
    if !require_server("zookeeper_session", "ZooKeeper", ZK) {
        return;
    }
    // The handle's session ends with it, and its ephemeral records go though their own
    // leases are long. (A process killed, whose session expires instead, is `yard serve`'s
    // case in the CLI's tests.)
    let url = format!("zk://{ZK}/{}?session_timeout_ms=1000", namespace());
    let watcher = ZkRegistry::from_url(&url).expect("url");
    {
        let doomed = ZkRegistry::from_url(&url).expect("url");
        let one = Instance::new("books", "one", ["http://127.0.0.1:1".to_string()]);
        doomed
            .register(&one, Duration::from_secs(60))
            .await
            .expect("register");
        assert_eq!(watcher.list(Some("books")).await.expect("list"), vec![one]);
        // Dropped without deregistering; its session is left to expire.
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !watcher.list(Some("books")).await.expect("list").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the record outlived its handle"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn a_url_names_the_servers_and_the_namespace() {
    for bad in [
        "zk://",
        "etcd://h:2181",
        "zk://h/a/b",
        "zk://h?color=red",
        "zk://h?session_timeout_ms=x",
    ] {
        assert!(ZkRegistry::from_url(bad).is_err(), "{bad} refused");
    }
    let r = ZkRegistry::from_url("zk://a:2181,b/shop").expect("url");
    assert_eq!(r.url(), "zk://a:2181,b/shop");
}
