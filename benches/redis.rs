//! Redis: confirmed publishes (XADD, 64 in flight) through switchyard against the raw
//! redis-rs client sending the same entry (id, headers, payload fields), alternating rounds.
//! Needs Redis on 127.0.0.1:6379.
//!
//! `cargo bench --bench redis`

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::transport::Transport;
use switchyard::Envelope;

const ROUNDS: usize = 5;
const ROUND: Duration = Duration::from_millis(1500);

#[derive(Clone)]
enum Side {
    Raw(redis::aio::ConnectionManager, Arc<String>),
    Ours(Arc<dyn Transport>, Arc<String>),
}

impl Side {
    async fn once(&self) {
        match self {
            Side::Raw(con, key) => {
                let mut con = con.clone();
                let id = switchyard::message::new_id();
                let headers = r#"{"content-type":"application/json"}"#;
                let _: String = redis::cmd("XADD")
                    .arg(key.as_str())
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(1_000_000)
                    .arg("*")
                    .arg("i")
                    .arg(id)
                    .arg("h")
                    .arg(headers)
                    .arg("p")
                    .arg(r#"{"n":1}"#)
                    .query_async(&mut con)
                    .await
                    .expect("xadd");
            }
            Side::Ours(t, topic) => t
                .publish(Envelope::new(topic.as_str(), r#"{"n":1}"#))
                .await
                .expect("publish"),
        }
    }
}

async fn round(side: &Side) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let side = side.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < ROUND {
                side.once().await;
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    total as f64 / start.elapsed().as_secs_f64()
}

async fn compare(raw: &Side, ours: &Side) {
    let mut rates = common::Rates::default();
    for i in 0..ROUNDS {
        let (a, b) = if i % 2 == 0 { (raw, ours) } else { (ours, raw) };
        let x = round(a).await;
        let y = round(b).await;
        let (rr, oo) = if i % 2 == 0 { (x, y) } else { (y, x) };
        rates.push(rr, oo);
    }
    rates.report(
        &format!("confirmed XADD, 64 in flight (median of {ROUNDS} alternating rounds)"),
        "raw redis-rs",
        "msg/s",
    );
}

fn main() {
    if !common::server_up("redis benchmark (Redis)", "127.0.0.1:6379") {
        return;
    }
    common::runtime().block_on(async {
        let client = redis::Client::open("redis://127.0.0.1:6379").expect("client");
        let con = redis::aio::ConnectionManager::new(client)
            .await
            .expect("connect");
        let run = &switchyard::message::new_id()[..8];
        let raw_key = Arc::new(format!("sy:s:bench.raw.{run}"));
        let our_topic = Arc::new(format!("bench.ours.{run}"));
        let raw = Side::Raw(con.clone(), raw_key.clone());
        let ours = Side::Ours(
            switchyard::connect("redis://127.0.0.1:6379").expect("redis"),
            our_topic.clone(),
        );
        // `BENCH_ONLY=raw|ours`: one round of one side (for profiling).
        if let Ok(only) = std::env::var("BENCH_ONLY") {
            let side = if only == "raw" { &raw } else { &ours };
            println!("{only}: {:.0} msg/s", round(side).await);
        } else {
            compare(&raw, &ours).await;
        }
        let mut c = con.clone();
        let _: Result<i64, _> = redis::cmd("DEL")
            .arg(raw_key.as_str())
            .arg(format!("sy:s:{our_topic}"))
            .query_async(&mut c)
            .await;
    });
}
