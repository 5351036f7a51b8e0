//! MQTT (Mosquitto) consume and RPC: switchyard against raw rumqttc doing the same work in the
//! same run, alternating rounds, medians.
//!
//! - **consume**: MQTT keeps no backlog for a clean session, so there is nothing stored to read
//!   as on the other brokers; instead two raw publishers flood N messages at QoS 0 (each with
//!   the CloudEvents user properties our events carry) into a group subscription
//!   (`$share/bench/<topic>`, taken at QoS 0 as the transport does), and the rate is counted at
//!   the subscriber from its first message to its last (one publisher alone is slower than
//!   either subscriber, and then both sides measure it). The publishers are the same for both
//!   sides; the subscriber is raw rumqttc counting packets or a switchyard subscription
//!   (prefetch 64) decoding each into an envelope and acknowledging it.
//! - **RPC**: the raw caller publishes each call at QoS 1 on one connection with an MQTT 5
//!   response topic and correlation data, waits for its PUBACK and for the reply, which comes
//!   on a second connection subscribed to its reply topic; the raw server answers at QoS 0
//!   with the same JSON bodies as ours. That is the shape of the transport's own calls: a raw
//!   caller that takes PUBACKs and replies on one socket waits about 40 ms per call, as
//!   Mosquitto's Nagle-delayed reply meets the caller's delayed ACK (measured: 44 ms a call).
//!
//! Needs Mosquitto on 127.0.0.1:1883. `cargo bench --bench mqtt`

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use serde_json::Value;
use switchyard::transport::SubscribeOptions;
use switchyard::{rpc, Client, Service};
use tokio::sync::{oneshot, Semaphore};

const URL: &str = "mqtt://127.0.0.1:1883?ns=benchmqtt";
const N: usize = 40_000;
const CONSUME_ROUNDS: usize = 5;
const ROUNDS: usize = 5;
const ROUND: Duration = Duration::from_millis(1500);

fn options(name: &str) -> MqttOptions {
    let mut o = MqttOptions::new(
        format!("bench-{name}-{}", &switchyard::message::new_id()[..8]),
        "127.0.0.1",
        1883,
    );
    o.set_keep_alive(Duration::from_secs(10));
    o.set_clean_start(true);
    o
}

/// Polls until the broker has acknowledged the connection and `subscriptions` SUBSCRIBEs.
async fn settle(eventloop: &mut EventLoop, mut subscriptions: usize) {
    let mut connected = false;
    while !connected || subscriptions > 0 {
        match eventloop.poll().await.expect("mqtt connection") {
            Event::Incoming(Packet::ConnAck(_)) => connected = true,
            Event::Incoming(Packet::SubAck(_)) => subscriptions -= 1,
            _ => {}
        }
    }
}

/// A raw connection whose events are polled (and dropped) by a task of its own.
async fn raw_publisher(name: &str) -> AsyncClient {
    let (client, mut eventloop) = AsyncClient::new(options(name), 1024);
    settle(&mut eventloop, 0).await;
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    client
}

/// N messages at QoS 0 from each publisher's share, each with the user properties a
/// switchyard event carries.
async fn flood(publishers: Vec<AsyncClient>, topic: String) {
    let per = N / publishers.len();
    let each = publishers.into_iter().enumerate().map(|(p, c)| {
        let topic = topic.clone();
        tokio::spawn(async move { flood_one(c, topic, p * per..(p + 1) * per).await })
    });
    for f in futures::future::join_all(each).await {
        f.expect("publisher");
    }
}

