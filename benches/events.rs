//! Durable event ingestion: accepted events/s and latency with 64 concurrent senders, against
//! a bare axum handler that appends the same line with the same policy (fsync before the
//! reply) and no validation. Each side runs twice, alternately, for 4 s.
//!
//! `cargo bench --bench events`

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use switchyard_events::consumer::{self, ConsumerConfig};

const SENDERS: usize = 64;
const RUN: Duration = Duration::from_secs(4);

struct Figures {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

async fn load(url: String) -> Figures {
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(SENDERS)
        .build()
        .expect("client");
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        let (http, url, stop) = (http.clone(), url.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = format!(r#"{{"event_type": "bench", "event_payload": "{s}-{i}"}}"#);
                let t = Instant::now();
                let r = http.post(&url).body(body).send().await.expect("send");
                assert_eq!(r.status().as_u16(), 200);
                let _ = r.bytes().await;
                lat.push(t.elapsed());
                i += 1;
            }
            lat
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(RUN).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("sender"));
    }
    let took = start.elapsed();
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Figures {
        per_sec: all.len() as f64 / took.as_secs_f64(),
        p50: pct(0.5),
        p99: pct(0.99),
    }
}

async fn bare_server(path: std::path::PathBuf) -> String {
    // What a user would write by hand: append and fsync under a lock, then reply.
    async fn handler(State(file): State<Arc<Mutex<std::fs::File>>>, body: Bytes) -> &'static str {
        tokio::task::spawn_blocking(move || {
            let mut f = file.lock().expect("lock");
            f.write_all(&body)
                .and_then(|()| f.write_all(b"\n"))
                .and_then(|()| f.sync_data())
                .expect("write");
        })
        .await
        .expect("join");
        "ok"
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open");
    let app = axum::Router::new()
        .route("/event", post(handler))
        .with_state(Arc::new(Mutex::new(file)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/event")
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!("switchyard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    rt.block_on(async {
        let ours = consumer::start(
            ConsumerConfig {
                listen: "127.0.0.1:0".into(),
                output: dir.join("switchyard.json"),
                ..ConsumerConfig::default()
            },
            &[],
            "events",
        )
        .await
        .expect("consumer");
        let ours_url = format!("http://{}/event", ours.addr);
        let bare_url = bare_server(dir.join("bare.json")).await;
        let mut rows = Vec::new();
        for round in 0..2 {
            for (name, url) in [
                ("bare axum + fsync per request (baseline)", &bare_url),
                ("switchyard events consume", &ours_url),
            ] {
                let f = load(url.clone()).await;
                println!(
                    "round {round}: {name:<42} {:>9.0} events/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
                    f.per_sec,
                    f.p50.as_secs_f64() * 1e3,
                    f.p99.as_secs_f64() * 1e3
                );
                rows.push((name, f));
            }
        }
        let best = |n: &str| {
            rows.iter()
                .filter(|(r, _)| *r == n)
                .map(|(_, f)| f.per_sec)
                .fold(0.0, f64::max)
        };
        let (b, o) = (
            best("bare axum + fsync per request (baseline)"),
            best("switchyard events consume"),
        );
        println!(
            "best of two: switchyard {o:.0} events/s vs baseline {b:.0} events/s: {:.1}x",
            o / b
        );
        ours.shutdown().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}
