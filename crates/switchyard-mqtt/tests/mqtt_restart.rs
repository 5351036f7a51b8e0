//! After a real restart of Mosquitto, every connection comes back by itself: a group
//! subscription made before the restart receives what is published after it, and a service
//! served before the restart answers calls again. Alone in this file because it stops the broker
//! the other MQTT tests use (cargo runs test files one after another).
//!
//! MQTT here keeps clean sessions, so what was in flight during the restart may be lost (the
//! transport declares itself not durable); this test checks reconnection, not retention.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard_core::message::Envelope;
use switchyard_core::testkit::{require_server, wait_for_port};
use switchyard_core::transport::{Publisher, SubscribeOptions, Subscriber};
use switchyard_core::{rpc, Client, Service};
use switchyard_mqtt::MqttTransport;

const CONF: &str = "/etc/mosquitto/mosquitto.conf";

/// Stops Mosquitto and starts it with the machine's own command (scripts/services.sh).
fn restart_mosquitto() {
    let _ = Command::new("pkill").args(["-x", "mosquitto"]).status();
    wait_for_port("Mosquitto", "127.0.0.1:1883", false);
    let started = Command::new("mosquitto")
        .args(["-d", "-c", CONF])
        .status()
        .expect("mosquitto");
    assert!(started.success(), "mosquitto -d -c {CONF} failed");
    wait_for_port("Mosquitto", "127.0.0.1:1883", true);
}

async fn shout(text: String) -> String {
    text.to_uppercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_restart() {
    if !require_server(
        "mqtt_reconnects_after_restart",
        "Mosquitto",
        "127.0.0.1:1883",
    ) {
        return;
    }
    if !std::path::Path::new(CONF).exists() {
        if std::env::var_os("SWITCHYARD_REQUIRE_ALL").is_some() {
            panic!("cannot restart Mosquitto here: no {CONF}");
        }
        eprintln!("SKIPPED broker test mqtt_reconnects_after_restart: no {CONF} to restart Mosquitto with");
        return;
    }
    let url = format!(
        "mqtt://127.0.0.1:1883?ns=restart{}",
        &switchyard_core::message::new_id()[..8]
    );
    let topic = format!("restart.{}", &switchyard_core::message::new_id()[..8]);
    let transport = Arc::new(MqttTransport::from_url(&url).expect("url"));
    let server = switchyard_core::server::serve(
        transport.clone(),
        Service::new("shouter").route("/shout", rpc(shout)),
    )
    .await
    .expect("serve");
    let client = Client::new(transport.clone())
        .service("shouter")
        .with_timeout(Duration::from_secs(2));
    let reply: String = client
        .call("/shout", "before".to_string())
        .await
        .expect("call");
    assert_eq!(reply, "BEFORE");
    let mut sub = transport
        .subscribe(&topic, SubscribeOptions::group("g"))
        .await
        .expect("subscribe");

    tokio::task::spawn_blocking(restart_mosquitto)
        .await
        .expect("restart");

    // Calls come back once the server re-subscribed and the client reconnected.
    let deadline = Instant::now() + Duration::from_secs(60);
    let reply = loop {
        match client
            .call::<_, String>("/shout", "after".to_string())
            .await
        {
            Ok(r) => break r,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no call succeeded within 60 s after the restart: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(reply, "AFTER");
    // The subscription re-subscribed by itself: keep publishing until one arrives.
    let got = loop {
        transport
            .publish(Envelope::new(&topic, br#""after""#.to_vec()))
            .await
            .expect("publish after restart");
        match tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
            Ok(Some(Ok(d))) => break d,
            Ok(Some(Err(_))) | Err(_) => {
                assert!(
                    Instant::now() < deadline,
                    "the subscription did not come back within 60 s"
                );
            }
            Ok(None) => panic!("the subscription ended"),
        }
    };
    assert_eq!(got.envelope.payload.as_ref(), br#""after""#);
    got.ack().await.expect("ack");
    server.shutdown().await;
}
