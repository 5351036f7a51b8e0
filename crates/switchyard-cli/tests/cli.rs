//! `yard` as a user runs it: the demo, `serve example` answered by a plain Python `requests`
//! client, and `call`, `publish`, `subscribe`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_port, Running, YARD};

/// Starts `yard serve example` and waits until it says where it listens.
/// Starts `yard ARGS` and waits for its first line, which must start with `says`.
fn start_yard(args: &[&str], says: &str) -> Running {
    let mut child = Command::new(YARD)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn yard");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("first line");
    assert!(line.starts_with(says), "{line}");
    Running(child)
}

fn serve_example() -> (Running, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let running = start_yard(
        &["serve", "example", "--listen", &listen],
        "serving example on http://",
    );
    (running, format!("http://{listen}"))
}

fn yard(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(YARD).args(args).output().expect("run yard");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

#[test]
fn demo_runs_and_checks_every_result() {
    let (ok, out, err) = yard(&["demo", "--calls", "50"]);
    assert!(ok, "demo failed: {err}\n{out}");
    assert!(out.contains("Welcome Mr. Developer"), "{out}");
    assert!(out.contains("demo finished: every result matched"), "{out}");
}

#[test]
fn yard_call_prints_decoded_replies_and_fails_clearly() {
    let (_server, url) = serve_example();
    let (ok, out, _) = yard(&["call", &url, "/helloworld", "Mr. Developer"]);
    assert!(ok);
    assert_eq!(out, r#""Welcome Mr. Developer""#);
    let (ok, out, _) = yard(&["call", &url, "/int3", "3.1427", "--kw", "key=1000000000"]);
    assert!(ok);
    assert_eq!(out, "[1000000003.1427,1000000000000000000,9.87656329]");
    let (ok, out, _) = yard(&[
        "call",
        &url,
        "/class",
        "{\"a\":1}",
        "--kw",
        "key=2",
        "--token",
        "123456",
    ]);
    assert!(ok);
    assert_eq!(
        out,
        r#"{"Purpose":"For test only","empty":null,"name":"test","value":{"a":1}}"#
    );
    let (ok, _, err) = yard(&["call", &url, "/class", "1", "--kw", "key=2"]);
    assert!(!ok);
    assert!(
        err.contains("unauthorized: missing token for /class"),
        "{err}"
    );
    let (ok, _, err) = yard(&["call", &url, "/int", "x", "--kw", "key=1"]);
    assert!(!ok);
    assert!(err.contains("bad_request") && err.contains("'a'"), "{err}");
    // No wrapped integers, no `null` for a number JSON cannot carry: a 400 that says why.
    for (route, a, key, why) in [
        (
            "/int",
            "9223372036854775807",
            "1",
            "a + key overflows a 64-bit integer",
        ),
        (
            "/int3",
            "1",
            "9223372036854775807",
            "key * key overflows a 64-bit integer",
        ),
        ("/float", "1e308", "1e308", "a + key is not a finite number"),
    ] {
        let kw = format!("key={key}");
        let (ok, out, err) = yard(&["call", &url, route, a, "--kw", &kw]);
        assert!(!ok, "{route} {a} {key} answered {out}");
        assert!(err.contains("bad_request") && err.contains(why), "{err}");
    }
    let (ok, _, err) = yard(&["call", "nats+carrier://x", "/r"]);
    assert!(!ok);
    assert!(err.contains("no transport for scheme"), "{err}");
}

#[test]
fn publish_reaches_subscribe_over_http() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let sub = Command::new(YARD)
        .args(["subscribe", &url, "greetings", "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn subscribe");
    // Wait until the subscriber listens.
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "subscriber never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, _, err) = yard(&["publish", &url, "greetings", r#"{"hello":"world"}"#]);
    assert!(ok, "publish failed: {err}");
    let out = sub
        .wait_with_output()
        .expect("subscriber exits after one event");
    let line = String::from_utf8_lossy(&out.stdout);
    let event: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON line");
    assert_eq!(event["topic"], "greetings");
    assert_eq!(event["data"], serde_json::json!({"hello": "world"}));
    assert_eq!(event["headers"]["ce-source"], "/switchyard");
}

#[test]
fn a_plain_python_requests_client_gets_the_documented_replies() {
    let python_ok = Command::new("python3")
        .args(["-c", "import requests"])
        .status()
        .is_ok_and(|s| s.success());
    if !python_ok {
        assert!(
            std::env::var_os("SWITCHYARD_REQUIRE_ALL").is_none(),
            "python3 with `requests` is required (SWITCHYARD_REQUIRE_ALL is set)"
        );
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED python interop test: python3 with `requests` not found (pip install requests)"
        );
        return;
    }
    let (_server, url) = serve_example();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/seed000_client.py"
    );
    let out = Command::new("python3")
        .args([script, &url])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all seed 000 results match"));
}

