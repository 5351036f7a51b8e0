//! `yard dlq` on Redis as a user runs it: a service dead-letters events of two causes with
//! nobody listening; `list` shows the causes, `show` one JSON object per letter, `discard`
//! settles one cause for good, `replay` sends the other back to the fixed service, which
//! handles each once; nothing is left.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard::error::HandlerError;
use switchyard::policy::ConsumerPolicy;
use switchyard::{Envelope, Service};

mod common;
use common::YARD;

fn yard(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(YARD).args(args).output().expect("run yard");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yard_dlq_lists_shows_discards_and_replays() {
    if !switchyard::testkit::require_server("yard_dlq", "Redis", "127.0.0.1:6379") {
        return;
    }
    let run = &switchyard::message::new_id()[..8];
    let url = format!("redis://127.0.0.1:6379?ns=dlq{run}");
    let topic = format!("orders.{run}");
    let down = Arc::new(AtomicBool::new(true));
    let handled = Arc::new(Mutex::new(Vec::<u64>::new()));
    let (d, h) = (down.clone(), handled.clone());
    let service = Service::new("orders")
        .consumer_policy(ConsumerPolicy {
            max_attempts: 1,
            ..ConsumerPolicy::default()
        })
        .on_event(&topic, move |n: u64| {
            let (d, h) = (d.clone(), h.clone());
            async move {
                if n.is_multiple_of(3) {
                    return Err(HandlerError::bad_request("multiples of three are refused"));
                }
                if d.load(Ordering::SeqCst) {
                    return Err(HandlerError::internal("the database is down"));
                }
                h.lock().unwrap_or_else(|p| p.into_inner()).push(n);
                Ok(())
            }
        });
    let transport = switchyard::connect(&url).expect("url");
    let server = switchyard::serve(&transport, service).await.expect("serve");
    for n in 0..30u64 {
        transport
            .publish(Envelope::new(&topic, n.to_string()))
            .await
            .expect("publish");
    }
    // 10 refused (bad request), 20 failed (internal): all dead-lettered.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, err) = yard(&["dlq", "list", &url, &topic]);
        assert!(ok, "list failed: {err}");
        let counts: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        if counts == ["20", "10"] {
            assert!(out.contains("the database is down"), "{out}");
            assert!(out.contains("bad_request"), "{out}");
            break;
        }
        assert!(Instant::now() < deadline, "list: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, out, err) = yard(&["dlq", "show", &url, &topic, "--filter", "code=bad_request"]);
    assert!(ok, "show failed: {err}");
    let shown: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    assert_eq!(shown.len(), 10, "{out}");
    for letter in &shown {
        assert_eq!(letter["code"], "bad_request");
        assert_eq!(letter["original_topic"], topic.as_str());
        assert_eq!(letter["attempts"], 1);
        assert_eq!(letter["payload"].as_u64().map(|n| n % 3), Some(0));
    }
    let (ok, _, err) = yard(&[
        "dlq", "discard", &url, &topic, "--filter", "bogus=1", "--yes",
    ]);
    assert!(!ok && err.contains("unknown filter"), "{err}");
    let (ok, out, err) = yard(&[
        "dlq",
        "discard",
        &url,
        &topic,
        "--filter",
        "code=bad_request",
        "--yes",
    ]);
    assert!(ok, "discard failed: {err}");
    assert_eq!(out, "10 discarded");
    down.store(false, Ordering::SeqCst);
    let (ok, out, err) = yard(&["dlq", "replay", &url, &topic, "--rate", "200/s"]);
    assert!(ok, "replay failed: {err}");
    let done: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(done["replayed"], 20, "{out}");
    let want: Vec<u64> = (0..30u64).filter(|n| !n.is_multiple_of(3)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut got = handled.lock().unwrap_or_else(|p| p.into_inner()).clone();
        got.sort_unstable();
        if got == want {
            break;
        }
        assert!(Instant::now() < deadline, "handled {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, out, err) = yard(&["dlq", "list", &url, &topic]);
    assert!(ok, "list failed: {err}");
    assert!(out.is_empty(), "left: {out}");
    server.shutdown().await;
}
