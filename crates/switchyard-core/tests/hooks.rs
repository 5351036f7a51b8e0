//! Start and stop hooks: run in the order they were added, the start ones before the first
//! call is taken, the stop ones after the last call in flight has been answered; a start hook
//! that fails leaves the service unserved, saying which hook failed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_core::client::Client;
use switchyard_core::error::TransportError;
use switchyard_core::handler::rpc;
use switchyard_core::mem::MemTransport;
use switchyard_core::server;
use switchyard_core::service::Service;

type Log = Arc<Mutex<Vec<String>>>;

fn note(log: &Log, what: &str) -> impl Fn() -> std::future::Ready<Result<(), String>> {
    let (log, what) = (log.clone(), what.to_string());
    move || {
        log.lock().expect("log").push(what.clone());
        std::future::ready(Ok(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_run_in_order_around_the_calls() {
    let log: Log = Arc::default();
    let in_call = log.clone();
    let service = Service::new("hooked")
        .route(
            "/slow",
            rpc(move || {
                let log = in_call.clone();
                async move {
                    log.lock().expect("log").push("call began".into());
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    log.lock().expect("log").push("call ended".into());
                    1u32
                }
            }),
        )
        .on_start("first", note(&log, "start first"))
        .on_start("second", note(&log, "start second"))
        .on_stop("first", note(&log, "stop first"))
        .on_stop("second", note(&log, "stop second"));
    let bus = Arc::new(MemTransport::new("hooks-order"));
    let served = server::serve(bus.clone(), service).await.expect("serve");
    assert_eq!(*log.lock().expect("log"), ["start first", "start second"]);

    let client = Client::new(bus.clone()).service("hooked");
    let call = tokio::spawn(async move { client.call::<_, u32>("/slow", ()).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    served.shutdown().await;
    assert_eq!(
        call.await.expect("task").expect("answered while stopping"),
        1
    );
    assert_eq!(
        *log.lock().expect("log"),
        [
            "start first",
            "start second",
            "call began",
            "call ended",
            "stop first",
            "stop second"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_hook_that_fails_leaves_the_service_unserved() {
    let log: Log = Arc::default();
    let service = Service::new("unstarted")
        .route("/one", rpc(|| async { 1u32 }))
        .on_start("first", note(&log, "start first"))
        .on_start("database", || async {
            Err::<(), _>("no connection to the database")
        })
        .on_start("third", note(&log, "start third"));
    let bus = Arc::new(MemTransport::new("hooks-failing"));
    let refused = server::serve(bus.clone(), service).await;
    match refused {
        Err(TransportError::StartFailed {
            service,
            hook,
            reason,
        }) => {
            assert_eq!((service.as_str(), hook.as_str()), ("unstarted", "database"));
            assert!(reason.contains("no connection"), "{reason}");
        }
        other => panic!("expected StartFailed, got {:?}", other.map(|_| ())),
    }
    assert_eq!(
        *log.lock().expect("log"),
        ["start first"],
        "the hooks after it did not run"
    );
    let unanswered = Client::new(bus)
        .service("unstarted")
        .with_timeout(Duration::from_millis(300))
        .call::<_, u32>("/one", ())
        .await;
    assert!(unanswered.is_err(), "not served: {unanswered:?}");
}
