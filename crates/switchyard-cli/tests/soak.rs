//! Soak: hostile and valid traffic together, for a bounded time (`SOAK_SECS`, default 30), on
//! `yard events consume` taking events over HTTP and from every broker at once. Asserts that
//! every valid event is stored, every hostile one is refused (HTTP) or dead-lettered with its
//! reason (brokers), the process answers throughout, and its memory stays bounded.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, Running, YARD};
use futures::StreamExt;
use switchyard::message::{header, Envelope};
use switchyard::middleware::dead_letter::ORIGINAL_ID;
use switchyard::transport::{SubscribeOptions, Transport};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const NATS: &str = "127.0.0.1:4222";
/// The consumer's body limit: hostile events are made larger.
const MAX_BODY: usize = 64 * 1024;
/// The consumer's resident memory may not exceed this.
const MAX_RSS_KIB: u64 = 300 * 1024;

/// The brokers: name, address, the URL the consumer takes events from, and the URL hostile
/// publishers use (limits raised, as a raw client's).
fn brokers(ns: &str) -> Vec<(&'static str, &'static str, String, String)> {
    vec![
        (
            "RabbitMQ",
            "127.0.0.1:5672",
            format!("amqp://127.0.0.1:5672/%2f?ns={ns}"),
            format!("amqp://127.0.0.1:5672/%2f?ns={ns}&max_message_bytes=4194304"),
        ),
        (
            "NATS",
            NATS,
            format!("nats://{NATS}?ns={ns}&ack_wait_ms=1000"),
            format!("nats://{NATS}?ns={ns}"),
        ),
        (
            "Redis",
            "127.0.0.1:6379",
            format!("redis://127.0.0.1:6379?ns={ns}"),
            format!("redis://127.0.0.1:6379?ns={ns}&max_message_bytes=4194304"),
        ),
        (
            "Mosquitto",
            "127.0.0.1:1883",
            format!("mqtt://127.0.0.1:1883?ns={ns}"),
            format!("mqtt://127.0.0.1:1883?ns={ns}&max_message_bytes=4194304"),
        ),
        (
            "Kafka (Tansu)",
            "127.0.0.1:9092",
            "kafka://127.0.0.1:9092".to_string(),
            "kafka://127.0.0.1:9092?max_message_bytes=4194304".to_string(),
        ),
    ]
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn valid(payload: &str) -> String {
    serde_json::json!({"event_type": "soak", "event_payload": payload}).to_string()
}

/// The hostile events every broker gets: (why it is hostile, payload).
fn hostile_payloads() -> Vec<(&'static str, Vec<u8>)> {
    let mut big = valid("x").into_bytes();
    big.truncate(big.len() - 2);
    big.resize(200 * 1024, b'x');
    big.extend_from_slice(b"\"}");
    vec![
        ("over the body limit", big),
        ("not JSON", b"{\"event_type\": \"soak\", oops".to_vec()),
        ("not the schema", br#"{"event_type": 5}"#.to_vec()),
    ]
}

/// NATS messages the Rust client cannot read, published raw (`HPUB`), each with a `ce-id`.
async fn nats_raw_hostile(subject: &str, ids: &[String]) {
    let tcp = TcpStream::connect(NATS).await.expect("connect");
    let (read, mut write) = tcp.into_split();
    let mut read = tokio::io::BufReader::new(read);
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut read, &mut line)
        .await
        .expect("INFO");
    write
        .write_all(b"CONNECT {\"verbose\":false,\"headers\":true,\"protocol\":1}\r\n")
        .await
        .expect("CONNECT");
    for (i, id) in ids.iter().enumerate() {
        let headers = if i % 2 == 0 {
            format!("NATS/1.0 409 Consumer Deleted\r\nce-id: {id}\r\n\r\n")
        } else {
            format!("NATS/1.0\r\nce-id: {id}\r\nno colon here\r\n\r\n")
        };
        let payload = valid("raw");
        let frame = format!(
            "HPUB {subject} {} {}\r\n{headers}{payload}\r\n",
            headers.len(),
            headers.len() + payload.len()
        );
        write.write_all(frame.as_bytes()).await.expect("HPUB");
    }
    write.write_all(b"PING\r\n").await.expect("PING");
    loop {
        line.clear();
        tokio::io::AsyncBufReadExt::read_line(&mut read, &mut line)
            .await
            .expect("read");
        if line.starts_with("PONG") {
            break;
        }
    }
}

/// A client that sends its request head one byte at a time, for ever.
async fn slow_loris(addr: String, stop: Arc<std::sync::atomic::AtomicBool>) {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(&addr).await else {
            return;
        };
        for b in b"POST /event HTTP/1.1\r\nHost: x\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if stop.load(std::sync::atomic::Ordering::Relaxed) || s.write_all(&[*b]).await.is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_and_valid_traffic_together_on_http_and_every_broker() {
    let ns = format!("soak{}", &switchyard::message::new_id()[..8]);
    let brokers = brokers(&ns);
    for (name, addr, _, _) in &brokers {
        if !switchyard::testkit::require_server("soak", name, addr) {
            return;
        }
    }
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let topic = ns.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("events.json");

    // Dead letters are watched from the start (an MQTT dead letter nobody subscribed to is
    // not kept).
    let letters: Arc<Mutex<HashMap<&'static str, Vec<Envelope>>>> = Arc::default();
    let mut watchers = Vec::new();
    for (name, _, url, _) in &brokers {
        let t = switchyard::connect(url).expect("connect");
        let mut sub = t
            .subscribe(
                &format!("{topic}.dlq"),
                SubscribeOptions::group("soak-watch"),
            )
            .await
            .expect("subscribe dlq");
        let (letters, name) = (letters.clone(), *name);
        watchers.push(tokio::spawn(async move {
            while let Some(Ok(d)) = sub.next().await {
                letters
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(name)
                    .or_default()
                    .push(d.envelope.clone());
                let _ = d.ack().await;
            }
        }));
    }

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec![
        "events".to_string(),
        "consume".into(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
        "--output".into(),
        output.display().to_string(),
        "--topic".into(),
        topic.clone(),
        "--max-body".into(),
        MAX_BODY.to_string(),
    ];
    for (_, _, url, _) in &brokers {
        args.push("--from".into());
        args.push(url.clone());
    }
    let child = Running(
        Command::new(YARD)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start yard events consume"),
    );
    let pid = child.0.id();
    switchyard::testkit::wait_for_port("yard events consume", &addr, true);

    let publishers: Vec<(&'static str, Arc<dyn Transport>)> = brokers
        .iter()
        .map(|(name, _, _, raw)| (*name, switchyard::connect(raw).expect("connect")))
        .collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let event_url = format!("http://{addr}/event");

    // Hostile HTTP clients for the whole run: idle connections, slow heads.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut idle = Vec::new();
    for _ in 0..50 {
        if let Ok(s) = TcpStream::connect(&addr).await {
            idle.push(s);
        }
    }
    let lorises: Vec<_> = (0..10)
        .map(|_| tokio::spawn(slow_loris(addr.clone(), stop.clone())))
        .collect();

    let mut sent_valid: HashSet<String> = HashSet::new();
    let mut hostile_ids: HashMap<&'static str, HashSet<String>> = HashMap::new();
    let mut max_rss = 0u64;
    let mut unanswered = Vec::new();
    let started = Instant::now();
    let mut round = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        round += 1;
        // Valid over HTTP: answered 200, in time, every time.
        let payload = format!("http-{round}");
        match http
            .post(&event_url)
            .header("content-type", "application/json")
            .body(valid(&payload))
            .send()
            .await
        {
            Ok(r) if r.status().as_u16() == 200 => {
                sent_valid.insert(payload);
            }
            Ok(r) => unanswered.push(format!("round {round}: {}", r.status())),
            Err(e) => unanswered.push(format!("round {round}: {e:?}")),
        }
        for (name, t) in &publishers {
            let payload = format!("{name}-{round}");
            t.publish(Envelope::new(topic.as_str(), valid(&payload)))
                .await
                .unwrap_or_else(|e| panic!("{name}: publish: {e}"));
            sent_valid.insert(payload);
        }
        if round.is_multiple_of(5) {
            // Hostile over HTTP: refused with a reason.
            let big = "x".repeat(MAX_BODY * 2);
            for (body, want) in [
                (big.as_str(), 413),
                ("{oops", 400),
                (r#"{"event_type": 5}"#, 400),
            ] {
                let r = http
                    .post(&event_url)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await;
                match r {
                    Ok(r) => assert_eq!(r.status().as_u16(), want, "hostile HTTP body"),
                    // Refused with 413 before the body was sent whole: the client may see the
                    // connection close under its feet instead of the answer.
                    Err(_) if want == 413 => {}
                    Err(e) => unanswered.push(format!("round {round} hostile: {e:?}")),
                }
            }
            // Hostile on every broker.
            for (name, t) in &publishers {
                for (_, payload) in hostile_payloads() {
                    if *name == "NATS" && payload.len() > 900 * 1024 {
                        continue;
                    }
                    let mut env = Envelope::new(topic.as_str(), payload);
                    env.headers.insert(header::CONTENT_TYPE, "application/json");
                    hostile_ids.entry(name).or_default().insert(env.id.clone());
                    t.publish(env)
                        .await
                        .unwrap_or_else(|e| panic!("{name}: hostile publish: {e}"));
                }
            }
            if round.is_multiple_of(20) {
                let ids: Vec<String> = (0..2).map(|_| switchyard::message::new_id()).collect();
                nats_raw_hostile(&topic, &ids).await;
                hostile_ids.entry("NATS").or_default().extend(ids);
            }
        }
        max_rss = max_rss.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in lorises {
        let _ = l.await;
    }
    drop(idle);
    assert!(
        unanswered.is_empty(),
        "valid requests not answered 200 in time: {unanswered:?}"
    );

    // Everything valid is stored, everything hostile dead-lettered, within a minute.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let stored = std::fs::read_to_string(&output).unwrap_or_default();
        let missing: Vec<&String> = sent_valid
            .iter()
            .filter(|p| !stored.contains(&format!("\"{p}\"")))
            .collect();
        let letters = letters.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut undead = Vec::new();
        for (name, ids) in &hostile_ids {
            let got: HashSet<String> = letters
                .get(name)
                .into_iter()
                .flatten()
                .filter_map(|e| e.headers.get(ORIGINAL_ID).map(str::to_string))
                .collect();
            let left = ids.difference(&got).count();
            if left > 0 {
                undead.push(format!("{name}: {left} of {} not dead-lettered", ids.len()));
            }
        }
        if missing.is_empty() && undead.is_empty() {
            for (name, letters) in &letters {
                for e in letters {
                    assert!(
                        e.headers.get(header::ERROR).is_some_and(|r| !r.is_empty()),
                        "{name}: a dead letter without a reason: {:?}",
                        e.headers
                    );
                }
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} valid events not stored (e.g. {:?}); {undead:?}",
            missing.len(),
            missing.iter().take(5).collect::<Vec<_>>()
        );
        max_rss = max_rss.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        max_rss <= MAX_RSS_KIB,
        "resident memory reached {max_rss} KiB (bound {MAX_RSS_KIB} KiB)"
    );
    eprintln!(
        "soak: {secs} s, {} valid events stored, {} hostile dead-lettered, max RSS {} MiB",
        sent_valid.len(),
        hostile_ids.values().map(HashSet::len).sum::<usize>(),
        max_rss / 1024
    );
    for w in watchers {
        w.abort();
    }
    drop(child);
}
