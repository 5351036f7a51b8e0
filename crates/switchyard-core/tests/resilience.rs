//! The client's call policy on a real pipeline (in process; the client's logic is the same on
//! every transport): retries of idempotent routes, the retry budget under a dead destination,
//! and the circuit breaker.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_core::client::{BreakerState, Client};
use switchyard_core::error::{CallError, ErrorCode, HandlerError};
use switchyard_core::handler::rpc;
use switchyard_core::mem::MemTransport;
use switchyard_core::policy::CallPolicy;
use switchyard_core::server;
use switchyard_core::service::Service;

/// A service whose `/work` answers `Unavailable` while `down` is set, counting every attempt.
fn flaky(down: Arc<AtomicBool>, attempts: Arc<AtomicUsize>) -> Service {
    Service::new("downstream").route(
        "/work",
        rpc(move || {
            let (down, attempts) = (down.clone(), attempts.clone());
            async move {
                attempts.fetch_add(1, Ordering::SeqCst);
                if down.load(Ordering::SeqCst) {
                    Err(HandlerError::unavailable("down"))
                } else {
                    Ok::<_, HandlerError>(7)
                }
            }
        }),
    )
}

#[tokio::test]
async fn only_idempotent_routes_are_retried() {
    let bus = Arc::new(MemTransport::new("resilience-idempotent"));
    let attempts = Arc::new(AtomicUsize::new(0));
    let fails_left = Arc::new(AtomicUsize::new(2));
    let (count, left) = (attempts.clone(), fails_left.clone());
    let service = Service::new("downstream").route(
        "/work",
        rpc(move || {
            let (count, left) = (count.clone(), left.clone());
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                if left.load(Ordering::SeqCst) > 0 {
                    left.fetch_sub(1, Ordering::SeqCst);
                    Err(HandlerError::unavailable("not yet"))
                } else {
                    Ok::<_, HandlerError>(7)
                }
            }
        }),
    );
    let _served = server::serve(bus.clone(), service).await.expect("serve");

    let plain = Client::new(bus.clone()).service("downstream");
    let err = plain
        .call::<_, i32>("/work", ())
        .await
        .expect_err("not retried");
    assert_eq!(err.remote_code(), Some(ErrorCode::Unavailable));
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        1,
        "a route not declared idempotent ran twice"
    );

    let retrying = Client::new(bus)
        .service("downstream")
        .policy(CallPolicy::default().idempotent(["/work"]));
    let got: i32 = retrying
        .call("/work", ())
        .await
        .expect("retried to success");
    assert_eq!(got, 7);
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        3,
        "one failure left, then the success"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_destination_gets_no_more_than_the_retry_budget() {
    let bus = Arc::new(MemTransport::new("resilience-budget"));
    let attempts = Arc::new(AtomicUsize::new(0));
    let down = Arc::new(AtomicBool::new(true));
    let _served = server::serve(bus.clone(), flaky(down, attempts.clone()))
        .await
        .expect("serve");
    // Retries wanted on every call (3 attempts each), the breaker out of the way: what holds
    // the load is the budget alone.
    let mut policy = CallPolicy::default()
        .idempotent(["/work"])
        .max_attempts(3)
        .breaker_consecutive(0);
    policy.breaker_ratio = 2.0;
    policy.backoff_ms = 1;
    policy.max_backoff_ms = 2;
    let client = Client::new(bus).service("downstream").policy(policy);
    let offered = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let run_for = Duration::from_secs(2);
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let (client, offered) = (client.clone(), offered.clone());
            tokio::spawn(async move {
                while started.elapsed() < run_for {
                    offered.fetch_add(1, Ordering::SeqCst);
                    let err = client.call::<_, i32>("/work", ()).await.expect_err("down");
                    assert_eq!(err.remote_code(), Some(ErrorCode::Unavailable), "{err}");
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.expect("caller");
    }
    let seconds = started.elapsed().as_secs_f64().ceil();
    let (offered, attempts) = (
        offered.load(Ordering::SeqCst) as f64,
        attempts.load(Ordering::SeqCst) as f64,
    );
    let load = attempts / offered;
    println!("offered {offered} calls, the destination got {attempts} attempts: {load:.3}x");
    assert!(offered > 200.0, "too few calls to judge: {offered}");
    assert!(
        attempts <= offered * 1.2 + 10.0 * seconds,
        "{attempts} attempts for {offered} calls: {load:.3}x, over 20 % + 10/s"
    );
    assert!(
        load > 1.1,
        "{load:.3}x: the budget's retries were not used, so this test shows nothing"
    );
}

#[tokio::test]
async fn the_breaker_opens_on_a_dead_destination_and_a_probe_closes_it() {
    let bus = Arc::new(MemTransport::new("resilience-breaker"));
    let attempts = Arc::new(AtomicUsize::new(0));
    let down = Arc::new(AtomicBool::new(true));
    let _served = server::serve(bus.clone(), flaky(down.clone(), attempts.clone()))
        .await
        .expect("serve");
    let client = Client::new(bus)
        .service("downstream")
        .policy(CallPolicy::default().breaker_open_for(Duration::from_millis(300)));
    for _ in 0..5 {
        let err = client.call::<_, i32>("/work", ()).await.expect_err("down");
        assert_eq!(err.remote_code(), Some(ErrorCode::Unavailable), "{err}");
    }
    assert_eq!(client.breaker_state(), BreakerState::Open);
    let refused = Instant::now();
    let err = client.call::<_, i32>("/work", ()).await.expect_err("open");
    assert!(matches!(err, CallError::CircuitOpen { .. }), "{err}");
    assert!(
        refused.elapsed() < Duration::from_millis(50),
        "refused at once"
    );
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        5,
        "an open breaker let a call through"
    );

    down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(client.breaker_state(), BreakerState::HalfOpen);
    let got: i32 = client.call("/work", ()).await.expect("the probe");
    assert_eq!(got, 7);
    assert_eq!(client.breaker_state(), BreakerState::Closed);
    // The caller's own mistakes never open it.
    for _ in 0..10 {
        let err = client
            .call::<_, i32>("/nowhere", ())
            .await
            .expect_err("404");
        assert_eq!(err.remote_code(), Some(ErrorCode::NotFound));
    }
    assert_eq!(client.breaker_state(), BreakerState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bulkhead_and_the_rate_limit_refuse_calls_beyond_them() {
    let bus = Arc::new(MemTransport::new("resilience-bulkhead"));
    let service = Service::new("downstream")
        .route(
            "/slow",
            rpc(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                1
            }),
        )
        .route("/fast", rpc(|| async { 2 }));
    let _served = server::serve(bus.clone(), service).await.expect("serve");

    let bounded = Client::new(bus.clone())
        .service("downstream")
        .policy(CallPolicy::default().max_in_flight(2));
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let c = bounded.clone();
            tokio::spawn(async move { c.call::<_, i32>("/slow", ()).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = Instant::now();
    let err = bounded.call::<_, i32>("/fast", ()).await.expect_err("full");
    assert!(matches!(err, CallError::Limited { .. }), "{err}");
    assert!(
        refused.elapsed() < Duration::from_millis(50),
        "refused at once"
    );
    for call in slow {
        assert_eq!(call.await.expect("task").expect("slow call"), 1);
    }
    let got: i32 = bounded.call("/fast", ()).await.expect("room again");
    assert_eq!(got, 2, "a finished call gives its place back");

    let rated = Client::new(bus)
        .service("downstream")
        .policy(CallPolicy::default().max_per_sec(5));
    let started = Instant::now();
    let mut ok = 0;
    let mut limited = 0;
    for _ in 0..20 {
        match rated.call::<_, i32>("/fast", ()).await {
            Ok(_) => ok += 1,
            Err(CallError::Limited { .. }) => limited += 1,
            Err(e) => panic!("{e}"),
        }
    }
    let seconds = started.elapsed().as_secs() + 1;
    assert!(limited > 0, "20 calls in {seconds} s and none refused");
    assert!(
        ok <= 5 * (seconds + 1),
        "{ok} calls let through in {seconds} s at 5 a second"
    );
}

#[tokio::test]
async fn a_route_can_have_its_own_timeout_and_attempts() {
    use switchyard_core::policy::RoutePolicy;
    let bus = Arc::new(MemTransport::new("resilience-per-route"));
    let attempts = Arc::new(AtomicUsize::new(0));
    let count = attempts.clone();
    let service = Service::new("downstream")
        .route(
            "/slow",
            rpc(|| async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                1
            }),
        )
        .route(
            "/flaky",
            rpc(move || {
                let count = count.clone();
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    Err::<i32, _>(HandlerError::unavailable("down"))
                }
            }),
        );
    let _served = server::serve(bus.clone(), service).await.expect("serve");
    // No breaker here: the timeouts and failures below would open it.
    let policy = CallPolicy::default()
        .breaker_consecutive(0)
        .route(
            "/slow",
            RoutePolicy::default().timeout(Duration::from_millis(100)),
        )
        .route(
            "/flaky",
            RoutePolicy::default().idempotent(true).max_attempts(5),
        );
    let client = Client::new(bus.clone())
        .service("downstream")
        .with_timeout(Duration::from_secs(10))
        .policy(policy);

    let started = Instant::now();
    let err = client
        .call::<_, i32>("/slow", ())
        .await
        .expect_err("too slow");
    assert!(matches!(err, CallError::Timeout { .. }), "{err}");
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(1_500),
        "the route's 100 ms, not the client's 10 s: waited {waited:?}"
    );
    // A call given its own timeout keeps it.
    let err = client
        .request("/slow")
        .timeout(Duration::from_millis(300))
        .send::<i32>()
        .await
        .expect_err("still too slow");
    assert!(
        matches!(err, CallError::Timeout { after, .. } if after >= Duration::from_millis(250)),
        "{err}"
    );

    let err = client.call::<_, i32>("/flaky", ()).await.expect_err("down");
    assert!(matches!(err, CallError::Remote { .. }), "{err}");
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        5,
        "the route's five attempts, not the policy's three"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_sheds_load_takes_no_more_events_than_its_limit() {
    use switchyard_core::middleware::limiter::AdaptiveLimit;
    use switchyard_core::policy::ConsumerPolicy;
    let bus = Arc::new(MemTransport::new("resilience-limited-consumer"));
    let (now, most, done) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (n, m, d) = (now.clone(), most.clone(), done.clone());
    let service = Service::new("limited")
        .consumer_policy(ConsumerPolicy {
            concurrency: 16,
            ..ConsumerPolicy::default()
        })
        // A limit held at 3 (no calls come to move it).
        .adaptive_limit(AdaptiveLimit::default().initial(3).bounds(3, 3))
        .on_event("work", move |_: u32| {
            let (n, m, d) = (n.clone(), m.clone(), d.clone());
            async move {
                let at_once = n.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(at_once, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                n.fetch_sub(1, Ordering::SeqCst);
                d.fetch_add(1, Ordering::SeqCst);
            }
        });
    let _served = server::serve(bus.clone(), service).await.expect("serve");
    let client = Client::new(bus.clone());
    for i in 0..24u32 {
        client.publish("work", &i).await.expect("publish");
    }
    let until = Instant::now() + Duration::from_secs(10);
    while done.load(Ordering::SeqCst) < 24 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(done.load(Ordering::SeqCst), 24, "every event handled");
    let most = most.load(Ordering::SeqCst);
    assert!(
        (2..=3).contains(&most),
        "at most the limit's 3 at once (of a concurrency of 16), saw {most}"
    );
}
