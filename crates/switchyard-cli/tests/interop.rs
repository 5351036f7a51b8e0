//! CloudEvents interop with plain clients of each broker (pika, paho-mqtt, kafka-python,
//! nats-py): an
//! event they publish in their protocol's CloudEvents binding arrives as a well-formed
//! envelope, and an event we publish reaches them with its attributes where the binding puts
//! them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use switchyard::message::{header, Envelope};
use switchyard::testkit::require_server;
use switchyard::transport::SubscribeOptions;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/python/cloudevents_interop.py"
);

/// `true` when python3 can import `module`; otherwise skips loudly, or fails under
/// `SWITCHYARD_REQUIRE_ALL` (CI installs the clients).
fn python_has(test: &str, module: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        // The PyPI names of the modules the script imports.
        let package = match module {
            "kafka" => "kafka-python",
            "nats" => "nats-py",
            "paho.mqtt" => "paho-mqtt",
            other => other,
        };
        let why = format!("python3 cannot import {module} (pip install {package})");
        if std::env::var_os("SWITCHYARD_REQUIRE_ALL").is_some() {
            panic!("{test}: {why}");
        }
        eprintln!("SKIPPED broker test {test}: {why}");
    }
    ok
}

async fn interop(proto: &str, module: &str, server: &str, addr: &str, url: &str) {
    let test = format!("cloudevents_interop_{proto}");
    if !require_server(&test, server, addr) || !python_has(&test, module) {
        return;
    }
    let transport = switchyard::connect(url).expect("transport");
    let run = &switchyard::message::new_id()[..8];

    // A plain client publishes; we consume.
    let inbound = format!("interop.{proto}.in.{run}");
    let mut sub = transport
        .subscribe(&inbound, SubscribeOptions::group("interop"))
        .await
        .expect("subscribe");
    let sent = Command::new("python3")
        .args([SCRIPT, proto, "send", &inbound])
        .output()
        .expect("python3");
    assert!(
        sent.status.success(),
        "{proto} plain publish failed: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let d = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .unwrap_or_else(|_| panic!("{proto}: the plain client's event did not arrive"))
        .expect("open")
        .expect("delivery");
    let env = &d.envelope;
    assert_eq!(env.id, "plain-client-1", "{proto}: {env:?}");
    assert_eq!(
        env.headers.get(header::CE_TYPE),
        Some("com.example.order.created"),
        "{proto}: {env:?}"
    );
    assert_eq!(
        env.headers.get(header::CE_SOURCE),
        Some("/plain-client"),
        "{proto}: {env:?}"
    );
    assert_eq!(
        env.headers.get(header::CONTENT_TYPE),
        Some("application/json"),
        "{proto}: {env:?}"
    );
    assert_eq!(env.payload.as_ref(), br#"{"order": 7}"#, "{proto}");
    d.ack().await.expect("ack");
    drop(sub);

    // We publish; a plain client consumes.
    let outbound = format!("interop.{proto}.out.{run}");
    // Creates the topic where the broker needs one before a reader can attach (Kafka).
    drop(
        transport
            .subscribe(&outbound, SubscribeOptions::broadcast())
            .await
            .expect("subscribe"),
    );
    let mut reader = Command::new("python3")
        .args([SCRIPT, proto, "recv", &outbound])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let stdout = reader.stdout.take().expect("stdout");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    assert_eq!(next_line(proto, &mut rx).await, "\"ready\"");
    let env = Envelope::new(&outbound, br#"{"shipped":true}"#.to_vec())
        .with_header(header::CE_TYPE, "com.example.order.shipped")
        .with_header(header::CE_SOURCE, "/switchyard-test");
    let id = env.id.clone();
    transport.publish(env).await.expect("publish");
    let line = next_line(proto, &mut rx).await;
    let got: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
    let attrs = &got["attributes"];
    assert_eq!(attrs["id"], id.as_str(), "{proto}: {line}");
    assert_eq!(attrs["specversion"], "1.0", "{proto}: {line}");
    assert_eq!(
        attrs["type"], "com.example.order.shipped",
        "{proto}: {line}"
    );
    assert_eq!(attrs["source"], "/switchyard-test", "{proto}: {line}");
    assert_eq!(
        attrs["datacontenttype"], "application/json",
        "{proto}: {line}"
    );
    assert_eq!(
        got["data"],
        serde_json::json!({"shipped": true}),
        "{proto}: {line}"
    );
    let _ = reader.wait();
}

async fn next_line(proto: &str, rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{proto}: the plain reader said nothing"))
        .unwrap_or_else(|| panic!("{proto}: the plain reader exited"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_interop_amqp() {
    interop(
        "amqp",
        "pika",
        "RabbitMQ",
        "127.0.0.1:5672",
        "amqp://127.0.0.1:5672/%2f",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_interop_mqtt() {
    interop(
        "mqtt",
        "paho.mqtt",
        "Mosquitto",
        "127.0.0.1:1883",
        "mqtt://127.0.0.1:1883",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_interop_kafka() {
    interop(
        "kafka",
        "kafka",
        "Kafka (Tansu)",
        "127.0.0.1:9092",
        "kafka://127.0.0.1:9092",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_interop_nats() {
    interop(
        "nats",
        "nats",
        "NATS",
        "127.0.0.1:4222",
        "nats://127.0.0.1:4222/interop",
    )
    .await;
}
