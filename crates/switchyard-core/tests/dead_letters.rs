//! Kept dead letters read back, grouped by cause and replayed once (`testkit::dead_letters_replayed_once`), in process.

use std::sync::Arc;

use switchyard_core::mem::MemTransport;
use switchyard_core::testkit::dead_letters_replayed_once;
use switchyard_core::transport::Transport;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed_once_in_process() {
    dead_letters_replayed_once(
        || Arc::new(MemTransport::new("dead-letters")) as Arc<dyn Transport>,
        300,
        20,
        1_000.0,
    )
    .await;
}