async fn flood_one(publisher: AsyncClient, topic: String, range: std::ops::Range<usize>) {
    for i in range {
        let props = PublishProperties {
            user_properties: vec![
                ("id".into(), switchyard::message::new_id()),
                ("specversion".into(), "1.0".into()),
                ("type".into(), "bench.event".into()),
                ("source".into(), "/bench".into()),
            ],
            content_type: Some("application/json".into()),
            ..Default::default()
        };
        publisher
            .publish_with_properties(
                topic.as_str(),
                QoS::AtMostOnce,
                false,
                format!(r#"{{"n":{i}}}"#),
                props,
            )
            .await
            .expect("publish");
    }
}

/// Messages per second from the first message to the last, or why not all came.
fn rate(start: Instant, got: usize) -> f64 {
    assert_eq!(got, N, "messages lost: {got} of {N} arrived");
    (N - 1) as f64 / start.elapsed().as_secs_f64()
}

async fn consume_raw(publishers: &[AsyncClient], topic: &str) -> f64 {
    let (client, mut eventloop) = AsyncClient::new(options("craw"), 1024);
    client
        .subscribe(format!("$share/bench/{topic}"), QoS::AtMostOnce)
        .await
        .expect("subscribe");
    settle(&mut eventloop, 1).await;
    let flooding = tokio::spawn(flood(publishers.to_vec(), topic.to_string()));
    let (mut start, mut got) = (Instant::now(), 0);
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while got < N {
            if let Event::Incoming(Packet::Publish(p)) = eventloop.poll().await.expect("poll") {
                if got == 0 {
                    start = Instant::now();
                }
                std::hint::black_box((&p.payload, &p.properties));
                got += 1;
            }
        }
    })
    .await;
    flooding.await.expect("publisher");
    let _ = client.try_disconnect();
    rate(start, got)
}

async fn consume_ours(
    t: &Arc<dyn switchyard::transport::Transport>,
    publishers: &[AsyncClient],
    topic: &str,
) -> f64 {
    let mut sub = t
        .subscribe(topic, SubscribeOptions::group("bench").prefetch(64))
        .await
        .expect("subscribe");
    let flooding = tokio::spawn(flood(publishers.to_vec(), topic.to_string()));
    let (mut start, mut got) = (Instant::now(), 0);
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while got < N {
            let d = sub.next().await.expect("open").expect("delivery");
            if got == 0 {
                start = Instant::now();
            }
            std::hint::black_box(&d.envelope.payload);
            d.ack().await.expect("ack");
            got += 1;
        }
    })
    .await;
    flooding.await.expect("publisher");
    rate(start, got)
}

async fn consume() {
    let t = switchyard::connect(URL).expect("mqtt");
    let publishers = vec![raw_publisher("flood1").await, raw_publisher("flood2").await];
    let mut rates = common::Rates::default();
    for round in 0..CONSUME_ROUNDS {
        let run = &switchyard::message::new_id()[..8];
        let (raw_topic, our_topic) = (format!("bench/craw/{run}"), format!("bench/cours/{run}"));
        let (r, o) = if round % 2 == 0 {
            let r = consume_raw(&publishers, &raw_topic).await;
            (r, consume_ours(&t, &publishers, &our_topic).await)
        } else {
            let o = consume_ours(&t, &publishers, &our_topic).await;
            (consume_raw(&publishers, &raw_topic).await, o)
        };
        rates.push(r, o);
    }
    rates.report(
        &format!("mqtt: consume {N} messages flooded at QoS 0 by two raw publishers (median of {CONSUME_ROUNDS} rounds)"),
        "raw rumqttc",
        "msg/s",
    );
}

async fn helloworld(name: String) -> String {
    format!("Welcome {name}")
}

const RAW_ROUTE: &str = "bench/rawrpc/hello";
type Waiting = Arc<Mutex<HashMap<Bytes, oneshot::Sender<Bytes>>>>;

/// The raw caller: one connection publishes calls (PUBACKs counted into `acked`), one takes
/// replies and matches them by correlation data.
#[derive(Clone)]
struct RawClient {
    calls: AsyncClient,
    acked: Arc<Semaphore>,
    reply_topic: Arc<String>,
    waiting: Waiting,
}

