//! In-process calls for `valgrind --tool=callgrind`, whose instruction counts repeat from run
//! to run where criterion's times on a shared machine do not: N calls of one shape, with the
//! direct async call as the baseline.
//!
//! `cargo bench -p switchyard-benches --bench calls --no-run`, then
//! `valgrind --tool=callgrind target/release/deps/calls-* 20000 MODE` with MODE one of
//! `direct` (the baseline), `plain` (`Client::call` over `mem://`), `layer` (one empty
//! service layer: tower's `Identity`), `client` (one empty client layer), `forward` and
//! `client-forward` (one service or client layer that passes each call on, as a user's
//! layer that does nothing would), `metrics` (`plain` with the Prometheus recorder
//! installed), and over HTTP on loopback (client and server in this process, so the
//! count is both sides' user-space work): `http` (ours on both sides), `http-raw` (axum and
//! reqwest doing the same JSON round trip, the baseline), `http-rawclient` (reqwest calling
//! our server), `http-rawserver` (our client calling the axum server). Without valgrind it
//! prints the time a call took. Figures go to docs/PERFORMANCE.md.
//!
//! `discover` and `discover-rr`: `Client::call` through `registry::Discovery` (peak-EWMA or
//! round robin) to three instances in process, each on a bus of its own, against `plain`.
//! `discover-req` makes the same call with `Client::request` (the builder a shard key needs),
//! `discover-shard` with a shard key as well (one of 1,024, consistent hashing): the two
//! differ by the key's pick. Each discovery mode also prints how long its first call took
//! from `Discovery::new` (resolution: the registry read, the transport made), in the
//! registry `SWITCHYARD_BENCH_REGISTRY` names (`etcd://…`, `nats://…`; in process by default).
//!
//! `SWITCHYARD_BENCH_OBSERVE` adds observation to any mode, a comma-separated list of
//! `metrics` (the Prometheus recorder), `spans` (spans on, OpenTelemetry's default no-op
//! provider: context made and passed, nothing recorded) and `sdk` (spans on, recorded by the
//! SDK's provider with no exporter).

use std::hint::black_box;
use std::time::Instant;

use switchyard::{rpc, Client, Service};
use tower::layer::util::Identity;

/// Batches a run is timed in (see `main`).
const BATCHES: u32 = 100;

async fn hello(name: String) -> String {
    format!("Welcome {name}")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let calls: u32 = args
        .next()
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(200_000);
    let mode = args.next().unwrap_or_else(|| "plain".into());
    // A process of one thread gets glibc's allocator's faster path (no arena locking): the
    // metrics exporter's thread took it away from the `metrics` runs alone, a cost metrics do
    // not have (a served process has threads of its own anyway; docs/PERFORMANCE.md,
    // "2026-12-06 (later)"). Every run has one idle thread more.
    let _idle = std::thread::Builder::new()
        .name("idle".into())
        .spawn(|| loop {
            std::thread::park();
        })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let observe = std::env::var("SWITCHYARD_BENCH_OBSERVE").unwrap_or_default();
    let _provider = observe.contains("sdk").then(|| {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        provider
    });
    if observe.contains("spans") || observe.contains("sdk") {
        switchyard::observe::enable_tracing();
    }
    rt.block_on(async {
        if mode == "metrics" || observe.contains("metrics") {
            switchyard::observe::install_prometheus()?;
        }
        if let Some(side) = mode.strip_prefix("http") {
            return http(calls, side).await;
        }
        if let Some(balance) = mode.strip_prefix("discover") {
            return discover(calls, balance).await;
        }
        let transport = switchyard::connect("mem://calls")?;
        let service = Service::new("a").route("/hello", rpc(hello));
        let service = match mode.as_str() {
            "layer" => service.layer(Identity::new()),
            "forward" => service.layer(ForwardLayer),
            _ => service,
        };
        let _served = switchyard::serve(&transport, service).await?;
        let client = Client::new(transport).service("a");
        let client = match mode.as_str() {
            "client" => client.layer(Identity::new()),
            "client-forward" => client.layer(ForwardLayer),
            _ => client,
        };
        // Timed in batches: the median batch is the p50 of a call, free of the batches a
        // shared machine interrupted.
        let mut batches = Vec::with_capacity(BATCHES as usize);
        let started = Instant::now();
        for _ in 0..BATCHES {
            let batch = Instant::now();
            for _ in 0..calls / BATCHES {
                let reply = if mode == "direct" {
                    hello(black_box("Mr. Developer".to_string())).await
                } else {
                    client
                        .call("/hello", black_box("Mr. Developer".to_string()))
                        .await?
                };
                black_box(reply);
            }
            batches.push(batch.elapsed() / (calls / BATCHES));
        }
        batches.sort();
        println!(
            "{mode}: {:?} a call (p50 of {BATCHES} batches), {:?} on average",
            batches[batches.len() / 2],
            started.elapsed() / calls
        );
        Ok(())
    })
}

