//! A call made in process through user layers (on the service, on the client, or both) is
//! bounded by its caller's timeout, which then stands for the serving side's deadline: the
//! caller gets its timeout on time, the handler is stopped (its future dropped) with it, and
//! the handler still sees the deadline it must keep for the calls it makes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_core::client::Client;
use switchyard_core::context;
use switchyard_core::error::CallError;
use switchyard_core::handler::rpc;
use switchyard_core::mem::MemTransport;
use switchyard_core::server;
use switchyard_core::service::Service;
use switchyard_core::testkit::CountLayer;

/// Counts the handlers stopped before they finished.
struct Stopped(Arc<AtomicUsize>);

impl Drop for Stopped {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_layered_call_in_process_is_bounded_by_its_callers_timeout() {
    const TIMEOUT: Duration = Duration::from_millis(150);
    for (n, (service_layer, client_layer)) in
        [(false, false), (true, false), (false, true), (true, true)]
            .into_iter()
            .enumerate()
    {
        let bus = Arc::new(MemTransport::new(&format!("layered-timeout-{n}")));
        let stopped = Arc::new(AtomicUsize::new(0));
        let deadlines = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (stopped.clone(), deadlines.clone());
        let mut service = Service::new("slow").route(
            "/sleep",
            rpc(move || {
                let (count, seen) = (count.clone(), seen.clone());
                async move {
                    let left = context::current().and_then(|c| c.remaining());
                    seen.lock().expect("lock").push(left);
                    let guard = Stopped(count);
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    std::mem::forget(guard);
                    1
                }
            }),
        );
        let (served_calls, made_calls) = (CountLayer::default(), CountLayer::default());
        if service_layer {
            service = service.layer(served_calls.clone());
        }
        let _served = server::serve(bus.clone(), service).await.expect("serve");
        let mut client = Client::new(bus.clone())
            .service("slow")
            .with_timeout(TIMEOUT);
        if client_layer {
            client = client.layer(made_calls.clone());
        }
        let case = format!("service layer {service_layer}, client layer {client_layer}");

        let started = Instant::now();
        let outcome = client.call::<_, i32>("/sleep", ()).await;
        let took = started.elapsed();
        assert!(
            matches!(outcome, Err(CallError::Timeout { .. })),
            "{case}: {outcome:?}"
        );
        assert!(
            took >= TIMEOUT && took < Duration::from_secs(2),
            "{case}: timed out after {took:?}"
        );
        assert_eq!(
            stopped.load(Ordering::SeqCst),
            1,
            "{case}: the handler was not stopped with its caller"
        );
        assert_eq!(
            (served_calls.seen(), made_calls.seen()),
            (usize::from(service_layer), usize::from(client_layer)),
            "{case}: the layers saw the call"
        );
        let left = deadlines.lock().expect("lock").pop().flatten();
        assert!(
            left.is_some_and(|left| left <= TIMEOUT && left > TIMEOUT / 2),
            "{case}: the handler saw {left:?} left of its deadline"
        );
    }
}
