//! RPC benchmarks, each against a baseline in the same run:
//! - in process: `Client::call` over `mem://` and the typed contract client vs calling the
//!   same async function directly;
//! - HTTP: switchyard's client and server vs a raw axum server + reqwest client doing the same
//!   JSON round trip, one caller in sequence and 64 concurrent callers.
//!
//! `cargo bench --bench rpc`; figures go to docs/PERFORMANCE.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Value};
use switchyard::{rpc, Client, Service};

async fn helloworld(name: String) -> String {
    format!("Welcome {name}")
}

#[switchyard::service]
pub trait Greeter {
    async fn hello(&self, name: String) -> String;
}

struct G;
impl Greeter for G {
    async fn hello(&self, name: String) -> String {
        helloworld(name).await
    }
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime")
}

fn in_process(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let (client, typed, _servers) = rt.block_on(async {
        let t = switchyard::connect("mem://bench").expect("mem");
        let s1 = switchyard::serve(&t, Service::new("b").route("/helloworld", rpc(helloworld)))
            .await
            .expect("serve");
        let t2 = switchyard::connect("mem://bench-typed").expect("mem");
        let s2 = switchyard::serve(&t2, G.into_service("g"))
            .await
            .expect("serve");
        (
            Client::new(t),
            GreeterClient::new(Client::new(t2)),
            (s1, s2),
        )
    });
    let mut g = c.benchmark_group("in_process");
    g.bench_function("direct_async_fn (baseline)", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(helloworld(black_box("Mr. Developer".to_string())).await) })
    });
    g.bench_function("client_call_mem", |b| {
        b.to_async(&rt).iter(|| async {
            let r: String = client
                .call("/helloworld", black_box("Mr. Developer".to_string()))
                .await
                .expect("call");
            black_box(r)
        })
    });
    g.bench_function("typed_client_mem", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                typed
                    .hello(black_box("Mr. Developer".to_string()))
                    .await
                    .expect("call"),
            )
        })
    });
    g.finish();
}

async fn raw_server() -> (String, tokio::task::JoinHandle<()>) {
    // The baseline: a hand-written axum handler doing the same JSON work, no framework.
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
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), task)
}

fn raw_client() -> reqwest::Client {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(256)
        .build()
        .expect("client")
}

async fn raw_call(http: &reqwest::Client, url: &str) -> String {
    let body = json!({"args": ["Mr. Developer"], "kwargs": {}, "token": null});
    let v: Vec<Value> = http
        .post(url)
        .json(&body)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    v[0].as_str().unwrap_or_default().to_string()
}

fn http(c: &mut Criterion) {
    let rt = runtime(2);
    let (raw_url, sy_client, _guards) = rt.block_on(async {
        let (raw_url, raw_task) = raw_server().await;
        let server = switchyard::serve(
            &switchyard::connect("http://127.0.0.1:0").expect("http"),
            Service::new("b").route("/helloworld", rpc(helloworld)),
        )
        .await
        .expect("serve");
        let client = Client::new(switchyard::connect(server.url()).expect("http"));
        (format!("{raw_url}/helloworld"), client, (raw_task, server))
    });
    let raw_http = raw_client();

    let mut g = c.benchmark_group("http_sequential");
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("raw_axum_reqwest (baseline)", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(raw_call(&raw_http, &raw_url).await) })
    });
    g.bench_function("switchyard", |b| {
        b.to_async(&rt).iter(|| async {
            let r: String = sy_client
                .call("/helloworld", "Mr. Developer".to_string())
                .await
                .expect("call");
            black_box(r)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("http_64_concurrent");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(8));
    let raw_http = Arc::new(raw_http);
    let raw_url = Arc::new(raw_url);
    g.bench_function("raw_axum_reqwest (baseline)", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (http, url) = (raw_http.clone(), raw_url.clone());
            async move {
                concurrently(iters, move || {
                    let (http, url) = (http.clone(), url.clone());
                    async move {
                        black_box(raw_call(&http, &url).await);
                    }
                })
                .await
            }
        })
    });
    g.bench_function("switchyard", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let client = sy_client.clone();
            async move {
                concurrently(iters, move || {
                    let client = client.clone();
                    async move {
                        let r: String = client
                            .call("/helloworld", "Mr. Developer".to_string())
                            .await
                            .expect("call");
                        black_box(r);
                    }
                })
                .await
            }
        })
    });
    g.finish();
}

/// Runs `iters` calls spread over 64 concurrent tasks; the time for all of them.
async fn concurrently<F, Fut>(iters: u64, call: F) -> Duration
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let per = iters.div_ceil(64);
    let mut tasks = Vec::new();
    for w in 0..64u64 {
        let n = per.min(iters.saturating_sub(w * per));
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..n {
                call().await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    start.elapsed()
}

criterion_group!(benches, in_process, http);
criterion_main!(benches);
