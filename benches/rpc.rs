//! In-process RPC against its baseline in the same run: `Client::call` over `mem://` and the
//! typed contract client vs calling the same async function directly (HTTP is in
//! `benches/http.rs`); and making a message id against a UUID from the OS RNG.
//!
//! `cargo bench --bench rpc`; figures go to docs/PERFORMANCE.md.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
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

fn in_process(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let (client, typed, layered, layered_client, _servers) = rt.block_on(async {
        let t = switchyard::connect("mem://bench").expect("mem");
        let s1 = switchyard::serve(&t, Service::new("b").route("/helloworld", rpc(helloworld)))
            .await
            .expect("serve");
        let t2 = switchyard::connect("mem://bench-typed").expect("mem");
        let s2 = switchyard::serve(&t2, G.into_service("g"))
            .await
            .expect("serve");
        // The same route on a service with one user layer that does nothing (tower's
        // `Identity`): what a layer costs by being there.
        let t3 = switchyard::connect("mem://bench-layered").expect("mem");
        let s3 = switchyard::serve(
            &t3,
            Service::new("l")
                .route("/helloworld", rpc(helloworld))
                .layer(tower::layer::util::Identity::new()),
        )
        .await
        .expect("serve");
        (
            Client::new(t).service("b"),
            GreeterClient::new(Client::new(t2).service("g")),
            Client::new(t3).service("l"),
            Client::new(switchyard::connect("mem://bench").expect("mem"))
                .service("b")
                .layer(tower::layer::util::Identity::new()),
            (s1, s2, s3),
        )
    });
    let mut g = c.benchmark_group("in_process");
    g.bench_function("direct_async_fn (baseline)", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(helloworld(black_box("Mr. Developer".to_string())).await) })
    });
    for (name, client) in [
        ("client_call_mem", &client),
        ("client_call_mem_service_layer", &layered),
        ("client_call_mem_client_layer", &layered_client),
    ] {
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let r: String = client
                    .call("/helloworld", black_box("Mr. Developer".to_string()))
                    .await
                    .expect("call");
                black_box(r)
            })
        });
    }
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

/// Every event and every call gets a new id. Ours (uuid's `fast-rng`: a thread-local CSPRNG
/// seeded from the OS) against a UUID v4 read from the OS RNG, uuid's default, which is a
/// `getrandom` system call per id.
fn message_ids(c: &mut Criterion) {
    let mut g = c.benchmark_group("message_id");
    g.bench_function("os_rng_uuid_v4 (baseline)", |b| {
        b.iter(|| {
            let mut bytes = [0u8; 16];
            getrandom::fill(&mut bytes).expect("os rng");
            black_box(
                uuid::Builder::from_random_bytes(bytes)
                    .into_uuid()
                    .to_string(),
            )
        })
    });
    g.bench_function("switchyard_new_id", |b| {
        b.iter(|| black_box(switchyard::message::new_id()))
    });
    g.finish();
}

criterion_group!(benches, in_process, message_ids);
criterion_main!(benches);
