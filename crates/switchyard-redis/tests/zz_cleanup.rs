//! Runs after the other Redis test files and deletes the keys their conformance runs created
//! (the machine's Redis keeps them in memory until it restarts).

#[tokio::test]
async fn delete_conformance_keys() {
    let Ok(client) = redis::Client::open("redis://127.0.0.1:6379") else {
        return;
    };
    let Ok(mut con) = client.get_multiplexed_async_connection().await else {
        return; // nothing to clean where there is no server
    };
    for pattern in [
        "sy:s:conformance.*",
        "sy:r:*conformance.*",
        "sy:rpc:conf*",
        "sy:s:held.*",
        "sy:r:*held.*",
        "sy:s:broadcast_start_*",
    ] {
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = match redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut con)
                .await
            {
                Ok(r) => r,
                Err(_) => return,
            };
            if !keys.is_empty() {
                let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query_async(&mut con).await;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
}
