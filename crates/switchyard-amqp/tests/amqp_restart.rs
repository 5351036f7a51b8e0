//! Reconnect after a real restart of RabbitMQ: every publish the broker confirmed is
//! delivered. Alone in this file because it stops the broker the other AMQP tests use (cargo
//! runs test files one after another).
//!
//! `rabbitmqctl stop_app` / `start_app` stop and start the broker itself inside its Erlang
//! node: every connection is dropped and the durable queues are recovered from disk, as after
//! a process restart, in two seconds instead of ten.

use std::process::Command;
use std::sync::Arc;

use switchyard_amqp::AmqpTransport;
use switchyard_core::testkit::{self, Harness};
use switchyard_core::transport::Transport;

fn rabbitmqctl(what: &str) {
    let status = Command::new("rabbitmqctl")
        .arg(what)
        .output()
        .unwrap_or_else(|e| panic!("rabbitmqctl {what}: {e}"));
    assert!(
        status.status.success(),
        "rabbitmqctl {what} failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_after_restart() {
    let mut h = Harness::new(
        || {
            format!(
                "amqp://guest:guest@127.0.0.1:5672/%2f?ns=restart{}&queue_expires_ms=60000",
                &switchyard_core::message::new_id()[..8]
            )
        },
        |url| Ok(Arc::new(AmqpTransport::from_url(url)?) as Arc<dyn Transport>),
    )
    .require_tcp("RabbitMQ", "127.0.0.1:5672");
    if Command::new("rabbitmqctl").arg("help").output().is_err() {
        h.unavailable = Some("cannot restart RabbitMQ here (rabbitmqctl is needed)".into());
    }
    if !h.available("reconnect_after_restart") {
        return;
    }
    h.restart = Some(Arc::new(|| {
        Box::pin(async {
            tokio::task::spawn_blocking(|| {
                rabbitmqctl("stop_app");
                rabbitmqctl("start_app");
            })
            .await
            .expect("restart")
        })
    }));
    testkit::check(
        "reconnect_after_restart",
        testkit::reconnect_after_restart(&h).await,
    );
}
