//! Named queues from configuration: a producer and a consumer of the queue `orders`, each on
//! the transport `switchyard.toml` names. By default the producer posts over HTTP and the
//! consumer reads in process — a mixed pair, bridged by a relay the consumer's side runs.
//! Point `SWITCHYARD_CONFIG` at `examples/queues-kafka.toml` (and build with
//! `--features brokers`) and the same code feeds a Kafka-backed consumer: only the file
//! changed.
//!
//! `cargo run -p switchyard-examples --example queues`

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use switchyard::{Config, Queues};

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u32,
    item: String,
}

/// What `switchyard.toml` would say when there is none: the queue `orders` produced over
/// HTTP and consumed in process.
const DEFAULT: &str = r#"
[queues.orders]
producer = "http://127.0.0.1:47311"
consumer = "mem://orders"
"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = match std::env::var_os(switchyard::CONFIG_ENV) {
        Some(_) => Config::load()?,
        None => Config::from_toml_str(DEFAULT)?,
    };
    let queues = Queues::new(config.clone());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let consumer = queues
        .consume("orders", "order-handler", move |order: Order| {
            let s = s.clone();
            async move {
                println!("handled order {} ({})", order.id, order.item);
                s.lock().unwrap_or_else(|p| p.into_inner()).push(order.id);
            }
        })
        .await?;
    let producer = queues.producer("orders")?;
    println!(
        "orders: produced to {}, consumed from {}",
        config.queue_producer("orders").unwrap_or("?"),
        config.queue_consumer("orders").unwrap_or("?")
    );
    for id in 1..=3 {
        producer
            .publish(&Order {
                id,
                item: format!("book {id}"),
            })
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap_or_else(|p| p.into_inner()).len() < 3 {
        if Instant::now() > deadline {
            return Err("the orders did not arrive within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    consumer.shutdown().await;
    println!("all 3 orders handled");
    Ok(())
}
