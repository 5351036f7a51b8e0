//! Events with retries and a dead-letter topic: a handler that fails twice succeeds on the
//! third delivery; a payload that cannot decode goes straight to `orders.dlq` with the error.
//!
//! `cargo run --example events`

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use switchyard::consumer::ConsumerPolicy;
use switchyard::transport::SubscribeOptions;
use switchyard::{Client, Envelope, HandlerError, Service};

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u32,
    item: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let transport = switchyard::connect("mem://events-example")?;
    let failures = Arc::new(AtomicU32::new(0));
    let f = failures.clone();
    let service = Service::new("orders")
        .consumer_policy(ConsumerPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(20),
            ..ConsumerPolicy::default()
        })
        .on_event("orders", move |order: Order| {
            let f = f.clone();
            async move {
                if f.fetch_add(1, Ordering::SeqCst) < 2 {
                    println!("order {} failed (will be retried)", order.id);
                    return Err(HandlerError::unavailable("warehouse offline"));
                }
                println!("order {} handled: {}", order.id, order.item);
                Ok(())
            }
        });
    let mut dead = transport
        .subscribe("orders.dlq", SubscribeOptions::group("ops"))
        .await?;
    let server = switchyard::serve(&transport, service).await?;

    let client = Client::new(transport.clone());
    client
        .publish(
            "orders",
            &Order {
                id: 1,
                item: "book".into(),
            },
        )
        .await?;
    client
        .publish_envelope(Envelope::new("orders", "{\"id\": \"not a number\"}"))
        .await?;

    let letter = tokio::time::timeout(Duration::from_secs(5), dead.next())
        .await?
        .ok_or("closed")??;
    println!(
        "dead letter: {}",
        letter.envelope.headers.get("x-error").unwrap_or("?")
    );
    letter.ack().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.shutdown().await;
    Ok(())
}
