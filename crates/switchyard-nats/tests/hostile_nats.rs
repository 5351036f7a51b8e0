//! Messages a raw NATS client can put on a topic that the Rust client library cannot read:
//! a header block with a status line (`NATS/1.0 409 …`), one with a line that has no colon,
//! one that is not UTF-8; and distinct bad messages sharing one CloudEvents id. None may stop
//! the consumer or stay unsettled: each is dead-lettered with the reason, once, and the valid
//! events around them are handled. Against the real server on 127.0.0.1:4222.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard_core::consumer::ConsumerPolicy;
use switchyard_core::message::{header, Envelope};
use switchyard_core::middleware::dead_letter::ORIGINAL_ID;
use switchyard_core::service::Service;
use switchyard_core::transport::{SubscribeOptions, Subscriber, Transport};
use switchyard_nats::NatsTransport;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const NATS: &str = "127.0.0.1:4222";

#[derive(serde::Deserialize)]
struct Numbered {
    n: u32,
}

/// Publishes `(header block, payload)` pairs to `subject` as a raw client would (`HPUB`),
/// waiting for the server to have taken them (`PING`/`PONG`).
async fn raw_publish(subject: &str, messages: &[(Vec<u8>, Vec<u8>)]) {
    let tcp = tokio::net::TcpStream::connect(NATS).await.expect("connect");
    let (read, mut write) = tcp.into_split();
    let mut read = BufReader::new(read);
    let mut info = String::new();
    read.read_line(&mut info).await.expect("INFO");
    write
        .write_all(
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}\r\n",
        )
        .await
        .expect("CONNECT");
    for (headers, payload) in messages {
        let mut frame = format!(
            "HPUB {subject} {} {}\r\n",
            headers.len(),
            headers.len() + payload.len()
        )
        .into_bytes();
        frame.extend_from_slice(headers);
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\n");
        write.write_all(&frame).await.expect("HPUB");
    }
    write.write_all(b"PING\r\n").await.expect("PING");
    loop {
        let mut line = String::new();
        read.read_line(&mut line).await.expect("read");
        assert!(!line.starts_with("-ERR"), "server refused: {line}");
        if line.starts_with("PONG") {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_the_client_cannot_read_are_dead_lettered_and_consumption_goes_on() {
    if !switchyard_core::testkit::require_server("hostile_nats", "NATS", NATS) {
        return;
    }
    let topic = format!("hostile.{}", &switchyard_core::message::new_id()[..8]);
    // A short ack wait: an unreadable message comes back quickly until `max_deliver`.
    let url = format!("nats://{NATS}?ack_wait_ms=300");
    let transport: Arc<dyn Transport> = Arc::new(NatsTransport::from_url(&url).expect("url"));
    let handled = Arc::new(Mutex::new(BTreeSet::new()));
    let seen = handled.clone();
    let service = Service::new("hostile-nats")
        .consumer_policy(ConsumerPolicy {
            max_attempts: 2,
            ..ConsumerPolicy::default()
        })
        .on_event(&topic, move |m: Numbered| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap_or_else(|p| p.into_inner()).insert(m.n);
                Ok::<(), switchyard_core::HandlerError>(())
            }
        });
    let watcher = NatsTransport::from_url(&url).expect("url");
    let mut dead = watcher
        .subscribe(&format!("{topic}.dlq"), SubscribeOptions::group("watch"))
        .await
        .expect("subscribe dlq");
    let server = switchyard_core::server::serve(transport.clone(), service)
        .await
        .expect("serve");
    let valid = |n: u32| Envelope::new(topic.as_str(), format!("{{\"n\":{n}}}"));
    transport.publish(valid(1)).await.expect("publish");
    let hostile: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (
            b"NATS/1.0 409 Consumer Deleted\r\n\r\n".to_vec(),
            br#"{"n":2}"#.to_vec(),
        ),
        (b"NATS/1.0 503\r\n\r\n".to_vec(), br#"{"n":3}"#.to_vec()),
        (
            b"NATS/1.0\r\nno colon here\r\n\r\n".to_vec(),
            br#"{"n":4}"#.to_vec(),
        ),
        (
            b"NATS/1.0\r\nX-Bad: \xff\xfe\r\n\r\n".to_vec(),
            br#"{"n":5}"#.to_vec(),
        ),
        (
            b"NATS/1.0\r\nce-id: shared\r\n\r\n".to_vec(),
            b"not json 1".to_vec(),
        ),
        (
            b"NATS/1.0\r\nce-id: shared\r\n\r\n".to_vec(),
            b"not json 2".to_vec(),
        ),
        (
            b"NATS/1.0\r\nce-id: shared\r\n\r\n".to_vec(),
            b"not json 3".to_vec(),
        ),
    ];
    raw_publish(&topic, &hostile).await;
    transport.publish(valid(6)).await.expect("publish");

    let patience = Duration::from_secs(60);
    let mut letters: Vec<Envelope> = Vec::new();
    while letters.len() < hostile.len() {
        let d = tokio::time::timeout(patience, dead.next())
            .await
            .unwrap_or_else(|_| panic!("{} dead letters, got {letters:#?}", hostile.len()))
            .expect("stream open")
            .expect("delivery");
        letters.push(d.envelope.clone());
        let _ = d.ack().await;
    }
    if let Ok(Some(Ok(extra))) = tokio::time::timeout(Duration::from_secs(3), dead.next()).await {
        panic!("a message was dead-lettered twice: {:?}", extra.envelope);
    }
    for n in 2..=5 {
        let letter = letters
            .iter()
            .find(|e| e.payload.as_ref() == format!("{{\"n\":{n}}}").as_bytes())
            .unwrap_or_else(|| panic!("no dead letter of n={n}: {letters:#?}"));
        let why = letter.headers.get(header::ERROR).unwrap_or_default();
        assert!(why.contains("cannot read"), "n={n}: {why}");
    }
    let shared = letters
        .iter()
        .filter(|e| e.headers.get(ORIGINAL_ID) == Some("shared"))
        .map(|e| e.id.clone())
        .collect::<BTreeSet<_>>();
    assert_eq!(
        shared.len(),
        3,
        "three bad messages sharing an id, three dead letters"
    );
    let deadline = Instant::now() + patience;
    loop {
        let got = handled.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if got.contains(&1) && got.contains(&6) {
            break;
        }
        assert!(Instant::now() < deadline, "valid events handled: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And consumption goes on after all of it.
    transport.publish(valid(7)).await.expect("publish");
    let deadline = Instant::now() + patience;
    while !handled
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&7)
    {
        assert!(Instant::now() < deadline, "the consumer stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}
