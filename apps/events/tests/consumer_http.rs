//! The consumer's HTTP contract, pinned to what seed 002's Flask service answered.

use std::collections::HashSet;
use std::sync::Arc;

use switchyard_events::consumer::{self, ConsumerConfig, RunningConsumer};
use switchyard_events::propagator::{self, PropagatorConfig};

async fn start(dir: &tempfile::TempDir) -> (RunningConsumer, String) {
    let config = ConsumerConfig {
        listen: "127.0.0.1:0".into(),
        output: dir.path().join("output/events.json"),
        ..ConsumerConfig::default()
    };
    let c = consumer::start(config, &[], "events").await.unwrap();
    let url = format!("http://{}", c.addr);
    (c, url)
}

async fn post(
    url: &str,
    body: impl Into<reqwest::Body>,
    content_type: Option<&str>,
) -> (u16, String, String) {
    let mut rb = reqwest::Client::new()
        .post(format!("{url}/event"))
        .body(body);
    if let Some(ct) = content_type {
        rb = rb.header("content-type", ct);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ct, r.text().await.unwrap())
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn the_seed_readme_examples_give_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (c, url) = start(&dir).await;
    let (s, ct, body) = post(
        &url,
        r#"{"event_type": "message", "event_payload": "hello"}"#,
        Some("application/json"),
    )
    .await;
    assert_eq!(
        (s, ct.as_str(), body.as_str()),
        (
            200,
            "application/json",
            "{\"event_payload\":\"hello\",\"event_type\":\"message\"}\n"
        )
    );
    let (s, ct, body) = post(
        &url,
        r#"{"event_type": 123, "event_payload": {}}"#,
        Some("application/json"),
    )
    .await;
    assert_eq!((s, ct.as_str()), (400, "application/json"));
    assert_eq!(
        body,
        r#"{"error": "Validation error - {'event_payload': ['Not a valid string.'], 'event_type': ['Not a valid string.']}"}"#
    );
    // No JSON content type needed.
    let (s, _, _) = post(
        &url,
        r#"{"event_type": "user_left", "event_payload": "Thomas"}"#,
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, body) = post(&url, "{}", Some("text/plain")).await;
    assert_eq!(s, 400);
    assert_eq!(
        body,
        r#"{"error": "Validation error - {'event_payload': ['Missing data for required field.'], 'event_type': ['Missing data for required field.']}"}"#
    );
    let (s, _, body) = post(&url, "this is not json", None).await;
    assert_eq!(s, 400);
    assert!(body.starts_with(r#"{"error": "Unknown error - "#), "{body}");
    let (s, _, body) = post(
        &url,
        r#"{"event_type": "m", "event_payload": "p", "extra": 1}"#,
        None,
    )
    .await;
    assert_eq!(
        (s, body.as_str()),
        (
            400,
            r#"{"error": "Validation error - {'extra': ['Unknown field.']}"}"#
        )
    );
    let r = reqwest::get(format!("{url}/event")).await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let r = reqwest::Client::new()
        .post(format!("{url}/other"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(
        lines(c.output()),
        vec![
            r#"{"event_payload":"hello","event_type":"message"}"#,
            r#"{"event_payload":"Thomas","event_type":"user_left"}"#
        ]
    );
    c.shutdown().await;
}

#[tokio::test]
async fn a_ten_mebibyte_body_is_413_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (c, url) = start(&dir).await;
    let payload = "x".repeat(10 * 1024 * 1024);
    let body = format!(r#"{{"event_type": "big", "event_payload": "{payload}"}}"#);
    let (s, _, _) = post(&url, body, Some("application/json")).await;
    assert_eq!(s, 413);
    assert!(lines(c.output()).is_empty());
}

#[tokio::test]
async fn a_thousand_concurrent_senders_each_stored_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (c, url) = start(&dir).await;
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let body = format!(r#"{{"event_type": "n", "event_payload": "{i}"}}"#);
            http.post(format!("{url}/event"))
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    let mut accepted = HashSet::new();
    for (i, t) in tasks.into_iter().enumerate() {
        if t.await.unwrap().ok() == Some(200) {
            accepted.insert(i.to_string());
        }
    }
    assert_eq!(accepted.len(), 1000, "every valid event is accepted");
    let stored: Vec<String> = lines(c.output())
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("every line parses")
                ["event_payload"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(stored.len(), 1000, "no duplicates");
    assert_eq!(stored.into_iter().collect::<HashSet<_>>(), accepted);
}

#[tokio::test]
async fn an_unwritable_output_is_503_never_200() {
    let config = ConsumerConfig {
        listen: "127.0.0.1:0".into(),
        output: "/dev/full".into(),
        ..ConsumerConfig::default()
    };
    let c = consumer::start(config, &[], "events").await.unwrap();
    let url = format!("http://{}", c.addr);
    let (s, _, body) = post(&url, r#"{"event_type": "m", "event_payload": "p"}"#, None).await;
    assert_eq!(s, 503);
    assert!(
        body.contains("Storage error") && body.contains("No space left"),
        "{body}"
    );
    // A folder that cannot be created: a regular file stands where the folder should be.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("blocker"), "").unwrap();
    let config = ConsumerConfig {
        listen: "127.0.0.1:0".into(),
        output: dir.path().join("blocker/events.json"),
        ..ConsumerConfig::default()
    };
    let c = consumer::start(config, &[], "events").await.unwrap();
    let (s, _, body) = post(
        &format!("http://{}", c.addr),
        r#"{"event_type": "m", "event_payload": "p"}"#,
        None,
    )
    .await;
    assert_eq!(s, 503, "{body}");
}

#[tokio::test]
async fn events_from_a_transport_get_the_same_validation_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let bus = format!("mem://events-test-{}", std::process::id());
    let config = ConsumerConfig {
        listen: "127.0.0.1:0".into(),
        output: dir.path().join("events.json"),
        ..ConsumerConfig::default()
    };
    let c = consumer::start(config, std::slice::from_ref(&bus), "events")
        .await
        .unwrap();
    let transport = switchyard::connect(&bus).unwrap();
    use futures::StreamExt;
    let mut dead = transport
        .subscribe(
            "events.dlq",
            switchyard::transport::SubscribeOptions::group("watch"),
        )
        .await
        .unwrap();
    let client = switchyard::Client::new(transport);
    client
        .publish(
            "events",
            &serde_json::json!({"event_type": "message", "event_payload": "via bus"}),
        )
        .await
        .unwrap();
    client
        .publish(
            "events",
            &serde_json::json!({"event_type": 123, "event_payload": {}}),
        )
        .await
        .unwrap();
    let d = tokio::time::timeout(std::time::Duration::from_secs(5), dead.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        d.envelope.headers.get("x-error"),
        Some("Validation error - {'event_payload': ['Not a valid string.'], 'event_type': ['Not a valid string.']}")
    );
    d.ack().await.unwrap();
    // Shutdown drains the handlers in flight, so the valid event is stored by then.
    let output = c.output().to_path_buf();
    c.shutdown().await;
    assert_eq!(
        lines(&output),
        vec![r#"{"event_payload":"via bus","event_type":"message"}"#]
    );
}

#[tokio::test]
async fn the_propagator_sends_the_seed_dataset_and_sums_up() {
    let dir = tempfile::tempdir().unwrap();
    let (c, url) = start(&dir).await;
    let printed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let p = printed.clone();
    let summary = propagator::run(
        PropagatorConfig {
            endpoint: format!("{url}/event"),
            interval: std::time::Duration::from_millis(1),
            count: Some(200),
            ..PropagatorConfig::default()
        },
        Arc::new(move |line: &str| p.lock().unwrap().push(line.to_string())),
    )
    .await
    .unwrap();
    assert_eq!(summary.sent, 200);
    assert_eq!(summary.accepted + summary.rejected, 200, "{summary}");
    assert!(
        summary.rejected > 0,
        "the dataset's invalid event was never picked in 200 draws: {summary}"
    );
    assert_eq!(summary.failed, 0);
    assert_eq!(lines(c.output()).len() as u64, summary.accepted);
    assert_eq!(printed.lock().unwrap().len(), 200);
    // Nothing listening: reported and retried, counted as failed, no crash.
    let dead = propagator::run(
        PropagatorConfig {
            endpoint: "http://127.0.0.1:9/event".into(),
            interval: std::time::Duration::from_millis(1),
            count: Some(2),
            attempts: 2,
            ..PropagatorConfig::default()
        },
        Arc::new(|_: &str| {}),
    )
    .await
    .unwrap();
    assert_eq!((dead.sent, dead.failed), (2, 2));
}

#[tokio::test]
async fn rate_mode_sends_concurrently_and_transport_urls_publish() {
    let dir = tempfile::tempdir().unwrap();
    let (c, url) = start(&dir).await;
    let started = std::time::Instant::now();
    let summary = propagator::run(
        PropagatorConfig {
            endpoint: format!("{url}/event"),
            rate: Some(500.0),
            count: Some(300),
            print_responses: false,
            ..PropagatorConfig::default()
        },
        Arc::new(|_: &str| {}),
    )
    .await
    .unwrap();
    assert_eq!((summary.sent, summary.failed), (300, 0), "{summary}");
    // 300 events at 500/s take about 0.6 s; sequential 5 s waits would take 25 minutes.
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(lines(c.output()).len() as u64, summary.accepted);
    c.shutdown().await;

    // To a transport URL: published on the topic, consumed by a consumer taking that bus.
    let bus = format!("mem://propagate-{}", std::process::id());
    let dir2 = tempfile::tempdir().unwrap();
    let c2 = consumer::start(
        ConsumerConfig {
            listen: "127.0.0.1:0".into(),
            output: dir2.path().join("e.json"),
            ..ConsumerConfig::default()
        },
        std::slice::from_ref(&bus),
        "events",
    )
    .await
    .unwrap();
    let input = dir2.path().join("in.json");
    std::fs::write(
        &input,
        r#"[{"event_type": "only", "event_payload": "one"}]"#,
    )
    .unwrap();
    let summary = propagator::run(
        PropagatorConfig {
            endpoint: bus,
            input: Some(input),
            interval: std::time::Duration::from_millis(1),
            count: Some(5),
            print_responses: false,
            ..PropagatorConfig::default()
        },
        Arc::new(|_: &str| {}),
    )
    .await
    .unwrap();
    assert_eq!(summary.accepted, 5, "{summary}");
    let out = c2.output().to_path_buf();
    c2.shutdown().await;
    assert_eq!(
        lines(&out),
        vec![r#"{"event_payload":"one","event_type":"only"}"#; 5]
    );
}

#[test]
fn a_bad_input_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.json");
    std::fs::write(&p, "{}").unwrap();
    let e = propagator::load_events(Some(&p)).unwrap_err().to_string();
    assert!(e.contains("must hold a non-empty JSON list"), "{e}");
    assert_eq!(
        propagator::load_events(None).unwrap().len(),
        11,
        "the seed's dataset ships built in"
    );
}

/// Idle connections cannot take the endpoint: over the cap a connection is answered 503 and
/// closed, and a silent one is closed after the idle time, after which events are taken again.
#[tokio::test]
async fn idle_connections_cannot_make_the_endpoint_unreachable() {
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let config = ConsumerConfig {
        listen: "127.0.0.1:0".into(),
        output: dir.path().join("output/events.json"),
        limits: switchyard::http::ServerLimits::default()
            .max_connections(3)
            .header_read(Duration::from_millis(300))
            .idle(Duration::from_millis(300)),
        ..ConsumerConfig::default()
    };
    let c = consumer::start(config, &[], "events").await.unwrap();
    let url = format!("http://{}", c.addr);
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tokio::net::TcpStream::connect(c.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut over = tokio::net::TcpStream::connect(c.addr).await.unwrap();
    let mut said = String::new();
    tokio::time::timeout(Duration::from_secs(5), over.read_to_string(&mut said))
        .await
        .expect("answered and closed")
        .unwrap();
    assert!(said.starts_with("HTTP/1.1 503"), "{said}");
    // The idle ones are closed by the server, not by this test.
    for s in &mut idle {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed by the server")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    let (s, _, body) = post(&url, r#"{"event_type": "m", "event_payload": "p"}"#, None).await;
    assert_eq!(s, 200, "{body}");
    drop(idle);
}
