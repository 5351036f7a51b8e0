//! What the raw-against-switchyard benchmarks share: the runtime, rounds of callers timed
//! with their latencies, alternating comparisons, medians. Each benchmark is its own crate
//! and uses part of this, hence `dead_code` allowed.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

/// The runtime every benchmark runs on: two workers, as this machine has two cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Whether something listens at `addr`; if not, says loudly that `what` is skipped (a broker
/// benchmark with no broker to measure).
pub fn server_up(what: &str, addr: &str) -> bool {
    let up = std::net::TcpStream::connect(addr).is_ok();
    if !up {
        eprintln!("SKIPPED {what}: nothing on {addr} (scripts/services.sh, scripts/tansu.sh)");
    }
    up
}

/// The median (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `workers` tasks calling `once` in a loop for `length`: operations per second and the
/// median latency of one operation.
pub async fn round<F, Fut>(workers: usize, length: Duration, once: F) -> (f64, Duration)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let once = once.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while start.elapsed() < length {
                let t = Instant::now();
                once().await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("benchmark task"));
    }
    all.sort_unstable();
    (
        all.len() as f64 / start.elapsed().as_secs_f64(),
        all[all.len() / 2],
    )
}

/// `rounds` alternating rounds of the raw side and ours (who goes first alternates, so that
/// neither always gets the warmer machine); prints each side's median rate and p50 and the
/// median of the per-round ratios.
pub async fn compare<R, RF, O, OF>(
    label: &str,
    raw_name: &str,
    (rounds, length, workers): (usize, Duration, usize),
    raw: R,
    ours: O,
) where
    R: Fn() -> RF + Clone + Send + 'static,
    RF: Future<Output = ()> + Send,
    O: Fn() -> OF + Clone + Send + 'static,
    OF: Future<Output = ()> + Send,
{
    let (mut rt, mut ot, mut rp, mut op, mut ratio) = (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..rounds {
        let (r, o) = if i % 2 == 0 {
            let r = round(workers, length, raw.clone()).await;
            (r, round(workers, length, ours.clone()).await)
        } else {
            let o = round(workers, length, ours.clone()).await;
            (round(workers, length, raw.clone()).await, o)
        };
        rt.push(r.0);
        ot.push(o.0);
        rp.push(r.1.as_secs_f64() * 1e6);
        op.push(o.1.as_secs_f64() * 1e6);
        ratio.push(o.0 / r.0);
    }
    println!("{label} (median of {rounds} alternating rounds):");
    println!(
        "  {raw_name:<14} {:>9.0} ops/s  p50 {:>8.1} µs",
        median(rt),
        median(rp)
    );
    println!(
        "  {:<14} {:>9.0} ops/s  p50 {:>8.1} µs  ({:.2}x throughput)",
        "switchyard",
        median(ot),
        median(op),
        median(ratio)
    );
}

/// [`compare`] for two values of one caller type, `once` making one call with a clone.
pub async fn compare_sides<S, F, Fut>(
    label: &str,
    raw_name: &str,
    how: (usize, Duration, usize),
    (raw, ours): (&S, &S),
    once: F,
) where
    S: Clone + Send + Sync + 'static,
    F: Fn(S) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (r, o) = (raw.clone(), ours.clone());
    compare(
        label,
        raw_name,
        how,
        move || once(r.clone()),
        move || once(o.clone()),
    )
    .await;
}

/// Per-round rates of the raw side and ours, with their ratios, reported as medians (the
/// median of per-round ratios, so that each ratio compares rounds run side by side).
#[derive(Debug, Default)]
pub struct Rates {
    raw: Vec<f64>,
    ours: Vec<f64>,
    ratio: Vec<f64>,
}

impl Rates {
    /// One round's rates.
    pub fn push(&mut self, raw: f64, ours: f64) {
        self.raw.push(raw);
        self.ours.push(ours);
        self.ratio.push(ours / raw);
    }

    /// Prints `title`, then each side's median rate in `unit` and our median ratio.
    pub fn report(self, title: &str, raw_name: &str, unit: &str) {
        println!("{title}:");
        println!("  {raw_name:<14} {:>9.0} {unit}", median(self.raw));
        println!(
            "  {:<14} {:>9.0} {unit}  ({:.2}x)",
            "switchyard",
            median(self.ours),
            median(self.ratio)
        );
    }
}

/// Publishes `n` small JSON events on `topic`, 64 at a time, each confirmed: what the consume
/// and replay benchmarks read back.
pub async fn fill(t: &std::sync::Arc<dyn switchyard::transport::Transport>, topic: &str, n: usize) {
    use futures::StreamExt;
    futures::stream::iter(0..n)
        .for_each_concurrent(64, |i| {
            let t = t.clone();
            let topic = topic.to_string();
            async move {
                t.publish(switchyard::Envelope::new(topic, format!(r#"{{"n":{i}}}"#)))
                    .await
                    .expect("publish");
            }
        })
        .await;
}

/// The JetStream stream switchyard keeps `topic` in (`SY_` + the topic, `.` → `_`).
pub fn nats_stream(topic: &str) -> String {
    format!("SY_{}", topic.replace('.', "_"))
}

/// That stream, for a raw async-nats client to read.
pub async fn nats_stored(topic: &str) -> async_nats::jetstream::stream::Stream {
    let client = async_nats::connect("nats://127.0.0.1:4222")
        .await
        .expect("nats");
    async_nats::jetstream::new(client)
        .get_stream(nats_stream(topic))
        .await
        .expect("stream")
}

/// Deletes what a round left in `broker`s that keep it (NATS streams on disk, Redis streams).
pub async fn delete_stored(broker: &str, topics: &[&str]) {
    match broker {
        "nats" => {
            let client = async_nats::connect("nats://127.0.0.1:4222")
                .await
                .expect("nats");
            let js = async_nats::jetstream::new(client);
            for t in topics {
                let _ = js.delete_stream(nats_stream(t)).await;
            }
        }
        "redis" => {
            let client = redis::Client::open("redis://127.0.0.1:6379").expect("redis");
            if let Ok(mut con) = client.get_multiplexed_async_connection().await {
                for t in topics {
                    let _: Result<i64, _> = redis::cmd("DEL")
                        .arg(format!("sy:s:{t}"))
                        .query_async(&mut con)
                        .await;
                }
            }
        }
        _ => {}
    }
}

/// Reads `n` messages from a JetStream pull consumer, acknowledging each when `ack`: messages
/// a second, the clock started at the first.
pub async fn nats_read(
    consumer: async_nats::jetstream::consumer::PullConsumer,
    n: usize,
    ack: bool,
) -> f64 {
    use futures::StreamExt;
    let mut messages = consumer.messages().await.expect("messages");
    let mut start = Instant::now();
    for i in 0..n {
        let m = messages.next().await.expect("open").expect("message");
        if i == 0 {
            start = Instant::now();
        }
        std::hint::black_box(&m.payload);
        if ack {
            m.ack().await.expect("ack");
        }
    }
    (n - 1) as f64 / start.elapsed().as_secs_f64()
}
