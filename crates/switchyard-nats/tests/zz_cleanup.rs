//! Runs after the other NATS test files (cargo runs them in name order) and deletes the
//! streams their conformance runs created, so that repeated runs do not pile streams up on the
//! machine's NATS server.

use futures::StreamExt;

#[tokio::test]
async fn delete_conformance_streams() {
    let Ok(client) = async_nats::connect("nats://127.0.0.1:4222").await else {
        return; // nothing to clean where there is no server
    };
    let js = async_nats::jetstream::new(client);
    let mut names = js.stream_names();
    let mut ours = Vec::new();
    while let Some(Ok(name)) = names.next().await {
        if name.starts_with("SY_conformance_")
            || name.starts_with("SY_restart_")
            || name.starts_with("SY_hostile_")
            || name.starts_with("SY_soak")
            || name.starts_with("SY_crash_")
            || name.starts_with("SY_lag_")
            || name.starts_with("SY_held_")
            || name.starts_with("SY_stopping_")
            || name.starts_with("KV_sy_registry_registry")
            || name.starts_with("KV_sy_config_registry")
        {
            ours.push(name);
        }
    }
    for name in ours {
        let _ = js.delete_stream(&name).await;
    }
}