/// A layer that passes each call on to the service it wraps: what a layer costs by being
/// there, when it is not tower's `Identity` (which the framework leaves out).
#[derive(Clone, Copy)]
struct ForwardLayer;

impl<S> tower::Layer<S> for ForwardLayer {
    type Service = Forward<S>;
    fn layer(&self, inner: S) -> Forward<S> {
        Forward(inner)
    }
}

#[derive(Clone)]
struct Forward<S>(S);

impl<S: tower::Service<R>, R> tower::Service<R> for Forward<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }
    fn call(&mut self, request: R) -> S::Future {
        self.0.call(request)
    }
}

/// The HTTP modes: `side` is "" (ours on both sides), "-raw", "-rawclient" or "-rawserver".
async fn http(calls: u32, side: &str) -> Result<(), Box<dyn std::error::Error>> {
    use serde_json::{json, Value};
    async fn raw(axum::Json(body): axum::Json<Value>) -> axum::Json<Value> {
        let name = body["args"][0].as_str().unwrap_or_default();
        axum::Json(json!([format!("Welcome {name}")]))
    }
    let raw_server = matches!(side, "-raw" | "-rawserver");
    let raw_client = matches!(side, "-raw" | "-rawclient");
    let mut _served = None;
    let base = if raw_server {
        let app = axum::Router::new().route("/hello", axum::routing::post(raw));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|t| {
            let _ = t.set_nodelay(true);
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}")
    } else {
        let transport = switchyard::connect("http://127.0.0.1:0")?;
        let served =
            switchyard::serve(&transport, Service::new("a").route("/hello", rpc(hello))).await?;
        let url = served.url().to_string();
        _served = Some(served);
        url
    };
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let ours = Client::new(switchyard::connect(&base)?);
    let url = format!("{base}/hello");
    let started = Instant::now();
    for _ in 0..calls {
        let reply = if raw_client {
            let body = json!({"args": [black_box("Mr. Developer")], "kwargs": {}, "token": null});
            let v: Vec<Value> = http
                .post(url.as_str())
                .json(&body)
                .send()
                .await?
                .json()
                .await?;
            v[0].as_str().unwrap_or_default().to_string()
        } else {
            ours.call("/hello", black_box("Mr. Developer".to_string()))
                .await?
        };
        black_box(reply);
    }
    println!("http{side}: {:?} a call", started.elapsed() / calls);
    Ok(())
}

/// The discovery modes: `balance` is "" (peak-EWMA), "-rr" (round robin), "-req" (peak-EWMA,
/// through the request builder) or "-shard" (the builder with a shard key).
async fn discover(calls: u32, balance: &str) -> Result<(), Box<dyn std::error::Error>> {
    use std::sync::Arc;
    use switchyard::registry::{self, Balance, Discovery, Instance};
    let registry = registry::connect(
        &std::env::var("SWITCHYARD_BENCH_REGISTRY")
            .unwrap_or_else(|_| "mem://calls-registry".into()),
    )?;
    let mut served = Vec::new();
    for n in 0..3 {
        let url = format!("mem://calls-{n}");
        let transport = switchyard::connect(&url)?;
        served.push(
            switchyard::serve(&transport, Service::new("a").route("/hello", rpc(hello))).await?,
        );
        registry
            .register(
                &Instance::new("a", format!("i{n}"), [url]),
                std::time::Duration::from_secs(600),
            )
            .await?;
    }
    let connect: registry::Connector = Arc::new(|url: &str| switchyard::connect(url));
    let resolving = Instant::now();
    let discovery = Discovery::new(registry, connect).balance(if balance == "-rr" {
        Balance::RoundRobin
    } else {
        Balance::PeakEwma
    });
    let client = Client::new(Arc::new(discovery)).service("a");
    let first: String = client.call("/hello", "first".to_string()).await?;
    black_box(first);
    println!(
        "discover{balance}: first call {:?} after Discovery::new",
        resolving.elapsed()
    );
    let keys: Vec<String> = (0..1_024).map(|k| format!("customer-{k}")).collect();
    let started = Instant::now();
    for n in 0..calls {
        let reply: String = match balance {
            "-req" => {
                client
                    .request("/hello")
                    .arg(black_box("Mr. Developer"))
                    .send()
                    .await?
            }
            "-shard" => {
                let key = &keys[n as usize % keys.len()];
                client
                    .request("/hello")
                    .arg(black_box("Mr. Developer"))
                    .shard_key(key.as_str())
                    .send()
                    .await?
            }
            _ => {
                client
                    .call("/hello", black_box("Mr. Developer".to_string()))
                    .await?
            }
        };
        black_box(reply);
    }
    println!("discover{balance}: {:?} a call", started.elapsed() / calls);
    Ok(())
}
