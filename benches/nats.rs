//! NATS against the raw async-nats client doing the same work, alternating rounds:
//! RPC (one caller in sequence, 64 in flight) and confirmed JetStream publishes (64 in
//! flight). Needs the NATS server on 127.0.0.1:4222 (scripts/services.sh). On both sides the
//! service and its caller use separate connections.
//!
//! RPC has two raw baselines: the bare request (no header block), and the same message on
//! the wire as ours — the caller's deadline in an `x-deadline-ms` header, read by the raw
//! server — since a call that propagates its deadline pays for NATS headers (HPUB/HMSG and
//! a `HeaderMap` on each side) whoever sends it.
//!
//! `cargo bench --bench nats`

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use switchyard::transport::Transport;
use switchyard::{rpc, Client, Envelope, Service};

const ROUNDS: usize = 5;
const ROUND: Duration = Duration::from_millis(1500);

async fn helloworld(name: String) -> String {
    format!("Welcome {name}")
}

#[derive(Clone)]
enum Side {
    RawRpc(async_nats::Client),
    RawRpcDeadline(async_nats::Client),
    OursRpc(Client),
    RawPublish(async_nats::jetstream::Context, Arc<String>),
    OursPublish(Arc<dyn Transport>, Arc<String>),
}

impl Side {
    async fn once(&self) {
        match self {
            Side::RawRpc(c) => {
                let body = serde_json::to_vec(
                    &json!({"args": ["Mr. Developer"], "kwargs": {}, "token": null}),
                )
                .expect("json");
                let m = c
                    .request("bench.raw.hello", body.into())
                    .await
                    .expect("request");
                let v: Vec<Value> = serde_json::from_slice(&m.payload).expect("reply");
                std::hint::black_box(v);
            }
            Side::RawRpcDeadline(c) => {
                let body = serde_json::to_vec(
                    &json!({"args": ["Mr. Developer"], "kwargs": {}, "token": null}),
                )
                .expect("json");
                let mut h = async_nats::HeaderMap::new();
                h.insert("x-deadline-ms", "30000");
                let m = c
                    .request_with_headers("bench.raw.hello", h, body.into())
                    .await
                    .expect("request");
                let v: Vec<Value> = serde_json::from_slice(&m.payload).expect("reply");
                std::hint::black_box(v);
            }
            Side::OursRpc(c) => {
                let r: String = c
                    .call("/hello", "Mr. Developer".to_string())
                    .await
                    .expect("call");
                std::hint::black_box(r);
            }
            Side::RawPublish(js, topic) => {
                // The same message on the wire: CloudEvents headers and a de-duplication id.
                let mut h = async_nats::HeaderMap::new();
                let id = switchyard::message::new_id();
                h.insert("ce-specversion", "1.0");
                h.insert("ce-id", id.as_str());
                h.insert("ce-type", topic.as_str());
                h.insert("ce-source", "/switchyard");
                h.insert("content-type", "application/json");
                h.insert("Nats-Msg-Id", id.as_str());
                js.publish_with_headers(topic.to_string(), h, r#"{"n":1}"#.into())
                    .await
                    .expect("publish")
                    .await
                    .expect("ack");
            }
            Side::OursPublish(t, topic) => {
                t.publish(Envelope::new(topic.as_str(), r#"{"n":1}"#))
                    .await
                    .expect("publish");
            }
        }
    }
}

async fn compare(label: &str, raw: &Side, ours: &Side, workers: usize) {
    let how = (ROUNDS, ROUND, workers);
    common::compare_sides(
        label,
        "raw async-nats",
        how,
        (raw, ours),
        |s: Side| async move { s.once().await },
    )
    .await;
}

fn main() {
    if !common::server_up("nats benchmark (NATS)", "127.0.0.1:4222") {
        return;
    }
    common::runtime().block_on(async {
        let raw = async_nats::connect("nats://127.0.0.1:4222")
            .await
            .expect("connect");
        // The raw service has a connection of its own, as ours has (and as a service in
        // another process would): sharing the caller's connection halves the socket work.
        let responder = async_nats::connect("nats://127.0.0.1:4222")
            .await
            .expect("connect");
        let mut sub = responder
            .subscribe("bench.raw.hello")
            .await
            .expect("subscribe");
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let deadline = m.headers.as_ref().and_then(|h| {
                    let ms = h.get("x-deadline-ms")?.as_str().parse::<u64>().ok()?;
                    Some(std::time::Instant::now() + Duration::from_millis(ms))
                });
                std::hint::black_box(deadline);
                let body: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                let name = body["args"][0].as_str().unwrap_or_default();
                let reply =
                    serde_json::to_vec(&json!([format!("Welcome {name}")])).unwrap_or_default();
                if let Some(r) = m.reply {
                    let _ = responder.publish(r, reply.into()).await;
                }
            }
        });
        let url = "nats://127.0.0.1:4222/bench";
        let transport = switchyard::connect(url).expect("nats");
        let _server = switchyard::serve(
            &transport,
            Service::new("bench").route("/hello", rpc(helloworld)),
        )
        .await
        .expect("serve");
        let ours = Client::new(switchyard::connect(url).expect("nats")).service("bench");
        // `BENCH_ONLY=raw|raw-deadline|ours`: one side's RPC alone for 5 s, 64 in flight (one
        // caller in sequence with `SEQ=1`), for profiling.
        if let Ok(only) = std::env::var("BENCH_ONLY") {
            let side = match only.as_str() {
                "raw" => Side::RawRpc(raw.clone()),
                "raw-deadline" => Side::RawRpcDeadline(raw.clone()),
                _ => Side::OursRpc(ours.clone()),
            };
            let workers = if std::env::var("SEQ").is_ok() { 1 } else { 64 };
            let (rate, p50) = common::round(workers, Duration::from_secs(5), move || {
                let side = side.clone();
                async move { side.once().await }
            })
            .await;
            println!("{only}: {rate:.0} calls/s, p50 {p50:?}");
            return;
        }
        let ours = Side::OursRpc(ours);
        for (label, raw_side, workers) in [
            ("RPC, 1 caller in sequence", Side::RawRpc(raw.clone()), 1),
            ("RPC, 64 in flight", Side::RawRpc(raw.clone()), 64),
            (
                "RPC with the deadline header on both sides, 1 caller in sequence",
                Side::RawRpcDeadline(raw.clone()),
                1,
            ),
            (
                "RPC with the deadline header on both sides, 64 in flight",
                Side::RawRpcDeadline(raw.clone()),
                64,
            ),
        ] {
            compare(label, &raw_side, &ours, workers).await;
        }

        let js = async_nats::jetstream::new(raw.clone());
        let raw_topic = format!("bench.raw.{}", std::process::id());
        let _ = js
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: format!("BENCH_RAW_{}", std::process::id()),
                subjects: vec![raw_topic.clone()],
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .expect("stream");
        let our_topic = format!("bench.ours.{}", std::process::id());
        compare(
            "confirmed JetStream publish, 64 in flight",
            &Side::RawPublish(js.clone(), Arc::new(raw_topic)),
            &Side::OursPublish(
                switchyard::connect(url).expect("nats"),
                Arc::new(our_topic.clone()),
            ),
            64,
        )
        .await;
        let _ = js
            .delete_stream(format!("BENCH_RAW_{}", std::process::id()))
            .await;
        let _ = js
            .delete_stream(format!("SY_bench_ours_{}", std::process::id()))
            .await;
    });
}
