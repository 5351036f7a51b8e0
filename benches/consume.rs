//! Ordered consumption (per-key order, keys in parallel) against unordered consumption on the
//! same transport: 20,000 messages over 1,000 keys, published first, then timed from the
//! moment the service starts until every handler ran. In process, and on each broker whose
//! server is up (NATS, Redis, RabbitMQ, Kafka, MQTT). `BENCH_ONLY=amqp` runs one.
//!
//! `cargo bench --bench consume`

mod common;

use common::median;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard::consumer::ConsumerPolicy;
use switchyard::message::header;
use switchyard::{Envelope, Service};

const MESSAGES: usize = 20_000;
const KEYS: usize = 1_000;

async fn once(url: &str, ordered: bool) -> f64 {
    let topic = format!("bench.consume.{}", &switchyard::message::new_id()[..8]);
    let transport = switchyard::connect(url).expect("transport");
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let service = Service::new(format!("consume-{}", &switchyard::message::new_id()[..8]))
        .consumer_policy(ConsumerPolicy {
            ordered_by_key: ordered,
            concurrency: 64,
            ..ConsumerPolicy::default()
        })
        .on_event(&topic, move |_v: serde_json::Value| {
            let h = h.clone();
            async move {
                tokio::task::yield_now().await;
                h.fetch_add(1, Ordering::Relaxed);
            }
        });
    // Subscribe the group first (serve), then publish, then time the draining.
    let start = Instant::now();
    let server = switchyard::serve(&transport, service).await.expect("serve");
    let publisher = switchyard::connect(url).expect("transport");
    futures::stream::iter(0..MESSAGES)
        .for_each_concurrent(256, |i| {
            let p = publisher.clone();
            let topic = topic.clone();
            async move {
                let env = Envelope::new(topic.as_str(), format!(r#"{{"i":{i}}}"#))
                    .with_header(header::ORDERING_KEY, format!("k{}", i % KEYS));
                p.publish(env).await.expect("publish");
            }
        })
        .await;
    while handled.load(Ordering::Relaxed) < MESSAGES {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "{url}: only {} of {MESSAGES} handled",
            handled.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = start.elapsed();
    server.shutdown().await;
    MESSAGES as f64 / took.as_secs_f64()
}

fn main() {
    common::runtime().block_on(async {
        let mut urls = vec!["mem://bench-consume".to_string()];
        for (name, addr, url) in [
            (
                "nats",
                "127.0.0.1:4222",
                "nats://127.0.0.1:4222/benchconsume",
            ),
            (
                "redis",
                "127.0.0.1:6379",
                "redis://127.0.0.1:6379?ns=benchconsume",
            ),
            (
                "amqp",
                "127.0.0.1:5672",
                "amqp://127.0.0.1:5672/%2f?queue_expires_ms=60000",
            ),
            ("kafka", "127.0.0.1:9092", "kafka://127.0.0.1:9092"),
            ("mqtt", "127.0.0.1:1883", "mqtt://127.0.0.1:1883"),
        ] {
            if common::server_up(&format!("{name} part"), addr) {
                urls.push(url.into());
            }
        }
        if let Ok(only) = std::env::var("BENCH_ONLY") {
            urls.retain(|u| u.starts_with(&format!("{only}://")));
        }
        for url in urls {
            let (mut u, mut o, mut ratio) = (vec![], vec![], vec![]);
            for round in 0..3 {
                let (a, b) = if round % 2 == 0 {
                    (false, true)
                } else {
                    (true, false)
                };
                let x = once(&url, a).await;
                let y = once(&url, b).await;
                let (un, or) = if round % 2 == 0 { (x, y) } else { (y, x) };
                u.push(un);
                o.push(or);
                ratio.push(or / un);
            }
            println!(
                "{url}: publish + consume {MESSAGES} messages over {KEYS} keys (median of 3):"
            );
            println!("  unordered (baseline)  {:>9.0} msg/s", median(u));
            println!(
                "  ordered by key        {:>9.0} msg/s  ({:.2}x)",
                median(o),
                median(ratio)
            );
        }
    });
}
