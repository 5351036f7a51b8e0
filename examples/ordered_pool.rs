//! microservices_connector's ordering demo: many workers, and each id's items still come out in order.
//!
//! `cargo run --example ordered_pool`

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use switchyard::pool::{KeyedPool, PoolConfig};

const POLL: &[(u32, &str)] = &[
    (1, "Nguyen"),
    (1, "Minh"),
    (1, "Tuan"),
    (2, "Vu"),
    (3, "Ai do khac"),
    (2, "Kim"),
    (2, "Oanh"),
    (4, "1"),
    (4, "2"),
    (4, "3"),
    (4, "4"),
    (4, "5"),
    (4, "6"),
    (4, "7"),
    (4, "8"),
    (5, "101"),
    (5, "102"),
    (5, "103"),
    (5, "104"),
    (5, "105"),
    (6, "Test watching"),
    (6, "Test watching"),
    (7, "Test watching"),
    (8, "Test watching"),
    (9, "Test watching"),
    (10, "Test watching"),
    (11, "Test watching"),
    (12, "Test watching"),
    (13, "Test watching"),
    (14, "Test watching"),
    (15, "Test watching"),
    (16, "Test watching"),
    (17, "Test watching"),
    (18, "Test watching"),
    (19, "Test watching"),
    (20, "Test watching"),
    (21, "Test watching"),
    (22, "Test watching"),
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (pool, results) = KeyedPool::<u32, String>::new(PoolConfig {
        workers: 4,
        max_in_flight: 100,
    });
    let printer = tokio::spawn(results.collect::<Vec<_>>());
    for (i, (id, x)) in POLL.iter().copied().enumerate() {
        pool.submit(Some(id), async move {
            // Later items of a key finish faster: without the pool's ordering they would overtake.
            tokio::time::sleep(Duration::from_millis(20 - (i as u64 % 20))).await;
            Ok::<_, String>(format!("working on {{'id': {id}, 'x': '{x}'}}"))
        })
        .await?;
    }
    pool.shutdown().await;
    let mut by_key: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for r in printer.await? {
        by_key
            .entry(r.key.unwrap_or_default())
            .or_default()
            .push(r.outcome?);
    }
    for (id, items) in by_key.iter().filter(|(id, _)| **id <= 5) {
        println!("id {id}: {}", items.join(" | "));
    }
    println!(
        "{} items, {} ids, each id in submission order",
        POLL.len(),
        by_key.len()
    );
    Ok(())
}