#[test]
fn an_unreachable_broker_is_named_without_its_password() {
    // Nothing listens on `port`: every broker scheme fails at start-up, naming the URL with
    // the credentials removed, and promptly (no retries asked for).
    let port = free_port();
    for url in [
        format!("amqp://app:s3cret@127.0.0.1:{port}/%2f"),
        format!("redis://app:s3cret@127.0.0.1:{port}"),
        format!("nats://app:s3cret@127.0.0.1:{port}"),
        format!("mqtt://app:s3cret@127.0.0.1:{port}"),
        format!("kafka://127.0.0.1:{port}"),
    ] {
        let started = Instant::now();
        let (ok, _, err) = yard(&["publish", &url, "t", "{}"]);
        assert!(!ok, "{url}: publish to nothing succeeded");
        assert!(
            err.contains("cannot reach") && err.contains(&format!("127.0.0.1:{port}")),
            "{url}: unclear error: {err}"
        );
        assert!(!err.contains("s3cret"), "{url}: password leaked: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{url}: took {:?} to fail",
            started.elapsed()
        );
    }
}

#[test]
fn a_broker_that_starts_late_is_waited_for_when_retries_are_asked() {
    let test = "a_broker_that_starts_late_is_waited_for_when_retries_are_asked";
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("SWITCHYARD_REQUIRE_ALL").is_none(),
            "{test}: redis-server is required (SWITCHYARD_REQUIRE_ALL is set)"
        );
        eprintln!("SKIPPED broker test {test}: no redis-server binary");
        return;
    }
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let publisher = Command::new(YARD)
        .args([
            "--connect-retries",
            "10",
            "publish",
            &url,
            "late",
            "{\"n\":1}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start yard");
    // The broker comes up after the first tries have failed.
    std::thread::sleep(Duration::from_secs(3));
    let _redis = Running(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server"),
    );
    let out = publisher.wait_with_output().expect("yard finished");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "publish gave up: {err}");
    assert!(
        err.contains("retrying"),
        "the failed tries were not logged: {err}"
    );
    assert!(err.contains("published"), "{err}");
    // And without retries the same situation fails at once.
    let (ok, _, err) = yard(&[
        "publish",
        &format!("redis://127.0.0.1:{}", free_port()),
        "late",
        "{}",
    ]);
    assert!(!ok && err.contains("cannot reach"), "{err}");
}

