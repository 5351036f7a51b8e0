//! `yard bookshelf` as the seed runs its services: the same flags, registered in the registry
//! while it runs (with its name, id and tags), removed on SIGTERM; and the demo on a log chosen
//! by one URL.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, Running, YARD};
use switchyard::testkit::require_server;

fn services(registry: &str) -> Vec<serde_json::Value> {
    let out = Command::new(YARD)
        .args(["--registry", registry, "services", "--json"])
        .output()
        .expect("yard services");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect()
}

#[test]
fn a_view_started_with_the_seeds_flags_registers_and_leaves_on_sigterm() {
    if !require_server(
        "a_view_started_with_the_seeds_flags",
        "Kafka",
        "127.0.0.1:9092",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = format!("file://{}", dir.path().display());
    let port = free_port().to_string();
    let topic = format!("bookshelf{}", &switchyard::message::new_id()[..8]);
    let mut running = Running(
        Command::new(YARD)
            .args(["--registry", &registry, "bookshelf", "lastreadbooks"])
            .args(["--topic", &topic, "--broker", "127.0.0.1:9092"])
            .args(["--addr", "127.0.0.1", "--port", &port])
            .args([
                "--name",
                "lastreadbooks",
                "--id",
                "lastread1",
                "--tags",
                "books",
                "last",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn yard"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let listed = loop {
        let listed = services(&registry);
        if !listed.is_empty() || Instant::now() > deadline {
            break listed;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["service"], "lastreadbooks");
    assert_eq!(listed[0]["id"], "lastread1");
    assert_eq!(listed[0]["metadata"]["tags"], "books,last");
    assert_eq!(
        listed[0]["addresses"][0],
        format!("http://127.0.0.1:{port}")
    );
    let answer: serde_json::Value = reqwest::blocking::get(format!("http://127.0.0.1:{port}/"))
        .expect("get")
        .json()
        .expect("json");
    assert_eq!(answer, serde_json::json!([]), "nothing read yet");
    common::sigterm(&running);
    let status = common::exit_status(&mut running, Duration::from_secs(15));
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(services(&registry).is_empty(), "deregistered on stop");
}

#[test]
fn the_demo_runs_on_jetstream_by_changing_one_url() {
    if !require_server("the_demo_runs_on_jetstream", "NATS", "127.0.0.1:4222") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = format!("file://{}", dir.path().display());
    let topic = format!("bookshelf{}", &switchyard::message::new_id()[..8]);
    let out = Command::new(YARD)
        .args(["--registry", &registry, "bookshelf", "demo"])
        .args(["--broker", "nats://127.0.0.1:4222", "--topic", &topic])
        .output()
        .expect("yard bookshelf demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("finished") && stdout.contains("204"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\"title\":\"Antifragile\""),
        "the last read: {stdout}"
    );
    assert!(stdout.contains("books on the shelf: 3"), "{stdout}");
    assert!(services(&registry).is_empty(), "all gone after the demo");
}