impl RawClient {
    async fn connect() -> Self {
        let (calls, mut call_loop) = AsyncClient::new(options("rpc-calls"), 1024);
        settle(&mut call_loop, 0).await;
        let acked = Arc::new(Semaphore::new(0));
        let a = acked.clone();
        tokio::spawn(async move {
            while let Ok(ev) = call_loop.poll().await {
                if let Event::Incoming(Packet::PubAck(_)) = ev {
                    a.add_permits(1);
                }
            }
        });
        let reply_topic = Arc::new(format!(
            "bench/rawreply/{}",
            &switchyard::message::new_id()[..8]
        ));
        let (replies, mut reply_loop) = AsyncClient::new(options("rpc-replies"), 1024);
        replies
            .subscribe(reply_topic.as_str(), QoS::AtMostOnce)
            .await
            .expect("subscribe");
        settle(&mut reply_loop, 1).await;
        let waiting: Waiting = Arc::default();
        let w = waiting.clone();
        tokio::spawn(async move {
            let _keep = replies;
            while let Ok(ev) = reply_loop.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = ev {
                    let cid = p.properties.and_then(|p| p.correlation_data);
                    if let Some(tx) = cid.and_then(|c| w.lock().expect("lock").remove(&c)) {
                        let _ = tx.send(p.payload);
                    }
                }
            }
        });
        Self {
            calls,
            acked,
            reply_topic,
            waiting,
        }
    }

    async fn call(&self) -> String {
        let cid = Bytes::from(switchyard::message::new_id());
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().expect("lock").insert(cid.clone(), tx);
        let props = PublishProperties {
            response_topic: Some(self.reply_topic.to_string()),
            correlation_data: Some(cid),
            content_type: Some("application/json".into()),
            ..Default::default()
        };
        self.calls
            .publish_with_properties(
                RAW_ROUTE,
                QoS::AtLeastOnce,
                false,
                r#"{"args":["Mr. Developer"],"kwargs":{},"token":null}"#,
                props,
            )
            .await
            .expect("publish");
        // PUBACKs come in order; with many in flight any one stands for ours.
        self.acked.acquire().await.expect("acked").forget();
        let body = rx.await.expect("reply");
        let values: Vec<Value> = serde_json::from_slice(&body).expect("reply body");
        values[0].as_str().unwrap_or_default().to_string()
    }
}

/// The raw server: answers each call where it is read, at QoS 0, on its own connection.
async fn raw_server() {
    let (client, mut eventloop) = AsyncClient::new(options("rpc-server"), 1024);
    client
        .subscribe(RAW_ROUTE, QoS::AtMostOnce)
        .await
        .expect("subscribe");
    settle(&mut eventloop, 1).await;
    tokio::spawn(async move {
        while let Ok(ev) = eventloop.poll().await {
            let Event::Incoming(Packet::Publish(p)) = ev else {
                continue;
            };
            let Some(props) = p.properties else { continue };
            let Some(reply_to) = props.response_topic else {
                continue;
            };
            let call: Value = serde_json::from_slice(&p.payload).expect("call body");
            let name = call["args"][0].as_str().unwrap_or_default();
            let body = serde_json::to_vec(&[format!("Welcome {name}")]).expect("json");
            let reply = PublishProperties {
                correlation_data: props.correlation_data,
                content_type: Some("application/json".into()),
                ..Default::default()
            };
            client
                .publish_with_properties(reply_to, QoS::AtMostOnce, false, body, reply)
                .await
                .expect("reply");
        }
    });
}

#[derive(Clone)]
enum Side {
    Raw(RawClient),
    Ours(Client),
}

impl Side {
    async fn once(self) {
        let r = match self {
            Side::Raw(c) => c.call().await,
            Side::Ours(c) => c
                .call::<_, String>("/hello", "Mr. Developer".to_string())
                .await
                .expect("call"),
        };
        std::hint::black_box(r);
    }
}

async fn calls() {
    raw_server().await;
    let raw = Side::Raw(RawClient::connect().await);
    let _server = switchyard::serve(
        &switchyard::connect(URL).expect("mqtt"),
        Service::new("bench").route("/hello", rpc(helloworld)),
    )
    .await
    .expect("serve");
    let ours = Side::Ours(Client::new(switchyard::connect(URL).expect("mqtt")).service("bench"));
    for (label, workers) in [("one caller in sequence", 1), ("64 in flight", 64)] {
        common::compare_sides(
            &format!("mqtt RPC, {label}"),
            "raw rumqttc",
            (ROUNDS, ROUND, workers),
            (&raw, &ours),
            Side::once,
        )
        .await;
    }
}

fn main() {
    if !common::server_up("mqtt benchmark (Mosquitto)", "127.0.0.1:1883") {
        return;
    }
    common::runtime().block_on(async {
        if std::env::var("BENCH_ONLY").map_or(true, |o| o == "consume") {
            consume().await;
        }
        if std::env::var("BENCH_ONLY").map_or(true, |o| o == "rpc") {
            calls().await;
        }
    });
}
