//! Helpers shared by the `yard` process tests.

use std::sync::Arc;

use switchyard::store::PgInbox;
use switchyard::{HandlerError, Service};

/// The `yard` binary under test.
#[allow(dead_code)] // not every test file that includes this module runs yard
pub(crate) const YARD: &str = env!("CARGO_BIN_EXE_yard");

// A child process killed (SIGKILL) and reaped when dropped, and a free loopback port: the
// testkit's, under the names these tests use.
#[allow(unused_imports)] // not every test file that includes this module uses both
pub(crate) use switchyard::testkit::{free_port, Killed as Running};

/// Sends SIGTERM (what service managers send) to `running`.
#[allow(dead_code)] // not every test file that includes this module stops yard so
pub(crate) fn sigterm(running: &Running) {
    let pid = running.0.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(sent.success(), "kill -TERM {pid}");
}

/// `running`'s exit status, waited for at most `within` (then the test fails).
#[allow(dead_code)] // not every test file that includes this module stops yard so
pub(crate) fn exit_status(
    running: &mut Running,
    within: std::time::Duration,
) -> std::process::ExitStatus {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = running.0.try_wait().expect("wait") {
            return status;
        }
        assert!(
            started.elapsed() < within,
            "yard still running after {within:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A consumer of `{"k": N}` events that counts each key's applications in `state`: each
/// event's effect and its inbox record commit in one transaction (the transactional inbox).
#[allow(dead_code)] // used by the crash tests only
pub(crate) fn inbox_state_consumer(
    service_name: &str,
    topic: &str,
    pool: sqlx::PgPool,
    inbox: Arc<PgInbox>,
    state: String,
) -> Service {
    Service::new(service_name).on_event(topic, move |v: serde_json::Value| {
        let (pool, inbox, state) = (pool.clone(), inbox.clone(), state.clone());
        async move {
            let id = switchyard::context::current()
                .and_then(|c| c.headers.get("ce-id").map(str::to_string))
                .ok_or_else(|| HandlerError::internal("no message id"))?;
            let k = v["k"].as_i64().ok_or_else(|| HandlerError::bad_request("no k"))?;
            let mut tx = pool.begin().await.map_err(HandlerError::from)?;
            if inbox.record_in(&mut tx, &id).await.map_err(HandlerError::from)? {
                sqlx::query(&format!("INSERT INTO {state} (k, applied) VALUES ($1, 1) ON CONFLICT (k) DO UPDATE SET applied = {state}.applied + 1"))
                    .bind(k)
                    .execute(&mut *tx)
                    .await
                    .map_err(HandlerError::from)?;
            }
            tx.commit().await.map_err(HandlerError::from)?;
            Ok::<(), HandlerError>(())
        }
    })
}
