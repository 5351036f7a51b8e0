//! What one hostile client can do to an HTTP server, against a real server on loopback:
//! connections that stay silent, send slowly or never finish, too many connections, and
//! WebSocket messages over the body limit. None of them may hold the server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use switchyard_core::handler::rpc;
use switchyard_core::service::{Service, WsMessage};
use switchyard_core::transport::ServeHandle;
use switchyard_http::HttpTransport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn service() -> Service {
    Service::new("hostile-test")
        .max_body(1024)
        .route("/echo", rpc(|s: String| async move { s }).params(["s"]))
        .route(
            "/sleep",
            rpc(|ms: u64| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                ms
            })
            .params(["ms"]),
        )
        .ws(
            "/hello",
            |m: WsMessage| async move { format!("ok:{}", m.text) },
        )
}

async fn start(options: &str) -> (ServeHandle, String) {
    let url = format!("http://127.0.0.1:0?{options}");
    let t = Arc::new(HttpTransport::from_url(&url).expect("url"));
    let h = switchyard_core::server::serve(t, service())
        .await
        .expect("serve");
    let url = h.url().to_string();
    (h, url)
}

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection; what it sent, and how long that took.
/// Panics if it is still open after `within`.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "connection still open after {within:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

const TIMEOUTS: &str = "header_timeout_ms=300&body_timeout_ms=300&idle_timeout_ms=300";

