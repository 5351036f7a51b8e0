//! Consume throughput on RabbitMQ, Kafka, Redis and NATS JetStream: N messages already in the
//! broker, read and acknowledged one by one through a switchyard group subscription (prefetch
//! 64) against the raw client crate doing the same (lapin: `basic.qos` 64, ack each; rdkafka:
//! a StreamConsumer storing each offset after the message, auto-commit; redis: XREADGROUP of
//! up to 64, XACK each; async-nats: a durable pull consumer with 64 unacknowledged at most,
//! ack each). Each round publishes N fresh messages
//! for each side, then times each side's reading; the order alternates.
//!
//! `cargo bench --bench consume_brokers`

mod common;

use common::median;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard::transport::{SubscribeOptions, Transport};

const N_DEFAULT: usize = 20_000;
/// Messages per round; `BENCH_N` changes it (for profiling).
static N: LazyLock<usize> = LazyLock::new(|| {
    std::env::var("BENCH_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(N_DEFAULT)
});
const ROUNDS: usize = 3;

async fn ours(t: &std::sync::Arc<dyn Transport>, topic: &str) -> f64 {
    let mut sub = t
        .subscribe(topic, SubscribeOptions::group("bench").prefetch(64))
        .await
        .expect("subscribe");
    // The clock starts at the first message, on both sides: the broker's first fetch is not
    // what is measured.
    // One time limit for the whole read (a timer per message would be measured too).
    tokio::time::timeout(Duration::from_secs(120), async {
        let mut start = Instant::now();
        for i in 0..*N {
            let d = sub.next().await.expect("open").expect("delivery");
            if i == 0 {
                start = Instant::now();
            }
            std::hint::black_box(&d.envelope.payload);
            d.ack().await.expect("ack");
        }
        (*N - 1) as f64 / start.elapsed().as_secs_f64()
    })
    .await
    .expect("read in time")
}

async fn amqp_raw(queue: &str) -> f64 {
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
    use lapin::types::FieldTable;
    let conn = lapin::Connection::connect("amqp://127.0.0.1:5672/%2f", Default::default())
        .await
        .expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_qos(64, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut c = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut start = Instant::now();
    for i in 0..*N {
        let d = c.next().await.expect("open").expect("delivery");
        if i == 0 {
            start = Instant::now();
        }
        std::hint::black_box(&d.data);
        d.acker.ack(BasicAckOptions::default()).await.expect("ack");
    }
    let rate = (*N - 1) as f64 / start.elapsed().as_secs_f64();
    let _ = conn.close(200, "done".into()).await;
    rate
}

/// `headers`: also read each message's headers as text, as a plain client that wants the
/// CloudEvents attributes must (switchyard reads them into every envelope).
async fn kafka_raw(topic: &str, headers: bool) -> f64 {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:9092")
        .set("group.id", format!("raw.{topic}.{headers}"))
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "500")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    // The clock starts at the first message, as ours starts after `subscribe` joined.
    let first = c.recv().await.expect("message");
    c.store_offset_from_message(&first).expect("store");
    drop(first);
    let start = Instant::now();
    for _ in 1..*N {
        let m = c.recv().await.expect("message");
        std::hint::black_box(rdkafka::Message::payload(&m));
        if headers {
            use rdkafka::message::Headers as _;
            if let Some(hs) = rdkafka::Message::headers(&m) {
                for h in hs.iter() {
                    std::hint::black_box((h.key, h.value.map(std::str::from_utf8)));
                }
            }
        }
        c.store_offset_from_message(&m).expect("store");
    }
    (*N - 1) as f64 / start.elapsed().as_secs_f64()
}

async fn redis_raw(topic: &str) -> f64 {
    let client = redis::Client::open("redis://127.0.0.1:6379").expect("redis");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    // The stream switchyard wrote the messages to.
    let key = format!("sy:s:{topic}");
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("raw")
        .arg("0")
        .query_async(&mut con)
        .await
        .expect("group");
    let (mut read, mut start) = (0, Instant::now());
    while read < *N {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("raw")
            .arg("c")
            .arg("COUNT")
            .arg(64)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(&key)
            .arg(">")
            .query_async(&mut con)
            .await
            .expect("read");
        for entry in reply.keys.into_iter().flat_map(|k| k.ids) {
            if read == 0 {
                start = Instant::now();
            }
            read += 1;
            std::hint::black_box(entry.map.get("p"));
            let _: i64 = redis::cmd("XACK")
                .arg(&key)
                .arg("raw")
                .arg(&entry.id)
                .query_async(&mut con)
                .await
                .expect("ack");
        }
    }
    (*N - 1) as f64 / start.elapsed().as_secs_f64()
}

async fn nats_raw(topic: &str) -> f64 {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    let stream = common::nats_stored(topic).await;
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            max_ack_pending: 64,
            ..Default::default()
        })
        .await
        .expect("consumer");
    common::nats_read(consumer, *N, true).await
}

