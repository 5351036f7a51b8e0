//! Redis RPC: switchyard's client and service against a raw redis-rs client and server doing
//! the same work: the call queued on a list (`LPUSH`), taken by the server (`BLPOP`), the
//! reply published on the caller's channel and matched by correlation id; the same JSON
//! bodies. One caller in sequence (p50) and 64 in flight, alternating rounds, median.
//! Needs Redis on 127.0.0.1:6379.
//!
//! `cargo bench --bench redis_rpc`

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use switchyard::{rpc, Client, Service};
use tokio::sync::oneshot;

const ROUNDS: usize = 5;
const ROUND: Duration = Duration::from_millis(1500);
const RAW_QUEUE: &str = "bench:raw:rpc";

async fn helloworld(name: String) -> String {
    format!("Welcome {name}")
}

type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<Value>>>>>;

/// The raw caller: one connection for pushes, one subscribed to its reply channel.
#[derive(Clone)]
struct RawClient {
    con: redis::aio::MultiplexedConnection,
    channel: Arc<String>,
    waiting: Waiting,
}

impl RawClient {
    async fn connect(client: &redis::Client) -> Self {
        let channel = Arc::new(format!("bench:raw:reply:{}", switchyard::message::new_id()));
        let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
        pubsub.subscribe(channel.as_str()).await.expect("subscribe");
        let waiting: Waiting = Arc::default();
        let w = waiting.clone();
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(m) = messages.next().await {
                let Ok(reply) = serde_json::from_slice::<Value>(m.get_payload_bytes()) else {
                    continue;
                };
                let cid = reply["cid"].as_str().unwrap_or_default().to_string();
                let values = match reply["values"].clone() {
                    Value::Array(v) => v,
                    _ => continue,
                };
                if let Some(tx) = w.lock().expect("lock").remove(&cid) {
                    let _ = tx.send(values);
                }
            }
        });
        Self {
            con: client
                .get_multiplexed_async_connection()
                .await
                .expect("connect"),
            channel,
            waiting,
        }
    }

    async fn call(&self) -> String {
        let cid = switchyard::message::new_id();
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().expect("lock").insert(cid.clone(), tx);
        let request = json!({
            "cid": cid,
            "reply": self.channel.as_str(),
            "route": "/hello",
            "call": {"args": ["Mr. Developer"], "kwargs": {}, "token": null},
        });
        let mut con = self.con.clone();
        let _: i64 = redis::cmd("LPUSH")
            .arg(RAW_QUEUE)
            .arg(serde_json::to_vec(&request).expect("json"))
            .query_async(&mut con)
            .await
            .expect("push");
        let values = rx.await.expect("reply");
        values[0].as_str().unwrap_or_default().to_string()
    }
}

/// The raw server: takes calls one by one and publishes each reply.
async fn raw_server(client: redis::Client) {
    let mut take = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let mut reply = take.clone();
    loop {
        let popped: Option<(String, Vec<u8>)> = redis::cmd("BLPOP")
            .arg(RAW_QUEUE)
            .arg(1)
            .query_async(&mut take)
            .await
            .expect("blpop");
        let Some((_, body)) = popped else { continue };
        let req: Value = serde_json::from_slice(&body).expect("request");
        let name = req["call"]["args"][0].as_str().unwrap_or_default();
        let out = json!({"cid": req["cid"], "values": [format!("Welcome {name}")]});
        let _: i64 = redis::cmd("PUBLISH")
            .arg(req["reply"].as_str().unwrap_or_default())
            .arg(serde_json::to_vec(&out).expect("json"))
            .query_async(&mut reply)
            .await
            .expect("publish");
    }
}

#[derive(Clone)]
enum Side {
    Raw(RawClient),
    Ours(Client),
}

impl Side {
    async fn once(&self) {
        let r = match self {
            Side::Raw(c) => c.call().await,
            Side::Ours(c) => {
                let r: String = c
                    .call("/hello", "Mr. Developer".to_string())
                    .await
                    .expect("call");
                r
            }
        };
        std::hint::black_box(r);
    }
}

async fn compare(label: &str, raw: &Side, ours: &Side, workers: usize) {
    let how = (ROUNDS, ROUND, workers);
    common::compare_sides(
        &format!("redis RPC, {label}"),
        "raw redis-rs",
        how,
        (raw, ours),
        |s: Side| async move { s.once().await },
    )
    .await;
}

fn main() {
    if !common::server_up("redis_rpc benchmark (Redis)", "127.0.0.1:6379") {
        return;
    }
    common::runtime().block_on(async {
        let client = redis::Client::open("redis://127.0.0.1:6379").expect("client");
        tokio::spawn(raw_server(client.clone()));
        let raw = Side::Raw(RawClient::connect(&client).await);
        let url = "redis://127.0.0.1:6379?ns=benchrpc";
        let _server = switchyard::serve(
            &switchyard::connect(url).expect("redis"),
            Service::new("bench").route("/hello", rpc(helloworld)),
        )
        .await
        .expect("serve");
        let ours =
            Side::Ours(Client::new(switchyard::connect(url).expect("redis")).service("bench"));
        compare("one caller in sequence", &raw, &ours, 1).await;
        compare("64 in flight", &raw, &ours, 64).await;
    });
}
