//! A mixed pair from configuration alone: the queue `orders` with an HTTP producer
//! and a Kafka-backed consumer (`[queues.orders]` of `switchyard.toml`). The producer's
//! publish is answered once Kafka took the event (the consumer's side relays it there); the
//! consumer gets every one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard::{Config, Queues};

mod common;
use common::free_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_producer_feeds_a_kafka_consumer_by_configuration() {
    if !switchyard::testkit::require_server("queues_mixed_pair", "Kafka", "127.0.0.1:9092") {
        return;
    }
    let run = &switchyard::message::new_id()[..8];
    let config = Config::from_toml_str(&format!(
        r#"
        [queues.orders]
        name = "orders.{run}"
        producer = "http://127.0.0.1:{}"
        consumer = "kafka://127.0.0.1:9092"
        "#,
        free_port()
    ))
    .expect("config");
    let queues = Queues::new(config);
    assert_eq!(queues.topic("orders"), format!("orders.{run}"));
    let seen = Arc::new(Mutex::new(Vec::<u32>::new()));
    let s = seen.clone();
    let consumer = queues
        .consume("orders", &format!("orders-{run}"), move |n: u32| {
            let s = s.clone();
            async move { s.lock().unwrap_or_else(|p| p.into_inner()).push(n) }
        })
        .await
        .expect("consume");
    let producer = queues.producer("orders").expect("producer");
    for n in 0..200u32 {
        producer.publish(&n).await.expect("publish");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut got = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        got.sort_unstable();
        got.dedup();
        if got.len() == 200 {
            assert_eq!(got, (0..200).collect::<Vec<_>>());
            break;
        }
        assert!(Instant::now() < deadline, "{} of 200 consumed", got.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consumer.shutdown().await;
    assert!(
        Queues::new(Config::default()).producer("nowhere").is_err(),
        "a queue nobody configured is refused"
    );
}