fn main() {
    common::runtime().block_on(async {
        for (name, addr, url) in [
            (
                "amqp",
                "127.0.0.1:5672",
                "amqp://127.0.0.1:5672/%2f?queue_expires_ms=60000",
            ),
            ("kafka", "127.0.0.1:9092", "kafka://127.0.0.1:9092"),
            ("redis", "127.0.0.1:6379", "redis://127.0.0.1:6379?ns=bench"),
            ("nats", "127.0.0.1:4222", "nats://127.0.0.1:4222/bench"),
        ] {
            // `BENCH_ONLY=kafka` runs one broker (for profiling).
            if std::env::var("BENCH_ONLY").is_ok_and(|only| only != name) {
                continue;
            }
            if !common::server_up(&format!("{name} consume benchmark"), addr) {
                continue;
            }
            let t = switchyard::connect(url).expect("transport");
            let (mut raw, mut our, mut ratio) = (vec![], vec![], vec![]);
            // Kafka only: the raw client also reading headers, and our ratio to it.
            let (mut raw_h, mut ratio_h) = (vec![], vec![]);
            for round in 0..ROUNDS {
                let run = &switchyard::message::new_id()[..8];
                let (raw_topic, our_topic) =
                    (format!("bench.craw.{run}"), format!("bench.cours.{run}"));
                // AMQP keeps only what reaches a queue: declare both groups' queues first.
                if name == "amqp" {
                    for topic in [&raw_topic, &our_topic] {
                        drop(
                            t.subscribe(topic, SubscribeOptions::group("bench"))
                                .await
                                .expect("declare"),
                        );
                    }
                }
                common::fill(&t, &raw_topic, *N).await;
                common::fill(&t, &our_topic, *N).await;
                let raw_once = || async {
                    match name {
                        "amqp" => amqp_raw(&format!("{raw_topic}:bench")).await,
                        "redis" => redis_raw(&raw_topic).await,
                        "nats" => nats_raw(&raw_topic).await,
                        _ => kafka_raw(&raw_topic, false).await,
                    }
                };
                let (r, o) = if round % 2 == 0 {
                    let r = raw_once().await;
                    (r, ours(&t, &our_topic).await)
                } else {
                    let o = ours(&t, &our_topic).await;
                    (raw_once().await, o)
                };
                raw.push(r);
                our.push(o);
                ratio.push(o / r);
                common::delete_stored(name, &[&raw_topic, &our_topic]).await;
                if name == "kafka" {
                    // A second group reads the same stored messages.
                    let rh = kafka_raw(&raw_topic, true).await;
                    raw_h.push(rh);
                    ratio_h.push(o / rh);
                }
            }
            println!(
                "{name}: consume {} stored messages, ack each (median of {ROUNDS} rounds):",
                *N
            );
            println!("  raw client  {:>9.0} msg/s", median(raw));
            if !raw_h.is_empty() {
                println!("  raw client reading headers  {:>9.0} msg/s", median(raw_h));
            }
            println!(
                "  switchyard  {:>9.0} msg/s  ({:.2}x)",
                median(our),
                median(ratio)
            );
            if !ratio_h.is_empty() {
                println!(
                    "  switchyard / raw reading headers  {:.2}x",
                    median(ratio_h)
                );
            }
        }
    });
}
