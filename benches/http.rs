//! HTTP RPC against a raw axum server + reqwest client doing the same JSON round trip
//! (`{"args": ["Mr. Developer"], ...}` → `["Welcome Mr. Developer"]`), in one process on
//! loopback. This machine is shared and noisy, so the two sides alternate for several short
//! rounds and the median of the per-round ratios is reported.
//!
//! `cargo bench --bench http`

mod common;

use common::median;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use serde_json::{json, Value};
use switchyard::{rpc, Client, Service};

const ROUNDS: usize = 7;
const ROUND: Duration = Duration::from_millis(1500);
const CONCURRENCY: usize = 64;

async fn helloworld(name: String) -> String {
    format!("Welcome {name}")
}

async fn raw_server() -> String {
    async fn raw(axum::Json(body): axum::Json<Value>) -> axum::Json<Value> {
        let name = body["args"][0].as_str().unwrap_or_default();
        axum::Json(json!([format!("Welcome {name}")]))
    }
    let app = axum::Router::new().route("/helloworld", post(raw));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|t| {
        let _ = t.set_nodelay(true);
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/helloworld")
}

#[derive(Clone)]
enum Caller {
    Raw(reqwest::Client, Arc<String>),
    Switchyard(Client),
}

impl Caller {
    async fn call(&self) -> String {
        match self {
            Caller::Raw(http, url) => {
                let body = json!({"args": ["Mr. Developer"], "kwargs": {}, "token": null});
                let v: Vec<Value> = http
                    .post(url.as_str())
                    .json(&body)
                    .send()
                    .await
                    .expect("send")
                    .json()
                    .await
                    .expect("json");
                v[0].as_str().unwrap_or_default().to_string()
            }
            Caller::Switchyard(c) => c
                .call("/helloworld", "Mr. Developer".to_string())
                .await
                .expect("call"),
        }
    }
}

/// Calls per second and the median latency over one round with `workers` callers.
async fn round(caller: &Caller, workers: usize) -> (f64, Duration) {
    let caller = caller.clone();
    common::round(workers, ROUND, move || {
        let caller = caller.clone();
        async move {
            std::hint::black_box(caller.call().await);
        }
    })
    .await
}

fn main() {
    common::runtime().block_on(async {
        let raw_url = raw_server().await;
        let server = switchyard::serve(
            &switchyard::connect("http://127.0.0.1:0").expect("http"),
            Service::new("bench").route("/helloworld", rpc(helloworld)),
        )
        .await
        .expect("serve");
        let raw = Caller::Raw(
            reqwest::Client::builder().tcp_nodelay(true).pool_max_idle_per_host(256).build().expect("client"),
            Arc::new(raw_url),
        );
        let ours = Caller::Switchyard(Client::new(switchyard::connect(server.url()).expect("http")));
        for _ in 0..200 {
            raw.call().await;
            ours.call().await;
        }
        for (label, workers) in [("1 caller in sequence", 1), ("64 concurrent callers", CONCURRENCY)] {
            let (mut thr_ratio, mut p50_ratio) = (Vec::new(), Vec::new());
            let (mut raw_thr, mut our_thr, mut raw_p50, mut our_p50) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for i in 0..ROUNDS {
                // Alternate who goes first, so neither side always gets the warmer machine.
                let (a, b) = if i % 2 == 0 { (&raw, &ours) } else { (&ours, &raw) };
                let ra = round(a, workers).await;
                let rb = round(b, workers).await;
                let ((rt_, rp), (ot, op)) = if i % 2 == 0 { (ra, rb) } else { (rb, ra) };
                thr_ratio.push(ot / rt_);
                p50_ratio.push(op.as_secs_f64() / rp.as_secs_f64());
                raw_thr.push(rt_);
                our_thr.push(ot);
                raw_p50.push(rp.as_secs_f64() * 1e6);
                our_p50.push(op.as_secs_f64() * 1e6);
            }
            println!("{label}:");
            println!("  raw axum + reqwest  {:>9.0} calls/s  p50 {:>7.1} µs   (median of {ROUNDS} rounds)", median(raw_thr), median(raw_p50));
            println!("  switchyard          {:>9.0} calls/s  p50 {:>7.1} µs", median(our_thr), median(our_p50));
            println!("  ratio (median of per-round ratios): throughput {:.2}x, p50 {:.2}x", median(thr_ratio), median(p50_ratio));
        }
        server.shutdown().await;
    });
}