/// Reads `child`'s stderr until a line containing `what`, for at most 60 s.
fn wait_for_stderr(child: &mut std::process::Child, what: &str, who: &str) {
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let what = what.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(&what) {
                let _ = tx.send(());
                return;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{who}: never said it was ready"));
}

/// `yard serve`, `call`, `subscribe` and `publish` on every broker, the same commands with only
/// the URL changed (Kafka has no request/reply: its call fails and says so).
/// Every broker of this machine: its name, address and a URL with namespace `ns` (Kafka has
/// no namespace).
fn brokers(ns: &str) -> [(&'static str, &'static str, String); 5] {
    [
        (
            "RabbitMQ",
            "127.0.0.1:5672",
            format!("amqp://127.0.0.1:5672/%2f?ns={ns}"),
        ),
        (
            "NATS",
            "127.0.0.1:4222",
            format!("nats://127.0.0.1:4222?ns={ns}"),
        ),
        (
            "Redis",
            "127.0.0.1:6379",
            format!("redis://127.0.0.1:6379?ns={ns}"),
        ),
        (
            "Mosquitto",
            "127.0.0.1:1883",
            format!("mqtt://127.0.0.1:1883?ns={ns}"),
        ),
        (
            "Kafka (Tansu)",
            "127.0.0.1:9092",
            "kafka://127.0.0.1:9092".to_string(),
        ),
    ]
}

#[test]
fn yard_commands_on_every_broker() {
    const TEST: &str = "yard_commands_on_every_broker";
    let run = &switchyard::message::new_id()[..8];
    for (name, addr, url) in brokers(&format!("yard{run}")) {
        if !switchyard::testkit::require_server(TEST, name, addr) {
            continue;
        }
        if url.starts_with("kafka") {
            let (ok, _, err) = yard(&[
                "call",
                &url,
                "/helloworld",
                "Mr. Developer",
                "--service",
                "example",
            ]);
            assert!(!ok, "{name}: a call succeeded");
            assert!(err.contains("request/reply"), "{name}: {err}");
        } else {
            let mut server = Command::new(YARD)
                .args(["serve", "example", "--url", &url])
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn yard serve");
            let mut line = String::new();
            BufReader::new(server.stdout.take().expect("stdout"))
                .read_line(&mut line)
                .expect("first line");
            assert!(line.starts_with("serving example on"), "{name}: {line}");
            let _server = Running(server);
            let (ok, out, err) = yard(&[
                "call",
                &url,
                "/helloworld",
                "Mr. Developer",
                "--service",
                "example",
            ]);
            assert!(ok, "{name}: call failed: {err}");
            assert_eq!(out, r#""Welcome Mr. Developer""#, "{name}");
        }
        let topic = format!("yard.{run}.{}", &url[..4]);
        let mut sub = Command::new(YARD)
            .args(["subscribe", &url, &topic, "--group", "yard", "--count", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn yard subscribe");
        wait_for_stderr(&mut sub, "subscribed to", name);
        let (ok, _, err) = yard(&["publish", &url, &topic, r#"{"n":1}"#]);
        assert!(ok, "{name}: publish failed: {err}");
        let started = Instant::now();
        while sub.try_wait().expect("subscriber").is_none() {
            if started.elapsed() > Duration::from_secs(60) {
                let _ = sub.kill();
                panic!("{name}: the subscriber got nothing in 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = sub.wait_with_output().expect("subscriber output");
        assert!(out.status.success(), "{name}: subscriber failed");
        let line = String::from_utf8_lossy(&out.stdout);
        let event: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON line");
        assert_eq!(event["topic"], topic.as_str(), "{name}");
        assert_eq!(event["data"], serde_json::json!({"n": 1}), "{name}");
    }
}

/// Two echo services with different names and a subscriber on one broker and namespace: each
/// call reaches the service it names, never the other one (before services were addressed by
/// name, a call went to whichever instance of the namespace took it and got a 404).
#[test]
fn two_services_on_one_broker_each_answer_their_own_calls() {
    const TEST: &str = "two_services_on_one_broker_each_answer_their_own_calls";
    let run = &switchyard::message::new_id()[..8];
    for (name, addr, url) in brokers(&format!("two{run}")) {
        if url.starts_with("kafka") {
            continue; // no request/reply
        }
        if !switchyard::testkit::require_server(TEST, name, addr) {
            continue;
        }
        let mut running = Vec::new();
        for service in ["alpha", "beta"] {
            let mut server = Command::new(YARD)
                .args(["serve", "echo", "--name", service, "--url", &url])
                .args(["--version", "1.0.0"])
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn yard serve echo");
            let mut line = String::new();
            BufReader::new(server.stdout.take().expect("stdout"))
                .read_line(&mut line)
                .expect("first line");
            assert!(
                line.starts_with(&format!("serving {service} on")),
                "{name}: {line}"
            );
            running.push(Running(server));
        }
        let mut sub = Command::new(YARD)
            .args(["subscribe", &url, &format!("two.{run}"), "--group", "g"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn yard subscribe");
        wait_for_stderr(&mut sub, "subscribed to", name);
        running.push(Running(sub));
        for _ in 0..4 {
            for service in ["alpha", "beta"] {
                let (ok, out, err) = yard(&["call", &url, "/whoami", "--service", service]);
                assert!(ok, "{name}: call to {service} failed: {err}");
                let who: serde_json::Value = serde_json::from_str(&out).expect("JSON");
                assert_eq!(who["service"], service, "{name}: {out}");
                assert_eq!(who["version"], "1.0.0", "{name}: {out}");
            }
        }
        let (ok, out, err) = yard(&["call", &url, "/echo", "1", "two", "--service", "beta"]);
        assert!(ok, "{name}: echo failed: {err}");
        assert_eq!(out, r#"[1,"two"]"#, "{name}");
        let (ok, _, err) = yard(&["call", &url, "/whoami", "--service", "gamma"]);
        assert!(!ok, "{name}: a service nobody serves answered");
        assert!(err.contains("gamma"), "{name}: {err}");
        let (ok, _, err) = yard(&["call", &url, "/whoami"]);
        assert!(!ok, "{name}: a call naming no service was answered");
        assert!(err.contains("--service"), "{name}: {err}");
    }
}

#[test]
fn logs_written_to_a_pipe_have_no_colour_codes() {
    let out = Command::new(YARD)
        .args(["call", "http://127.0.0.1:9", "/x"])
        .env("RUST_LOG", "debug")
        .env_remove("NO_COLOR")
        .output()
        .expect("run yard");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DEBUG"), "no log line to check: {err}");
    assert!(!err.contains('\u{1b}'), "colour codes in a pipe: {err:?}");
}

/// SIGTERM (what service managers send) drains: a call in flight is answered, then `yard`
/// exits cleanly; before, it died at once and the call was cut.
#[test]
fn sigterm_lets_calls_in_flight_finish_then_exits_cleanly() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut running = start_yard(
        &["serve", "echo", "--name", "drain", "--url", &url],
        "serving drain on",
    );
    let call_url = format!("{url}/sleep");
    let call = std::thread::spawn(move || {
        reqwest::blocking::Client::new()
            .post(call_url)
            .header("content-type", "application/json")
            .body(r#"{"args":[1500]}"#)
            .send()
            .map(|r| (r.status().as_u16(), r.text().unwrap_or_default()))
    });
    std::thread::sleep(std::time::Duration::from_millis(400));
    common::sigterm(&running);
    let answered = call.join().expect("caller");
    assert!(
        matches!(&answered, Ok((200, _))),
        "the call in flight was cut: {answered:?}"
    );
    let status = common::exit_status(&mut running, std::time::Duration::from_secs(10));
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[test]
fn policy_prints_the_defaults_and_a_files_settings_over_them() {
    let policy = |args: &[&str]| {
        let out = Command::new(YARD)
            .arg("policy")
            .args(args)
            .output()
            .expect("run yard policy");
        (
            out.status.success(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, _) = policy(&[]);
    assert!(ok);
    let defaults: serde_json::Value = serde_json::from_slice(&stdout).expect("JSON");
    assert_eq!(defaults["retry_ratio"], 0.2);
    assert_eq!(defaults["retry_min_per_sec"], 10);
    assert_eq!(defaults["breaker_consecutive"], 5);
    assert_eq!(defaults["idempotent"], serde_json::json!([]));

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("policy.json");
    std::fs::write(&file, r#"{"idempotent": ["/price"], "max_attempts": 5}"#).expect("write");
    let (ok, stdout, _) = policy(&["--file", file.to_str().expect("path")]);
    assert!(ok);
    let set: serde_json::Value = serde_json::from_slice(&stdout).expect("JSON");
    assert_eq!(set["idempotent"], serde_json::json!(["/price"]));
    assert_eq!(set["max_attempts"], 5);
    assert_eq!(
        set["retry_ratio"], 0.2,
        "a field left out keeps its default"
    );

    std::fs::write(&file, r#"{"max_atempts": 5}"#).expect("write");
    let (ok, _, stderr) = policy(&["--file", file.to_str().expect("path")]);
    assert!(!ok, "a misspelt setting was accepted");
    assert!(stderr.contains("unknown field `max_atempts`"), "{stderr}");
}

#[test]
fn metrics_are_served_at_the_address_given() {
    let (service_port, metrics_port) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{service_port}");
    let metrics = format!("127.0.0.1:{metrics_port}");
    let _running = start_yard(
        &[
            "--metrics",
            &metrics,
            "serve",
            "echo",
            "--name",
            "counted",
            "--url",
            &url,
        ],
        "serving counted",
    );
    for _ in 0..3 {
        let (ok, out, err) = yard(&["call", &url, "/whoami"]);
        assert!(ok, "{out}{err}");
    }
    let get = |path: &str| {
        reqwest::blocking::get(format!("http://{metrics}{path}"))
            .expect("GET")
            .text()
            .expect("text")
    };
    let text = get("/metrics");
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("switchyard_calls_total{")
                && l.contains("service=\"counted\"")
                && l.contains("route=\"/whoami\"")
                && l.contains("outcome=\"ok\"")
        })
        .unwrap_or_else(|| panic!("no count of /whoami calls in:\n{text}"));
    assert!(line.ends_with(" 3"), "{line}");
    assert!(get("/healthz").contains("\"ok\""));
}

#[test]
fn logs_can_be_json_lines() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, r#"{"idempotent": ["/x"], "max_attempts": 2}"#).expect("write");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let out = Command::new(YARD)
        .args(["--log-format", "json", "call", &dead, "/x", "--policy"])
        .arg(&policy)
        .env("RUST_LOG", "switchyard=debug")
        .output()
        .expect("run yard");
    assert!(!out.status.success(), "nothing listens there");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let retry = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["fields"]["message"] == "retrying")
        .unwrap_or_else(|| panic!("no JSON line for the retry in:\n{stderr}"));
    assert_eq!(retry["level"], "DEBUG");
    assert_eq!(retry["fields"]["route"], "/x");
    assert!(retry["timestamp"].is_string(), "{retry}");
}

#[test]
fn readiness_follows_the_broker_connection() {
    // A NATS server of this test's own, stopped and started again here.
    if !switchyard::testkit::require_program(
        "readiness_follows_the_broker_connection",
        "nats-server",
    ) {
        return;
    }
    let (nats_port, metrics_port) = (free_port(), free_port());
    let start_nats = || {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &nats_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        switchyard::testkit::wait_for_port("nats-server", &format!("127.0.0.1:{nats_port}"), true);
        switchyard::testkit::Killed(child)
    };
    let nats = start_nats();
    let url = format!("nats://127.0.0.1:{nats_port}");
    let metrics = format!("127.0.0.1:{metrics_port}");
    let _running = start_yard(
        &[
            "--metrics",
            &metrics,
            "serve",
            "echo",
            "--name",
            "ready",
            "--url",
            &url,
        ],
        "serving ready",
    );
    let readyz = || {
        let resp = reqwest::blocking::get(format!("http://{metrics}/readyz")).expect("GET");
        (resp.status().as_u16(), resp.text().expect("text"))
    };
    let until = |want: u16, within: Duration| {
        let deadline = Instant::now() + within;
        loop {
            let (status, body) = readyz();
            if status == want || Instant::now() > deadline {
                return (status, body);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let (status, body) = readyz();
    assert_eq!(status, 200, "{body}");

    drop(nats);
    let (status, body) = until(503, Duration::from_secs(10));
    assert_eq!(status, 503, "not ready while its broker is gone: {body}");
    assert!(body.contains(&url), "names the transport: {body}");
    assert!(readyz_is_alive(&metrics), "alive all the same");
    eprintln!("while the broker is gone: {status} {body}");

    let _nats = start_nats();
    let (status, body) = until(200, Duration::from_secs(20));
    assert_eq!(status, 200, "ready again once reconnected: {body}");
}

/// `/healthz` answers 200: the process lives, whatever its connections.
fn readyz_is_alive(metrics: &str) -> bool {
    reqwest::blocking::get(format!("http://{metrics}/healthz"))
        .is_ok_and(|r| r.status().as_u16() == 200)
}

#[test]
fn serve_registers_and_a_stop_or_a_kill_removes_it() {
    let dir = std::env::temp_dir().join(format!("yard-registry-{}", free_port()));
    registers_and_a_stop_or_a_kill_removes(
        &format!("file://{}", dir.display()),
        Duration::from_millis(1_000),
        Duration::from_millis(2_000),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_registers_in_etcd_and_a_stop_or_a_kill_removes_it() {
    if !switchyard::testkit::require_server("cli etcd registry", "etcd", "127.0.0.1:2379") {
        return;
    }
    // etcd's shortest lease is 2 s, ended at its next check (every 500 ms).
    registers_and_a_stop_or_a_kill_removes(
        &format!("etcd://127.0.0.1:2379/yard{}", free_port()),
        Duration::from_millis(2_000),
        Duration::from_millis(5_000),
    );
}

#[test]
fn serve_registers_in_zookeeper_and_a_stop_or_a_kill_removes_it() {
    if !switchyard::testkit::require_server("cli zookeeper registry", "ZooKeeper", "127.0.0.1:2181")
    {
        return;
    }
    // Killed, the process leaves its session to expire (2 s asked here) and its record's
    // lease (2 s) to run out, whichever readers see first. (1 s, with the whole CLI suite
    // running beside it on 2 cores, once left a renewal late enough for a reader to take the
    // record as lapsed.)
    registers_and_a_stop_or_a_kill_removes(
        &format!(
            "zk://127.0.0.1:2181/yard{}?session_timeout_ms=2000",
            free_port()
        ),
        Duration::from_millis(2_000),
        Duration::from_millis(5_000),
    );
}

/// `yard serve --registry REGISTRY --registry-ttl-ms LEASE` registers; SIGTERM removes the
/// record at once; SIGKILL leaves it to run out within `lease_ends` of the kill.
fn registers_and_a_stop_or_a_kill_removes(registry: &str, lease: Duration, lease_ends: Duration) {
    let lease_ms = lease.as_millis().to_string();
    let registry = registry.to_string();
    let args = |url: &str| {
        vec![
            "--registry".to_string(),
            registry.clone(),
            "--registry-ttl-ms".into(),
            lease_ms.clone(),
            "serve".into(),
            "echo".into(),
            "--name".into(),
            "books".into(),
            "--version".into(),
            "1.2.0".into(),
            "--url".into(),
            url.to_string(),
        ]
    };
    let listed = || {
        let (ok, out, err) = yard(&["--registry", &registry, "services", "--json"]);
        assert!(ok, "{out}{err}");
        out.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
            .collect::<Vec<_>>()
    };
    let gone_within = |wait: Duration| {
        let deadline = Instant::now() + wait;
        while !listed().is_empty() {
            assert!(
                Instant::now() < deadline,
                "still listed after {wait:?}: {:?}",
                listed()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    let url = format!("http://127.0.0.1:{}", free_port());
    let running = start_yard(
        &args(&url).iter().map(String::as_str).collect::<Vec<_>>(),
        "serving books",
    );
    let instances = listed();
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(instances[0]["service"], "books");
    assert_eq!(instances[0]["version"], "1.2.0");
    assert_eq!(instances[0]["health"], "serving");
    assert_eq!(instances[0]["addresses"][0], url.as_str());
    assert!(instances[0]["routes"]
        .as_array()
        .is_some_and(|r| r.contains(&"/whoami".into())));
    // Called by name through the registry, no transport URL given.
    let (ok, out, err) = yard(&[
        "--registry",
        &registry,
        "call",
        "/whoami",
        "--service",
        "books",
    ]);
    assert!(ok, "{out}{err}");
    let who: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(who["service"], "books", "{out}");
    let by_version = |req: &str| {
        yard(&[
            "--registry",
            &registry,
            "call",
            "/whoami",
            "--service",
            "books",
            "--version",
            req,
        ])
    };
    let (ok, out, err) = by_version("^1");
    assert!(ok, "{out}{err}");
    let (ok, _, err) = by_version("^2");
    assert!(!ok && err.contains("versions registered: 1.2.0"), "{err}");
    let (ok, _, err) = yard(&[
        "--registry",
        &registry,
        "call",
        "/whoami",
        "--service",
        "nobody",
    ]);
    assert!(
        !ok && err.contains("no instance of service nobody"),
        "{err}"
    );
    // Renewed past its lease while it serves.
    std::thread::sleep(lease * 3 / 2);
    assert_eq!(listed().len(), 1, "renewed");
    // SIGTERM: removed as it stops.
    common::sigterm(&running);
    gone_within(Duration::from_millis(1_000));
    drop(running);

    // SIGKILL: nothing removes it, its lease runs out.
    let url = format!("http://127.0.0.1:{}", free_port());
    let running = start_yard(
        &args(&url).iter().map(String::as_str).collect::<Vec<_>>(),
        "serving books",
    );
    assert_eq!(listed().len(), 1);
    drop(running); // SIGKILL and reaped
    assert_eq!(
        listed().len(),
        1,
        "a killed instance stays until its lease runs out"
    );
    gone_within(lease_ends);

    let (ok, _, err) = yard(&["services"]);
    assert!(!ok && err.contains("--registry"), "{err}");

    // An event through the registry: nobody has registered a handler of the topic.
    let (ok, _, err) = yard(&["--registry", &registry, "publish", "books.added", "{}"]);
    assert!(
        !ok && err.contains("no registered instance handles topic \"books.added\""),
        "{err}"
    );
}

#[test]
fn config_and_routes_are_kept_in_the_registry() {
    let dir = std::env::temp_dir().join(format!("yard-config-{}", free_port()));
    let registry = format!("file://{}", dir.display());
    let run = |args: &[&str]| {
        let mut all = vec!["--registry", registry.as_str()];
        all.extend_from_slice(args);
        yard(&all)
    };
    let (ok, out, err) = run(&["config", "set", "limits", r#"{"max": 5}"#]);
    assert!(ok, "{out}{err}");
    assert!(out.contains(r#""revision":1"#), "{out}");
    let (ok, out, _) = run(&["config", "get", "limits"]);
    assert!(
        ok && out.contains(r#"\"max\": 5"#) && out.contains(r#""revision":1"#),
        "{out}"
    );
    let (ok, _, err) = run(&["config", "set", "limits", "{}", "--expect", "7"]);
    assert!(!ok && err.contains("changed meanwhile"), "{err}");
    let (ok, out, err) = run(&["route", "books", "^1=90", "^2=10"]);
    assert!(ok, "{out}{err}");
    let (ok, out, _) = run(&["config", "get", "route/books"]);
    assert!(ok && out.contains(r#"\"weight\":90"#), "{out}");
    let (ok, _, err) = run(&["route", "books", "^x=1"]);
    assert!(!ok && err.contains("version requirement"), "{err}");
    let (ok, _, err) = run(&["route", "books", "^1=0"]);
    assert!(!ok && err.contains("weight above 0"), "{err}");
    // The kinds the framework applies are checked before they are written.
    let (ok, _, err) = run(&["config", "set", "policy/books", r#"{"breaker_ratio": 2}"#]);
    assert!(
        !ok && err.contains("not written") && err.contains("breaker_ratio"),
        "{err}"
    );
    let (ok, _, err) = run(&["config", "set", "route/books", r#"{"split": []}"#]);
    assert!(!ok && err.contains("not written"), "{err}");
    let (ok, out, err) = run(&["config", "set", "policy/books", r#"{"max_in_flight": 50}"#]);
    assert!(ok && out.contains(r#""revision":1"#), "{out}{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
