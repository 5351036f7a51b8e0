//! The registry cases on the embedded backends: in process (`mem://`) and in a folder
//! (`file://`), each handle made anew as another process would.

use std::sync::Arc;

use switchyard_core::registry::{self, Registry};
use switchyard_core::testkit::registry_conformance;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process() {
    registry_conformance(|| registry::connect("mem://conformance").expect("mem")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_folder() {
    let dir = std::env::temp_dir().join(format!(
        "switchyard-registry-{}",
        &switchyard_core::message::new_id()[..8]
    ));
    let url = format!("file://{}", dir.display());
    registry_conformance(|| registry::connect(&url).expect("file")).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn registry_urls_are_checked() {
    for bad in ["mem://", "file://", "etcd-ish://x", "nonsense"] {
        let err = registry::connect(bad).expect_err(bad);
        assert!(err.to_string().contains("invalid registry URL"), "{err}");
    }
    let ok: Arc<dyn Registry> = registry::connect("file:///tmp/x").expect("file");
    assert_eq!(ok.url(), "file:///tmp/x");
}
