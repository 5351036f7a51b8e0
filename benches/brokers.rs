//! RabbitMQ, MQTT and Kafka: confirmed publishes (64 in flight) through switchyard against the
//! raw client crate doing the same work in the same run, alternating rounds:
//! - amqp: lapin on a confirm-mode channel, persistent message to the same topic exchange;
//! - mqtt: rumqttc QoS 1 with the CloudEvents user properties ours sends, each publish done
//!   when its PUBACK came (a semaphore of 64);
//! - kafka: rdkafka's FutureProducer with acks=all.
//!
//! Servers absent are skipped with a message. `cargo bench --bench brokers`

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use switchyard::transport::Transport;
use switchyard::Envelope;
use tokio::sync::Semaphore;

const ROUNDS: usize = 5;
const ROUND: Duration = Duration::from_millis(1500);
const BODY: &str = r#"{"n":1}"#;

type Once = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

async fn round(once: &Once) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let once = once.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < ROUND {
                once().await;
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

async fn compare(what: &str, raw_name: &str, raw: Once, ours: Once) {
    let mut rates = common::Rates::default();
    for i in 0..ROUNDS {
        let (x, y) = if i % 2 == 0 {
            let x = round(&raw).await;
            (x, round(&ours).await)
        } else {
            let y = round(&ours).await;
            (round(&raw).await, y)
        };
        rates.push(x, y);
    }
    rates.report(
        &format!("{what}, 64 in flight (median of {ROUNDS} alternating rounds)"),
        &format!("raw {raw_name}"),
        "msg/s",
    );
}

fn ours(url: &str, topic: String) -> Once {
    let t: Arc<dyn Transport> = switchyard::connect(url).expect("transport");
    let topic = Arc::new(topic);
    Arc::new(move || {
        let (t, topic) = (t.clone(), topic.clone());
        Box::pin(async move {
            t.publish(Envelope::new(topic.as_str(), BODY))
                .await
                .expect("publish")
        })
    })
}

async fn amqp(run: &str) {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::types::{AMQPValue, FieldTable, LongString};
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    let conn = Connection::connect("amqp://127.0.0.1:5672/%2f", ConnectionProperties::default())
        .await
        .expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    // Prime the exchange, then bind one durable queue to both topics, so that both sides'
    // messages are routed and stored alike (an unroutable message is confirmed at once).
    let ours_once = ours("amqp://127.0.0.1:5672/%2f", format!("bench.ours.{run}"));
    ours_once().await;
    let queue = format!("bench.q.{run}");
    ch.queue_declare(
        queue.as_str().into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("queue");
    for side in ["raw", "ours"] {
        ch.queue_bind(
            queue.as_str().into(),
            "sy.events".into(),
            format!("bench.{side}.{run}").as_str().into(),
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    }
    let cleanup = conn.create_channel().await.expect("channel");
    let ch = Arc::new(ch);
    let raw_topic = Arc::new(format!("bench.raw.{run}"));
    let raw: Once = Arc::new(move || {
        let (ch, topic) = (ch.clone(), raw_topic.clone());
        Box::pin(async move {
            // The same headers our envelope carries.
            let mut h = FieldTable::default();
            for (k, v) in [
                ("cloudEvents:id", switchyard::message::new_id()),
                ("cloudEvents:specversion", "1.0".into()),
                ("cloudEvents:type", topic.to_string()),
                ("cloudEvents:source", "/switchyard".into()),
            ] {
                h.insert(k.into(), AMQPValue::LongString(LongString::from(v)));
            }
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_headers(h);
            ch.basic_publish(
                "sy.events".into(),
                topic.as_str().into(),
                BasicPublishOptions::default(),
                BODY.as_bytes(),
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        })
    });
    compare(
        "amqp: confirmed persistent publish to a durable queue",
        "lapin",
        raw,
        ours_once,
    )
    .await;
    let _ = cleanup
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
}

async fn mqtt(run: &str) {
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut o = MqttOptions::new(format!("bench-raw-{run}"), "127.0.0.1", 1883);
    o.set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(o, 1024);
    let room = Arc::new(Semaphore::new(0));
    let acks = Arc::new(AtomicU64::new(0));
    let (r, a) = (room.clone(), acks.clone());
    tokio::spawn(async move {
        while let Ok(ev) = eventloop.poll().await {
            if let Event::Incoming(Packet::PubAck(_)) = ev {
                a.fetch_add(1, Ordering::Relaxed);
                r.add_permits(1);
            }
        }
    });
    let topic = Arc::new(format!("bench.raw.{run}"));
    // Each raw publish waits for a PUBACK; acknowledgements come in order, so the waiting
    // task takes any one (what matters is 64 unacknowledged at most, as for ours).
    let raw: Once = Arc::new(move || {
        let (c, topic, room) = (client.clone(), topic.clone(), room.clone());
        Box::pin(async move {
            // The same message on the wire as ours: the CloudEvents binding's user
            // properties and content type.
            let props = PublishProperties {
                user_properties: vec![
                    ("specversion".into(), "1.0".into()),
                    ("id".into(), switchyard::message::new_id()),
                    ("type".into(), topic.to_string()),
                    ("source".into(), "/switchyard".into()),
                ],
                content_type: Some("application/json".into()),
                ..Default::default()
            };
            c.publish_with_properties(topic.as_str(), QoS::AtLeastOnce, false, BODY, props)
                .await
                .expect("publish");
            room.acquire().await.expect("ack").forget();
        })
    });
    compare(
        "mqtt: QoS 1 publish (PUBACK awaited)",
        "rumqttc",
        raw,
        ours("mqtt://127.0.0.1:1883", format!("bench.ours.{run}")),
    )
    .await;
}

async fn kafka(run: &str) {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:9092")
        .set("acks", "all")
        .set("linger.ms", "1")
        .create()
        .expect("producer");
    let ours_once = ours("kafka://127.0.0.1:9092", format!("bench.ours.{run}"));
    ours_once().await;
    let topic = Arc::new(format!("bench.ours.{run}"));
    let producer = Arc::new(producer);
    let raw: Once = Arc::new(move || {
        let (p, topic) = (producer.clone(), topic.clone());
        Box::pin(async move {
            p.send(
                FutureRecord::<(), _>::to(topic.as_str()).payload(BODY),
                Duration::from_secs(30),
            )
            .await
            .expect("send");
        })
    });
    // The raw side sends no headers; ours sends its CloudEvents and content-type headers.
    compare("kafka: publish with acks=all", "rdkafka", raw, ours_once).await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let run = switchyard::message::new_id()[..8].to_string();
    // `BENCH_ONLY=amqp|mqtt|kafka` runs one broker (for profiling).
    let only = std::env::var("BENCH_ONLY").ok();
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);
    rt.block_on(async {
        if wanted("amqp") && common::server_up("amqp benchmark", "127.0.0.1:5672") {
            amqp(&run).await;
        }
        if wanted("mqtt") && common::server_up("mqtt benchmark", "127.0.0.1:1883") {
            mqtt(&run).await;
        }
        if wanted("kafka") && common::server_up("kafka benchmark", "127.0.0.1:9092") {
            kafka(&run).await;
        }
    });
}
