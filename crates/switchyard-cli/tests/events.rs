//! `yard events` as a process: configuration from a `.env` file, and no acknowledged event
//! lost when the consumer is SIGKILLed under load.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::{free_port, Running, YARD};

/// Starts `yard events consume` in `dir` and waits for its first line.
fn consume(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut cmd = Command::new(YARD);
    cmd.current_dir(dir)
        .args(["events", "consume", "--host", "127.0.0.1"])
        .args(args)
        .stdout(Stdio::piped());
    for k in [
        "PORT",
        "TARGET_FILE_LOCATION",
        "WAIT_SECONDS",
        "ENDPOINT",
        "INPUT_FILE_LOCATION",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn consumer");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("banner");
    assert!(line.starts_with("event consumer on http://"), "{line}");
    Running(child)
}

#[test]
fn settings_come_from_a_dot_env_file_with_the_original_names() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join(".env"),
        format!("PORT = '{port}'\nTARGET_FILE_LOCATION = 'out/custom.json'\n"),
    )
    .unwrap();
    let _c = consume(dir.path(), &[], &[]);
    let r = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{port}/event"))
        .body(r#"{"event_type": "message", "event_payload": "from .env"}"#)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let stored = std::fs::read_to_string(dir.path().join("out/custom.json")).unwrap();
    assert_eq!(
        stored,
        "{\"event_payload\":\"from .env\",\"event_type\":\"message\"}\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_a_sigkill_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let port_s = port.to_string();
    let args = ["--port", port_s.as_str(), "--output", "events.json"];
    let mut consumer = consume(dir.path(), &args, &[]);
    let url = format!("http://127.0.0.1:{port}/event");
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let first_failure = Arc::new(Mutex::new(None::<String>));
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let http = reqwest::Client::new();
    let mut senders = Vec::new();
    for s in 0..32 {
        let (http, url, acked, failure, killed) = (
            http.clone(),
            url.clone(),
            acked.clone(),
            first_failure.clone(),
            killed.clone(),
        );
        senders.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("{s}-{i}");
                let body = format!(r#"{{"event_type": "load", "event_payload": "{id}"}}"#);
                let outcome = match http.post(&url).body(body).send().await {
                    Ok(r) if r.status().as_u16() == 200 => {
                        acked.lock().unwrap().insert(id);
                        continue;
                    }
                    Ok(r) => format!("HTTP {}", r.status()),
                    Err(e) => format!("{e}"),
                };
                if killed.load(std::sync::atomic::Ordering::SeqCst) {
                    break; // the consumer is gone
                }
                failure.lock().unwrap().get_or_insert(outcome);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    killed.store(true, std::sync::atomic::Ordering::SeqCst);
    consumer.0.kill().expect("SIGKILL"); // Child::kill is SIGKILL on Unix
    let _ = consumer.0.wait();
    for s in senders {
        let _ = s.await;
    }
    let acked = acked.lock().unwrap().clone();
    let failure = first_failure.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "too little load to mean anything: {} acknowledged; first failure before the kill: {failure:?}",
        acked.len()
    );

    // Restart on the same file: a torn tail (if the kill left one) is cut off.
    let _again = consume(dir.path(), &args, &[]);
    let text = std::fs::read_to_string(dir.path().join("events.json")).unwrap();
    let mut stored = HashSet::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("line does not parse ({e}): {line:?}"));
        assert!(
            stored.insert(v["event_payload"].as_str().unwrap().to_string()),
            "duplicate line {line}"
        );
    }
    let lost: Vec<_> = acked.difference(&stored).take(5).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost, e.g. {lost:?}",
        acked.difference(&stored).count()
    );
    let r = http
        .post(&url)
        .body(r#"{"event_type": "after", "event_payload": "restart"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[test]
fn events_demo_runs_both_services_like_make_services() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(YARD)
        .current_dir(dir.path())
        .args(["events", "demo", "--count", "8", "--interval", "0.01"])
        .output()
        .expect("run demo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("sent 8, accepted "), "{stdout}");
    let stored = std::fs::read_to_string(dir.path().join("output/events.json")).unwrap();
    let accepted: usize = stdout
        .split("accepted ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert_eq!(stored.lines().count(), accepted);
}

/// Lines of the consumer's output file, as their `event_payload`s (a torn last line left out).
fn stored_payloads(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["event_payload"].as_str().map(str::to_string))
        .collect()
}

/// SIGTERM while events stream in from a broker: the consumer finishes what it took and exits
/// cleanly, and every event the broker confirmed is stored once a consumer runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_broker_load_loses_nothing() {
    if !switchyard::testkit::require_server("sigterm_under_broker_load", "NATS", "127.0.0.1:4222") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let topic = format!("sigterm-{}", switchyard::message::new_id());
    // A short ack wait: what the first consumer had pulled but not taken comes back quickly.
    let from = "nats://127.0.0.1:4222?ack_wait_ms=2000";
    let port = free_port().to_string();
    let args = [
        "--port",
        &port,
        "--output",
        "events.json",
        "--from",
        from,
        "--topic",
        &topic,
    ];
    let consumer = consume(dir.path(), &args, &[]);

    let publisher = switchyard::connect("nats://127.0.0.1:4222").expect("nats");
    let confirmed = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (confirmed, stop, topic) = (confirmed.clone(), stop.clone(), topic.clone());
        tokio::spawn(async move {
            for i in 0.. {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let event =
                    serde_json::json!({"event_type": "load", "event_payload": i.to_string()});
                let envelope = switchyard::Envelope::new(&topic, event.to_string());
                if publisher.publish(envelope).await.is_ok() {
                    confirmed.lock().unwrap().push(i.to_string());
                }
            }
        })
    };
    let output = dir.path().join("events.json");
    let started = std::time::Instant::now();
    while stored_payloads(&output).len() < 200 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the consumer stores nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut consumer = consumer;
    common::sigterm(&consumer);
    let signalled = std::time::Instant::now();
    let status = loop {
        if let Some(status) = consumer.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(15),
            "still running after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");
    // Keep publishing a little while nobody consumes, then stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    load.await.expect("publisher");
    let confirmed = confirmed.lock().unwrap().clone();
    let before_restart = stored_payloads(&output).len();
    assert!(
        before_restart < confirmed.len(),
        "the consumer had stored everything before SIGTERM: nothing was under way"
    );

    let _again = consume(dir.path(), &args, &[]);
    let wanted: HashSet<String> = confirmed.iter().cloned().collect();
    let restarted = std::time::Instant::now();
    loop {
        let stored: HashSet<String> = stored_payloads(&output).into_iter().collect();
        let lost = wanted.difference(&stored).count();
        if lost == 0 {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(60),
            "{lost} of {} confirmed events never stored (e.g. {:?})",
            wanted.len(),
            wanted.difference(&stored).take(3).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "{} events confirmed, {before_restart} stored before SIGTERM, all stored after the restart",
        wanted.len()
    );
}
