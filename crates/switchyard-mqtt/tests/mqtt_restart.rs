//! After a real restart of a Mosquitto this test starts, stops and starts again itself (on a
//! port of its own), every connection comes back by itself: a group subscription made before
//! the restart receives what is published after it, and a service served before the restart
//! answers calls again. The transport says it is not connected while the broker is gone (what
//! `/readyz` reports) and connected again once it is back.
//!
//! MQTT here keeps clean sessions, so what was in flight during the restart may be lost (the
//! transport declares itself not durable); this test checks reconnection, not retention.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard_core::message::Envelope;
use switchyard_core::testkit::{
    answered, eventually, free_port, require_program, start_server, wait_for_port, Killed,
};
use switchyard_core::transport::{Publisher, SubscribeOptions, Subscriber, Transport};
use switchyard_core::{rpc, Client, Service};
use switchyard_mqtt::MqttTransport;

/// Starts a Mosquitto of this test's own on `port` (no configuration file: loopback only,
/// anonymous clients allowed).
fn start_mosquitto(port: u16) -> Killed {
    start_server("mosquitto", &["-p", &port.to_string()], port)
}

async fn shout(text: String) -> String {
    text.to_uppercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_restart() {
    if !require_program("mqtt_reconnects_after_restart", "mosquitto") {
        return;
    }
    let port = free_port();
    let broker = Arc::new(Mutex::new(Some(start_mosquitto(port))));
    let url = format!(
        "mqtt://127.0.0.1:{port}?ns=restart{}",
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

    assert!(transport.connected(), "connected while Mosquitto runs");

    let stopping = broker.clone();
    tokio::task::spawn_blocking(move || {
        drop(stopping.lock().expect("lock").take());
        wait_for_port("Mosquitto", &format!("127.0.0.1:{port}"), false);
    })
    .await
    .expect("stop");
    eventually(
        Duration::from_secs(10),
        "not connected once Mosquitto is gone",
        || !transport.connected(),
    )
    .await;
    assert_eq!(
        switchyard_core::observe::not_connected(),
        vec![transport.url()],
        "what /readyz names"
    );
    let restarting = broker.clone();
    tokio::task::spawn_blocking(move || {
        *restarting.lock().expect("lock") = Some(start_mosquitto(port));
    })
    .await
    .expect("restart");
    eventually(
        Duration::from_secs(30),
        "connected once Mosquitto is back",
        || transport.connected(),
    )
    .await;

    // Calls come back once the server re-subscribed and the client reconnected.
    let deadline = Instant::now() + Duration::from_secs(60);
    let reply: String = answered(
        &client,
        "/shout",
        "after".to_string(),
        Duration::from_secs(60),
    )
    .await;
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
