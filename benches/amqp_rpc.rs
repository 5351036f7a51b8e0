//! RabbitMQ RPC: switchyard's client and service against a raw lapin client and server doing
//! the same work (JSON body as switchyard sends, direct reply-to, correlation id, publish with
//! `mandatory` and a confirm, server acks after replying, prefetch 256), alternating rounds:
//! one caller in sequence (p50) and 64 in flight. Needs RabbitMQ on 127.0.0.1:5672.
//!
//! `cargo bench --bench amqp_rpc`

mod common;

use common::median;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{json, Value};
use switchyard::{rpc, Client, Service};
use tokio::sync::oneshot;

const ROUNDS: usize = 5;
const ROUND: Duration = Duration::from_millis(1500);
const URI: &str = "amqp://127.0.0.1:5672/%2f";

type Once = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

async fn helloworld(name: String) -> String {
    format!("Welcome {name}")
}

async fn raw_server(queue: String) {
    let conn = Connection::connect(URI, ConnectionProperties::default())
        .await
        .expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_qos(256, BasicQosOptions::default())
        .await
        .expect("qos");
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("queue");
    let mut calls = ch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    tokio::spawn(async move {
        let _conn = conn;
        while let Some(Ok(d)) = calls.next().await {
            let body: Value = serde_json::from_slice(&d.data).expect("body");
            let name = body["args"][0].as_str().unwrap_or_default();
            let reply = serde_json::to_vec(&json!([format!("Welcome {name}")])).expect("json");
            if let (Some(to), Some(cid)) = (d.properties.reply_to(), d.properties.correlation_id())
            {
                let props = BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_correlation_id(cid.clone());
                let _ = ch
                    .basic_publish(
                        "".into(),
                        to.clone(),
                        BasicPublishOptions::default(),
                        &reply,
                        props,
                    )
                    .await;
            }
            let _ = d.acker.ack(BasicAckOptions::default()).await;
        }
    });
}

async fn raw_client(queue: String) -> Once {
    let conn = Connection::connect(URI, ConnectionProperties::default())
        .await
        .expect("amqp");
    let ch: Channel = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut replies = ch
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("reply consumer");
    let waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>> = Arc::default();
    let w = waiting.clone();
    tokio::spawn(async move {
        let _conn = conn;
        while let Some(Ok(d)) = replies.next().await {
            if let Some(cid) = d.properties.correlation_id() {
                if let Some(tx) = w.lock().unwrap().remove(cid.as_str()) {
                    let _ = tx.send(d.data);
                }
            }
        }
    });
    let ch = Arc::new(ch);
    let queue = Arc::new(queue);
    Arc::new(move || {
        let (ch, queue, waiting) = (ch.clone(), queue.clone(), waiting.clone());
        Box::pin(async move {
            let cid = switchyard::message::new_id();
            let (tx, rx) = oneshot::channel();
            waiting.lock().unwrap().insert(cid.clone(), tx);
            let body = serde_json::to_vec(
                &json!({"args": ["Mr. Developer"], "kwargs": {}, "token": null}),
            )
            .expect("json");
            let props = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_correlation_id(cid.as_str().into())
                .with_reply_to("amq.rabbitmq.reply-to".into())
                .with_expiration("30000".into());
            let confirm = ch
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    props,
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
            assert!(confirm.take_message().is_none(), "raw call returned");
            let reply = rx.await.expect("reply");
            let v: Vec<Value> = serde_json::from_slice(&reply).expect("reply json");
            std::hint::black_box(v);
        })
    })
}

async fn round(once: &Once, callers: usize) -> (f64, f64) {
    let once = once.clone();
    let (rate, p50) = common::round(callers, ROUND, move || once()).await;
    (rate, p50.as_secs_f64() * 1e6)
}

fn main() {
    if !common::server_up("amqp_rpc benchmark (RabbitMQ)", "127.0.0.1:5672") {
        return;
    }
    common::runtime().block_on(async {
        let run = &switchyard::message::new_id()[..8];
        let raw_queue = format!("bench.raw.rpc.{run}");
        raw_server(raw_queue.clone()).await;
        let raw = raw_client(raw_queue).await;
        let url = format!("{URI}?ns=bench{run}");
        let _server = switchyard::serve(
            &switchyard::connect(&url).expect("amqp"),
            Service::new("bench").route("/hello", rpc(helloworld)),
        )
        .await
        .expect("serve");
        let client = Client::new(switchyard::connect(&url).expect("amqp")).service("bench");
        let ours: Once = Arc::new(move || {
            let c = client.clone();
            Box::pin(async move {
                let r: String = c
                    .call("/hello", "Mr. Developer".to_string())
                    .await
                    .expect("call");
                std::hint::black_box(r);
            })
        });
        raw().await;
        ours().await;
        for (label, callers) in [("sequential", 1usize), ("64 in flight", 64)] {
            let (mut rr, mut rp, mut or, mut op, mut ratio) =
                (vec![], vec![], vec![], vec![], vec![]);
            for i in 0..ROUNDS {
                let (a, b) = if i % 2 == 0 {
                    let a = round(&raw, callers).await;
                    (a, round(&ours, callers).await)
                } else {
                    let b = round(&ours, callers).await;
                    (round(&raw, callers).await, b)
                };
                rr.push(a.0);
                rp.push(a.1);
                or.push(b.0);
                op.push(b.1);
                ratio.push(b.0 / a.0);
            }
            println!("amqp RPC, {label} (median of {ROUNDS} alternating rounds):");
            println!(
                "  raw lapin   {:>8.0} calls/s  p50 {:>8.1} µs",
                median(rr),
                median(rp)
            );
            println!(
                "  switchyard  {:>8.0} calls/s  p50 {:>8.1} µs  ({:.2}x throughput)",
                median(or),
                median(op),
                median(ratio)
            );
        }
    });
}
