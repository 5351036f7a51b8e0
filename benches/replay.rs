//! Reading a topic from its beginning, as a view does at start-up, on Kafka, NATS JetStream
//! and Redis Streams: N messages already stored, read by the raw client crate (rdkafka: a
//! consumer assigned every partition from the beginning, nothing committed; async-nats: an
//! ephemeral pull consumer delivering all, no acks; redis: `XREAD` from `0-0`, 512 at a time)
//! against switchyard's `event_log::EventLog` (the log subscription, each message's place
//! read from its header) and a `View` folding each event into a count (the log reader's
//! layers, one event at a time in the log's order, until the view is ready). The clock starts
//! at the first message on every side; the order of the sides turns each round.
//!
//! `cargo bench --bench replay` (`BENCH_ONLY=kafka|nats|redis`, `BENCH_N` messages,
//! `BENCH_SIDES=raw,log,view`)

mod common;

use common::median;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use switchyard::event_log::{EventLog, View};
use switchyard::transport::Transport;
use switchyard::Envelope;

const N_DEFAULT: usize = 20_000;
static N: LazyLock<usize> = LazyLock::new(|| {
    std::env::var("BENCH_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(N_DEFAULT)
});
const ROUNDS: usize = 3;

/// Messages a second from the first to the `N`th.
fn rate(start: Instant) -> f64 {
    (*N - 1) as f64 / start.elapsed().as_secs_f64()
}

async fn event_log(t: &Arc<dyn Transport>, topic: &str) -> f64 {
    let mut log = EventLog::open(t.as_ref(), topic, None)
        .await
        .expect("open the log");
    let mut start = Instant::now();
    for i in 0..*N {
        let e = log.next().await.expect("open").expect("message");
        if i == 0 {
            start = Instant::now();
        }
        std::hint::black_box(&e.payload);
    }
    assert!(log.caught_up(), "read all the log held");
    rate(start)
}

async fn view(t: &Arc<dyn Transport>, topic: &str) -> f64 {
    let first: Arc<Mutex<Option<Instant>>> = Arc::default();
    let seen = first.clone();
    let running = View::new("bench", 0u64, move |count: &mut u64, e: &Envelope| {
        if *count == 0 {
            if let Ok(mut first) = seen.lock() {
                first.get_or_insert_with(Instant::now);
            }
        }
        std::hint::black_box(&e.payload);
        *count += 1;
        Ok(())
    })
    .start(t.clone(), topic)
    .await
    .expect("start the view");
    let reader = running.reader();
    tokio::time::timeout(Duration::from_secs(120), reader.ready())
        .await
        .expect("ready in time");
    let start = first.lock().expect("lock").expect("a first event");
    let r = rate(start);
    assert_eq!(reader.read(|c| *c) as usize, *N);
    running.stop().await;
    r
}

async fn kafka_raw(topic: &str) -> f64 {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::{Offset, TopicPartitionList};
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:9092")
        .set("group.id", format!("raw-replay-{topic}"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .expect("partition");
        }
    }
    c.assign(&tpl).expect("assign");
    let mut start = Instant::now();
    for i in 0..*N {
        let m = c.recv().await.expect("message");
        if i == 0 {
            start = Instant::now();
        }
        std::hint::black_box(rdkafka::Message::payload(&m));
    }
    rate(start)
}

async fn nats_raw(topic: &str) -> f64 {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    let stream = common::nats_stored(topic).await;
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::None,
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("consumer");
    common::nats_read(consumer, *N, false).await
}

async fn redis_raw(topic: &str) -> f64 {
    let client = redis::Client::open("redis://127.0.0.1:6379").expect("redis");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    // The stream switchyard wrote the messages to.
    let key = format!("sy:s:{topic}");
    let (mut read, mut last, mut start) = (0, "0-0".to_string(), Instant::now());
    while read < *N {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(512)
            .arg("STREAMS")
            .arg(&key)
            .arg(&last)
            .query_async(&mut con)
            .await
            .expect("read");
        for entry in reply.keys.into_iter().flat_map(|k| k.ids) {
            if read == 0 {
                start = Instant::now();
            }
            read += 1;
            std::hint::black_box(entry.map.get("p"));
            last = entry.id;
        }
    }
    rate(start)
}

fn main() {
    common::runtime().block_on(async {
        for (name, addr, url) in [
            ("kafka", "127.0.0.1:9092", "kafka://127.0.0.1:9092"),
            ("nats", "127.0.0.1:4222", "nats://127.0.0.1:4222/bench"),
            ("redis", "127.0.0.1:6379", "redis://127.0.0.1:6379?ns=bench"),
        ] {
            if std::env::var("BENCH_ONLY").is_ok_and(|only| only != name) {
                continue;
            }
            if !common::server_up(&format!("{name} replay benchmark"), addr) {
                continue;
            }
            let t = switchyard::connect(url).expect("transport");
            let (mut raw, mut logs, mut views) = (vec![], vec![], vec![]);
            for round in 0..ROUNDS {
                let topic = format!("bench.replay.{}", &switchyard::message::new_id()[..8]);
                common::fill(&t, &topic, *N).await;
                // Every side reads the same stored messages; who reads first turns.
                let mut order = ["raw", "log", "view"];
                order.rotate_left(round % 3);
                // `BENCH_SIDES=log,view` runs some of the sides (for profiling).
                let sides = std::env::var("BENCH_SIDES").unwrap_or_default();
                for side in order
                    .into_iter()
                    .filter(|s| sides.is_empty() || sides.contains(s))
                {
                    match side {
                        "raw" => raw.push(match name {
                            "kafka" => kafka_raw(&topic).await,
                            "nats" => nats_raw(&topic).await,
                            _ => redis_raw(&topic).await,
                        }),
                        "log" => logs.push(event_log(&t, &topic).await),
                        _ => views.push(view(&t, &topic).await),
                    }
                }
                common::delete_stored(name, &[&topic]).await;
            }
            if raw.is_empty() || logs.is_empty() || views.is_empty() {
                continue;
            }
            let ratios = |ours: &[f64]| median(ours.iter().zip(&raw).map(|(o, r)| o / r).collect());
            println!(
                "{name}: read {} stored messages from the beginning (median of {ROUNDS} rounds):",
                *N
            );
            println!("  raw client      {:>9.0} msg/s", median(raw.clone()));
            println!(
                "  EventLog        {:>9.0} msg/s  ({:.2}x)",
                median(logs.clone()),
                ratios(&logs)
            );
            println!(
                "  View (a count)  {:>9.0} msg/s  ({:.2}x)",
                median(views.clone()),
                ratios(&views)
            );
        }
    });
}
