//! A Redis this test starts itself (on a port of its own, keeping nothing on disk) is killed
//! and started again under a service that answers calls and consumes a topic in a group:
//! the transport says it is not connected while Redis is gone (what `/readyz` reports) and
//! connected again once it is back; calls are answered again, and the consumer, whose group
//! the empty Redis no longer has, makes it again and takes what is published after.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use switchyard_core::message::Envelope;
use switchyard_core::testkit::{
    answered, eventually, free_port, require_program, start_server, wait_for_port, Killed,
};
use switchyard_core::transport::{Publisher, Transport};
use switchyard_core::{rpc, Client, Service};
use switchyard_redis::RedisTransport;

const TEST: &str = "redis_reconnects_after_restart";

/// Starts a Redis of this test's own on `port`: loopback only, no persistence.
fn start_redis(port: u16) -> Killed {
    let port_arg = port.to_string();
    let args = [
        "--port",
        &port_arg,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ];
    start_server("redis-server", &args, port)
}

async fn shout(text: String) -> String {
    text.to_uppercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_restart() {
    if !require_program(TEST, "redis-server") {
        return;
    }
    let port = free_port();
    let mut redis = Some(start_redis(port));
    let url = format!(
        "redis://127.0.0.1:{port}?ns=restart{}",
        &switchyard_core::message::new_id()[..8]
    );
    let topic = format!("restart.{}", &switchyard_core::message::new_id()[..8]);
    let transport = Arc::new(RedisTransport::from_url(&url).expect("url"));
    let received = Arc::new(AtomicUsize::new(0));
    let counted = received.clone();
    let service = Service::new("shouter")
        .route("/shout", rpc(shout))
        .on_event(&topic, move |n: u32| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(n as usize, Ordering::SeqCst);
            }
        });
    let server = switchyard_core::server::serve(transport.clone(), service)
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
    transport
        .publish(Envelope::new(&topic, b"1".to_vec()))
        .await
        .expect("publish");
    eventually(
        Duration::from_secs(10),
        "the event before the restart",
        || received.load(Ordering::SeqCst) == 1,
    )
    .await;
    assert!(transport.connected(), "connected while Redis runs");
    assert!(switchyard_core::observe::not_connected().is_empty());

    drop(redis.take());
    wait_for_port("redis-server", &format!("127.0.0.1:{port}"), false);
    // The serving connections read every half second at most: they find it gone.
    eventually(
        Duration::from_secs(10),
        "not connected once Redis is gone",
        || !transport.connected(),
    )
    .await;
    let down = switchyard_core::observe::not_connected();
    assert_eq!(down, vec![transport.url()], "what /readyz names");

    redis = Some(start_redis(port));
    eventually(
        Duration::from_secs(30),
        "connected once Redis is back",
        || transport.connected(),
    )
    .await;

    // Calls come back once the service's heartbeat is written again (every second).
    let reply: String = answered(
        &client,
        "/shout",
        "after".to_string(),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(reply, "AFTER");
    // The restarted Redis is empty: the consumer makes its group again and takes what comes
    // next. Published once the group is back (a publish before it, to an empty stream, is
    // read too: the group is made reading from the stream's start).
    transport
        .publish(Envelope::new(&topic, b"10".to_vec()))
        .await
        .expect("publish after the restart");
    eventually(
        Duration::from_secs(30),
        "the event after the restart",
        || received.load(Ordering::SeqCst) == 11,
    )
    .await;
    assert!(transport.connected());
    server.shutdown().await;
    drop(redis);
}
