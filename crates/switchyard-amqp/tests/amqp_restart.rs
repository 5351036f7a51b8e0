//! Reconnect after a real restart of a RabbitMQ node this test starts itself (its own node
//! name, ports and folders; never the machine's broker): every publish the broker confirmed is
//! delivered.
//!
//! `rabbitmqctl stop_app` / `start_app` stop and start the broker inside its Erlang node:
//! every connection is dropped and the durable queues are recovered from disk, as after a
//! process restart, in two seconds instead of ten.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_amqp::AmqpTransport;
use switchyard_core::testkit::{self, free_port, Harness};
use switchyard_core::transport::Transport;

const BIN: &str = "/usr/lib/rabbitmq/bin";

/// A RabbitMQ node of this test's own, shut down and its folder removed when dropped.
struct OwnRabbit {
    node: String,
    dir: PathBuf,
    port: u16,
    process: std::sync::Mutex<std::process::Child>,
}

impl OwnRabbit {
    fn start() -> Self {
        let id = &switchyard_core::message::new_id()[..8];
        let node = format!("switchyard{id}@localhost");
        let dir = std::env::temp_dir().join(format!("switchyard-rabbit-{id}"));
        std::fs::create_dir_all(&dir).expect("folder");
        std::fs::write(dir.join("plugins"), "[].").expect("plugins file");
        let port = free_port();
        let process = Command::new(format!("{BIN}/rabbitmq-server"))
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("none"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rabbitmq-server");
        let own = Self {
            node,
            dir,
            port,
            process: std::sync::Mutex::new(process),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "our RabbitMQ node did not start in 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        own
    }

    fn ctl(&self, what: &str) {
        let out = Command::new(format!("{BIN}/rabbitmqctl"))
            .args(["-n", &self.node, what])
            .output()
            .unwrap_or_else(|e| panic!("rabbitmqctl {what}: {e}"));
        assert!(
            out.status.success(),
            "rabbitmqctl {what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnRabbit {
    fn drop(&mut self) {
        let _ = Command::new(format!("{BIN}/rabbitmqctl"))
            .args(["-n", &self.node, "shutdown"])
            .output();
        if let Ok(process) = self.process.get_mut() {
            let _ = process.kill();
            let _ = process.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_after_restart() {
    if !std::path::Path::new(&format!("{BIN}/rabbitmq-server")).exists() {
        let why = format!("cannot start a RabbitMQ node here (no {BIN}/rabbitmq-server)");
        // Skipped loudly, or a failure under SWITCHYARD_REQUIRE_ALL.
        assert!(!testkit::skip_or_fail("reconnect_after_restart", &why));
        return;
    }
    let rabbit = Arc::new(
        tokio::task::spawn_blocking(OwnRabbit::start)
            .await
            .expect("start"),
    );
    let port = rabbit.port;
    let mut h = Harness::new(
        move || {
            format!(
                "amqp://guest:guest@127.0.0.1:{port}/%2f?ns=restart{}&queue_expires_ms=60000",
                &switchyard_core::message::new_id()[..8]
            )
        },
        |url| Ok(Arc::new(AmqpTransport::from_url(url)?) as Arc<dyn Transport>),
    );
    if !h.available("reconnect_after_restart") {
        return;
    }
    let restarting = rabbit.clone();
    h.restart = Some(Arc::new(move || {
        let rabbit = restarting.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                rabbit.ctl("stop_app");
                rabbit.ctl("start_app");
            })
            .await
            .expect("restart")
        })
    }));
    testkit::check(
        "reconnect_after_restart",
        testkit::reconnect_after_restart(&h).await,
    );
    drop(h);
    tokio::task::spawn_blocking(move || drop(rabbit))
        .await
        .expect("shut down");
}
