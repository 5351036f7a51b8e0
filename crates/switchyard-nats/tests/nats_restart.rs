//! Reconnect after a real restart of the NATS server: every publish that JetStream confirmed
//! is delivered. Alone in this file because it stops the server the other NATS tests use
//! (cargo runs test files one after another).

use std::process::Command;
use std::sync::Arc;

use switchyard_core::testkit::{self, wait_for_port, Harness};
use switchyard_core::transport::Transport;
use switchyard_nats::NatsTransport;

const NATS: &str = "/usr/sbin/nats-server";

/// Stops and starts the server with the machine's own commands (scripts/services.sh).
fn restart_nats() {
    let _ = Command::new("start-stop-daemon")
        .args(["--stop", "--oknodo", "--exec", NATS])
        .status();
    wait_for_port("NATS", "127.0.0.1:4222", false);
    let started = Command::new("start-stop-daemon")
        .args([
            "--start",
            "--oknodo",
            "--background",
            "--exec",
            NATS,
            "--",
            "-a",
            "127.0.0.1",
            "-p",
            "4222",
            "-js",
            "-sd",
            "/var/lib/nats-server",
            "-l",
            "/var/log/nats-server.log",
        ])
        .status()
        .expect("start-stop-daemon");
    assert!(started.success());
    wait_for_port("NATS", "127.0.0.1:4222", true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_after_restart() {
    let mut h = Harness::new(
        || {
            format!(
                "nats://127.0.0.1:4222/restart{}?ack_wait_ms=3000",
                &switchyard_core::message::new_id()[..8]
            )
        },
        |url| Ok(Arc::new(NatsTransport::from_url(url)?) as Arc<dyn Transport>),
    )
    .require_tcp("NATS", "127.0.0.1:4222");
    if !std::path::Path::new(NATS).exists()
        || Command::new("start-stop-daemon")
            .arg("--version")
            .output()
            .is_err()
    {
        h.unavailable = Some(format!(
            "cannot restart NATS here ({NATS} and start-stop-daemon are needed)"
        ));
    }
    if !h.available("reconnect_after_restart") {
        return;
    }
    h.restart = Some(Arc::new(|| {
        Box::pin(async {
            tokio::task::spawn_blocking(restart_nats)
                .await
                .expect("restart")
        })
    }));
    testkit::check(
        "reconnect_after_restart",
        testkit::reconnect_after_restart(&h).await,
    );
    calls_answered_after_restart().await;
}

async fn hello(name: String) -> String {
    format!("Welcome {name}")
}

/// Calls wait for their replies on one inbox subscription per transport: after a restart
/// the client subscribes again by itself, and calls are answered again.
async fn calls_answered_after_restart() {
    use std::time::{Duration, Instant};
    use switchyard_core::{rpc, Client, Service};
    let url = format!(
        "nats://127.0.0.1:4222/restartrpc{}",
        &switchyard_core::message::new_id()[..8]
    );
    let server = Arc::new(NatsTransport::from_url(&url).expect("url"));
    let _serving =
        switchyard_core::server::serve(server, Service::new("restart").route("/hello", rpc(hello)))
            .await
            .expect("serve");
    let client = Client::new(Arc::new(NatsTransport::from_url(&url).expect("url")))
        .service("restart")
        .with_timeout(Duration::from_secs(2));
    let first: String = client
        .call("/hello", "before".to_string())
        .await
        .expect("call");
    assert_eq!(first, "Welcome before");
    tokio::task::spawn_blocking(restart_nats)
        .await
        .expect("restart");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client
            .call::<_, String>("/hello", "after".to_string())
            .await
        {
            Ok(reply) => {
                assert_eq!(reply, "Welcome after");
                break;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("call after restart not answered yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("calls not answered 30 s after the restart: {e}"),
        }
    }
}
