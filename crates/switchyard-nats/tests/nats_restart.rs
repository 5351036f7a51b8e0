//! Reconnect after a real restart of a NATS server (JetStream on) that this test starts, stops
//! and starts again itself, on a port and a store folder of its own: every publish that
//! JetStream confirmed is delivered, and calls are answered again.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use switchyard_core::testkit::{self, free_port, require_program, wait_for_port, Harness, Killed};
use switchyard_core::transport::Transport;
use switchyard_nats::NatsTransport;

/// This test's server: its port, its JetStream folder, and the running process.
struct OwnNats {
    port: u16,
    store: std::path::PathBuf,
    process: Mutex<Option<Killed>>,
}

fn own() -> &'static OwnNats {
    static OWN: OnceLock<OwnNats> = OnceLock::new();
    OWN.get_or_init(|| {
        let store = std::env::temp_dir().join(format!(
            "switchyard-nats-restart-{}",
            &switchyard_core::message::new_id()[..8]
        ));
        OwnNats {
            port: free_port(),
            store,
            process: Mutex::new(None),
        }
    })
}

fn start_nats() {
    let own = own();
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &own.port.to_string(), "-js", "-sd"])
        .arg(&own.store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    wait_for_port("nats-server", &format!("127.0.0.1:{}", own.port), true);
    *own.process.lock().expect("lock") = Some(Killed(child));
}

/// Stops this test's server and starts it again on the same port and folder.
fn restart_nats() {
    eprintln!("restarting nats-server on {}", own().port);
    let own = own();
    drop(own.process.lock().expect("lock").take());
    wait_for_port("nats-server", &format!("127.0.0.1:{}", own.port), false);
    start_nats();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_after_restart() {
    if !require_program("reconnect_after_restart", "nats-server") {
        return;
    }
    start_nats();
    let port = own().port;
    let mut h = Harness::new(
        move || {
            format!(
                "nats://127.0.0.1:{port}/restart{}?ack_wait_ms=3000",
                &switchyard_core::message::new_id()[..8]
            )
        },
        |url| Ok(Arc::new(NatsTransport::from_url(url)?) as Arc<dyn Transport>),
    );
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
    calls_answered_after_restart(port).await;
    drop(own().process.lock().expect("lock").take());
    let _ = std::fs::remove_dir_all(&own().store);
}

async fn hello(name: String) -> String {
    format!("Welcome {name}")
}

/// Calls wait for their replies on one inbox subscription per transport: after a restart
/// the client subscribes again by itself, and calls are answered again.
async fn calls_answered_after_restart(port: u16) {
    use std::time::{Duration, Instant};
    use switchyard_core::{rpc, Client, Service};
    let url = format!(
        "nats://127.0.0.1:{port}/restartrpc{}",
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
