//! A deadline across hops of different transports: HTTP → NATS → Redis, each hop a service
//! whose handler calls the next. The time left travels with each call; when it runs out on the
//! way, the hop holding the call stops and the last hop's handler never runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::testkit::{free_port, require_server};
use switchyard::{context, rpc, CallError, Client, HandlerError, Service};

const TEST: &str = "deadlines";

/// The three hops, with how long the first two work before calling on, and what the last saw.
struct Chain {
    front: Client,
    last_runs: Arc<AtomicUsize>,
    // The time left the last hop's handler saw, in ms.
    last_saw_ms: Arc<AtomicUsize>,
    _served: Vec<switchyard::server::ServeHandle>,
}

async fn chain(ns: &str, work: Duration) -> Chain {
    let nats = switchyard::connect(&format!("nats://127.0.0.1:4222?ns={ns}")).expect("nats");
    let redis = switchyard::connect(&format!("redis://127.0.0.1:6379?ns={ns}")).expect("redis");
    let http_url = format!("http://127.0.0.1:{}", free_port());
    let http = switchyard::connect(&http_url).expect("http");

    let (last_runs, last_saw_ms) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (runs, saw) = (last_runs.clone(), last_saw_ms.clone());
    let last = Service::new("last").route(
        "/work",
        rpc(move || {
            let (runs, saw) = (runs.clone(), saw.clone());
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let left = context::current()
                    .and_then(|c| c.remaining())
                    .unwrap_or(Duration::MAX);
                saw.store(left.as_millis() as usize, Ordering::SeqCst);
                "done".to_string()
            }
        }),
    );
    let to_last = Client::new(redis.clone()).service("last");
    let middle = Service::new("middle").route(
        "/work",
        rpc(move || {
            let to_last = to_last.clone();
            async move {
                tokio::time::sleep(work).await;
                to_last
                    .call::<_, String>("/work", ())
                    .await
                    .map_err(HandlerError::from)
            }
        }),
    );
    let to_middle = Client::new(nats.clone()).service("middle");
    let front = Service::new("front").route(
        "/work",
        rpc(move || {
            let to_middle = to_middle.clone();
            async move {
                tokio::time::sleep(work).await;
                to_middle
                    .call::<_, String>("/work", ())
                    .await
                    .map_err(HandlerError::from)
            }
        }),
    );
    let served = vec![
        switchyard::serve(&redis, last)
            .await
            .expect("serve last on Redis"),
        switchyard::serve(&nats, middle)
            .await
            .expect("serve middle on NATS"),
        switchyard::serve(&http, front)
            .await
            .expect("serve front over HTTP"),
    ];
    Chain {
        front: Client::new(switchyard::connect(&http_url).expect("http client")),
        last_runs,
        last_saw_ms,
        _served: served,
    }
}

fn servers_up() -> bool {
    require_server(TEST, "NATS", "127.0.0.1:4222")
        && require_server(TEST, "Redis", "127.0.0.1:6379")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_left_travels_through_every_hop() {
    if !servers_up() {
        return;
    }
    let c = chain("deadline-travels", Duration::from_millis(300)).await;
    let reply: String = c
        .front
        .with_timeout(Duration::from_secs(3))
        .call("/work", ())
        .await
        .expect("the chain answers within 3 s");
    assert_eq!(reply, "done");
    let saw = c.last_saw_ms.load(Ordering::SeqCst);
    // 3 s, less the 600 ms the first two hops worked: what reached the last hop is time left,
    // not the 3 s the first caller gave (nor no deadline at all).
    assert!(saw <= 2_400, "the last hop saw {saw} ms left");
    assert!(
        saw >= 1_500,
        "the last hop saw {saw} ms left: the hops took far too long"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_spent_on_the_way_never_runs_the_last_handler() {
    if !servers_up() {
        return;
    }
    let c = chain("deadline-spent", Duration::from_millis(300)).await;
    // 500 ms for a chain whose first two hops work 300 ms each: the deadline passes while the
    // middle hop works, before it calls the last.
    let started = Instant::now();
    let err = c
        .front
        .with_timeout(Duration::from_millis(500))
        .call::<_, String>("/work", ())
        .await
        .expect_err("the deadline passes on the way");
    let took = started.elapsed();
    assert!(matches!(err, CallError::Timeout { .. }), "{err}");
    assert!(
        took < Duration::from_millis(900),
        "answered after {took:?}, not at its deadline"
    );
    // Give a call that escaped the deadline every chance to arrive.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        c.last_runs.load(Ordering::SeqCst),
        0,
        "the last hop ran its handler for a caller that had stopped waiting"
    );
}