#[tokio::test]
async fn silent_slow_and_unfinished_connections_are_closed() {
    let (_h, url) = start(TIMEOUTS).await;
    let within = Duration::from_secs(5);

    // Says nothing at all.
    let mut silent = TcpStream::connect(addr(&url)).await.expect("connect");
    let (said, _) = read_until_closed(&mut silent, within).await;
    assert!(!said.contains("200 OK"), "{said}");

    // Sends its head one byte at a time, never finishing it.
    let mut slow = TcpStream::connect(addr(&url)).await.expect("connect");
    let trickle = tokio::spawn(async move {
        for b in b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Slow: "
            .iter()
            .cycle()
            .take(200)
        {
            if slow.write_all(&[*b]).await.is_err() {
                return slow;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        slow
    });
    let mut slow = trickle.await.expect("trickle");
    let (said, _) = read_until_closed(&mut slow, within).await;
    assert!(!said.contains("200 OK"), "{said}");

    // A body that never arrives whole, with a length and chunked.
    for head in [
        "POST /echo HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n[\"abc",
        "POST /echo HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n5\r\n[\"abc\r\n",
    ] {
        let mut s = TcpStream::connect(addr(&url)).await.expect("connect");
        s.write_all(head.as_bytes()).await.expect("write");
        let (said, _) = read_until_closed(&mut s, within).await;
        assert!(said.starts_with("HTTP/1.1 408"), "{said}");
    }

    // Kept alive after a complete request, then silent.
    let mut kept = TcpStream::connect(addr(&url)).await.expect("connect");
    kept.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"args\":[\"hi\"]}",
    )
    .await
    .expect("write");
    let (said, took) = read_until_closed(&mut kept, within).await;
    assert!(said.starts_with("HTTP/1.1 200"), "{said}");
    assert!(
        took >= Duration::from_millis(250),
        "closed before idle: {took:?}"
    );
}

#[tokio::test]
async fn a_call_longer_than_the_idle_timeout_is_answered() {
    let (_h, url) = start(TIMEOUTS).await;
    let r = reqwest::Client::new()
        .post(format!("{url}/sleep"))
        .header("content-type", "application/json")
        .body(r#"{"args":[1000]}"#)
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.expect("body"), "[1000]");
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_with_503_and_retry_after() {
    let (_h, url) = start("max_connections=4").await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(addr(&url)).await.expect("connect"));
    }
    // Accepted in order: give the server a moment to take the four.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fifth = TcpStream::connect(addr(&url)).await.expect("connect");
    let (said, _) = read_until_closed(&mut fifth, Duration::from_secs(5)).await;
    assert!(said.starts_with("HTTP/1.1 503"), "{said}");
    assert!(said.contains("Retry-After: 1"), "{said}");
    assert!(said.contains("too many connections"), "{said}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = reqwest::Client::new()
        .post(format!("{url}/echo"))
        .header("content-type", "application/json")
        .body(r#"{"args":["back"]}"#)
        .send()
        .await
        .expect("served once the others left");
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn websocket_messages_over_the_body_limit_are_refused() {
    let (_h, url) = start("").await;
    let ws = url.replacen("http://", "ws://", 1);
    let (mut s, _) = tokio_tungstenite::connect_async(format!("{ws}/hello"))
        .await
        .expect("connect");
    s.send(Message::Text("x".repeat(10 * 1024).into()))
        .await
        .expect("send");
    match tokio::time::timeout(Duration::from_secs(5), s.next()).await {
        Ok(Some(Ok(Message::Close(frame)))) => {
            assert_eq!(
                frame.map(|f| u16::from(f.code)),
                Some(1009),
                "closed as too big"
            );
        }
        Ok(None) | Ok(Some(Err(_))) => {}
        other => panic!("a 10 KiB message over a 1 KiB limit was taken: {other:?}"),
    }
    // The server is fine: a new socket is served.
    let (mut s, _) = tokio_tungstenite::connect_async(format!("{ws}/hello"))
        .await
        .expect("connect");
    s.send(Message::Text("small".into())).await.expect("send");
    assert_eq!(
        s.next()
            .await
            .expect("reply")
            .expect("frame")
            .to_text()
            .expect("text"),
        "ok:small"
    );
}

#[tokio::test]
async fn watchers_need_the_token_are_capped_and_free_their_topics() {
    let service = Arc::new(
        Service::new("watch-test")
            .ws_events("/events/<topic>", None)
            .watch_limits(1_000, 3)
            .ws_token("s3cret"),
    );
    let t = Arc::new(HttpTransport::from_url("http://127.0.0.1:0").expect("url"));
    let h = switchyard_core::server::serve(t, service.clone())
        .await
        .expect("serve");
    let ws = h.url().replacen("http://", "ws://", 1);

    // No token, a wrong one: refused before the upgrade.
    for url in [
        format!("{ws}/events/a"),
        format!("{ws}/events/a?token=nope"),
    ] {
        match tokio_tungstenite::connect_async(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), 401)
            }
            other => panic!("{url} opened without the token: {other:?}"),
        }
    }

    // Open and close watchers on ever new topics: nothing stays behind.
    for i in 0..300 {
        let (mut s, _) = tokio_tungstenite::connect_async(format!("{ws}/events/t{i}?token=s3cret"))
            .await
            .expect("connect");
        s.close(None).await.expect("close");
        while s.next().await.is_some() {}
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while service.hub().topic_count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(service.hub().topic_count(), 0, "topics left behind");
    assert_eq!(service.hub().watcher_count(), 0);

    // Three watchers at most; the fourth is told to come back later.
    let mut open = Vec::new();
    for i in 0..3 {
        let (s, _) = tokio_tungstenite::connect_async(format!("{ws}/events/c{i}?token=s3cret"))
            .await
            .expect("connect");
        open.push(s);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while service.hub().watcher_count() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut fourth, _) = tokio_tungstenite::connect_async(format!("{ws}/events/c9?token=s3cret"))
        .await
        .expect("connect");
    match tokio::time::timeout(Duration::from_secs(5), fourth.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => {
            assert_eq!(u16::from(frame.code), 1013);
            assert!(
                frame.reason.contains("too many watchers"),
                "{}",
                frame.reason
            );
        }
        other => panic!("a fourth watcher was taken: {other:?}"),
    }
    drop(open);
}

#[tokio::test]
async fn requests_over_the_in_flight_bound_are_refused_at_once() {
    let (_h, url) = start("max_in_flight=2").await;
    let call = |ms: u64| {
        let url = url.clone();
        async move {
            reqwest::Client::new()
                .post(format!("{url}/sleep"))
                .header("content-type", "application/json")
                .body(format!(r#"{{"args":[{ms}]}}"#))
                .send()
                .await
                .expect("answered")
        }
    };
    let slow: Vec<_> = (0..2).map(|_| tokio::spawn(call(1500))).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let refused = call(0).await;
    assert_eq!(refused.status().as_u16(), 503);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "not refused at once"
    );
    assert_eq!(
        refused.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert!(refused
        .text()
        .await
        .expect("body")
        .contains("too many requests in flight"));
    for s in slow {
        assert_eq!(s.await.expect("slow call").status().as_u16(), 200);
    }
    assert_eq!(call(0).await.status().as_u16(), 200, "admitted again");
}

/// A broadcast subscriber that does not read is not sent a 200 for events it will never see:
/// every event a publisher was told was delivered is there to read.
#[tokio::test]
async fn a_slow_broadcast_subscriber_gets_every_event_it_was_sent() {
    use switchyard_core::message::Envelope;
    use switchyard_core::transport::{Publisher, SubscribeOptions, Subscriber};
    let port = switchyard_core::testkit::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let subscriber = HttpTransport::from_url(&url).expect("url");
    let mut sub = subscriber
        .subscribe("news", SubscribeOptions::broadcast())
        .await
        .expect("subscribe");
    let publisher = Arc::new(HttpTransport::from_url(&url).expect("url"));
    let mut confirmed = 0usize;
    let mut refused = 0usize;
    // More than the subscriber's queue holds, sent while nobody reads.
    for i in 0..1_030 {
        let env = Envelope::new("news", format!("{{\"n\":{i}}}"));
        match publisher.publish(env).await {
            Ok(()) => confirmed += 1,
            Err(_) => refused += 1,
        }
    }
    assert!(
        refused > 0,
        "every event confirmed although the queue is full"
    );
    let mut read = 0usize;
    while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
        read += 1;
        let _ = d.ack().await;
    }
    assert_eq!(read, confirmed, "confirmed {confirmed}, refused {refused}");
}
