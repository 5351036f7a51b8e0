//! The HTTP wire format and every bad-input path, against a real server on loopback.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchyard_core::error::{CallError, ErrorCode};
use switchyard_core::handler::{json as json_route, rpc};
use switchyard_core::service::{Service, WsMessage};
use switchyard_core::transport::ServeHandle;
use switchyard_core::{Client, Json};
use switchyard_http::HttpTransport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

struct InFlight;
impl InFlight {
    fn enter() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        InFlight
    }
}
impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(serde::Serialize)]
struct Thing {
    name: String,
    n: u32,
}

async fn int3(a: f64, key: i64) -> (f64, i64, f64) {
    (a + key as f64, key * key, a * a)
}

fn service() -> Service {
    Service::new("wire-test")
        .max_body(1024)
        .route("/int3", rpc(int3).params(["a", "key"]))
        .route("/none", rpc(|_a: Value| async {}).params(["a"]))
        .route("/list", rpc(|| async { vec![1, 2, 3] }))
        .route(
            "/thing",
            rpc(|| async {
                Json(Thing {
                    name: "x".into(),
                    n: 2,
                })
            }),
        )
        .route("/echo", rpc(|s: String| async move { s }).params(["s"]))
        .route("/secret", rpc(|| async { "opened" }).token("123456"))
        .route("/panic", rpc(|| async { panic!("handler exploded") as u8 }))
        .route(
            "/slow",
            rpc(|| async {
                let _guard = InFlight::enter();
                tokio::time::sleep(Duration::from_secs(20)).await;
            }),
        )
        .route(
            "/json",
            json_route(|k: serde_json::Map<String, Value>| async move { Value::Object(k) }),
        )
        .on_event("greetings", |v: Value| async move {
            if v == json!("fail") {
                Err(switchyard_core::HandlerError::unavailable("not now"))
            } else {
                Ok(())
            }
        })
        .ws(
            "/hello",
            |m: WsMessage| async move { format!("ok:{}", m.text) },
        )
        .ws("/user/<name>", |m: WsMessage| async move {
            format!("{}:{}", m.params["name"], m.text)
        })
        .ws_events("/events/<topic>", None)
}

async fn start() -> (ServeHandle, String) {
    let t = Arc::new(HttpTransport::from_url("http://127.0.0.1:0").unwrap());
    let h = switchyard_core::server::serve(t, service()).await.unwrap();
    let url = h.url().to_string();
    (h, url)
}

async fn post(url: &str, path: &str, body: &str) -> (u16, String, String) {
    let r = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ct, r.text().await.unwrap())
}

fn message(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap();
    v["error"]["message"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn replies_are_json_arrays_with_one_element_per_value() {
    let (_h, url) = start().await;
    let (status, ct, body) = post(
        &url,
        "/int3",
        r#"{"args": [3.1427], "kwargs": {"key": 1000000000}, "token": null}"#,
    )
    .await;
    assert_eq!(
        (status, ct.as_str()),
        (200, "application/json"),
        "exactly that content type"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!([1000000003.1427, 1000000000000000000i64, 9.87656329])
    );
    assert_eq!(post(&url, "/none", r#"{"args": [1]}"#).await.2, "[null]");
    assert_eq!(post(&url, "/list", "{}").await.2, "[[1,2,3]]");
    // A struct is one object of its fields, in declaration order (serialized straight from
    // the Rust value; JSON object order carries no meaning).
    assert_eq!(
        post(&url, "/thing", r#"{"args": [], "kwargs": {}}"#)
            .await
            .2,
        r#"[{"name":"x","n":2}]"#
    );
}

#[tokio::test]
async fn malformed_and_mistyped_requests_are_400_naming_the_problem() {
    let (_h, url) = start().await;
    let (status, _, body) = post(&url, "/int3", r#"{"args": [1,"#).await;
    assert_eq!(status, 400);
    assert!(
        message(&body).starts_with("malformed request body"),
        "{body}"
    );
    let (status, _, body) = post(&url, "/int3", r#"{"args": [1.5, "many"]}"#).await;
    assert_eq!(status, 400);
    let m = message(&body);
    assert!(m.contains("'key'") && m.contains("i64"), "{m}");
    let (status, _, body) = post(&url, "/int3", r#"{"args": [1, 2, 3]}"#).await;
    assert_eq!(status, 400);
    assert!(
        message(&body).contains("takes 2 argument(s) but 3"),
        "{body}"
    );
    let (status, _, body) = post(&url, "/int3", r#"[1, 2]"#).await;
    assert_eq!(status, 400);
    assert!(
        message(&body).contains(r#"request body must be {"args""#),
        "{body}"
    );
    let (status, _, body) = post(&url, "/int3", r#"{"args": [1], "kwargs": {"nope": 1}}"#).await;
    assert_eq!(status, 400);
    assert!(
        message(&body).contains("unexpected keyword argument 'nope'"),
        "{body}"
    );
}

#[tokio::test]
async fn unknown_routes_wrong_methods_and_big_bodies() {
    let (_h, url) = start().await;
    let (status, _, body) = post(&url, "/nope", "{}").await;
    assert_eq!(status, 404);
    assert_eq!(message(&body), "no route /nope");
    let r = reqwest::get(format!("{url}/int3")).await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let big = format!(r#"{{"args": ["{}"]}}"#, "x".repeat(2000));
    let (status, _, body) = post(&url, "/echo", &big).await;
    assert_eq!(status, 413);
    assert!(message(&body).contains("1024 bytes"), "{body}");
}

#[tokio::test]
async fn chunked_bodies_over_the_limit_are_413_too() {
    let (_h, url) = start().await;
    let addr = url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let chunk = "x".repeat(800);
    let req = format!(
        "POST /echo HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len(),
        chunk.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
}

#[tokio::test]
async fn tokens_are_checked_from_body_or_bearer_header() {
    let (_h, url) = start().await;
    let (status, _, body) = post(&url, "/secret", "{}").await;
    assert_eq!(
        (status, message(&body).as_str()),
        (401, "missing token for /secret")
    );
    let (status, _, _) = post(&url, "/secret", r#"{"token": "654321"}"#).await;
    assert_eq!(status, 401);
    let (status, _, body) = post(&url, "/secret", r#"{"token": "123456"}"#).await;
    assert_eq!((status, body.as_str()), (200, r#"["opened"]"#));
    let r = reqwest::Client::new()
        .post(format!("{url}/secret"))
        .bearer_auth("123456")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn a_panicking_handler_fails_its_call_and_the_server_keeps_serving() {
    let (_h, url) = start().await;
    let (status, _, body) = post(&url, "/panic", "{}").await;
    assert_eq!(status, 500);
    assert!(message(&body).contains("handler exploded"), "{body}");
    let (status, _, body) = post(&url, "/echo", r#"{"args": ["still here"]}"#).await;
    assert_eq!((status, body.as_str()), (200, r#"["still here"]"#));
}

#[tokio::test]
async fn a_slow_handler_times_out_and_leaks_nothing() {
    let (_h, url) = start().await;
    let client = Client::new(Arc::new(HttpTransport::from_url(&url).unwrap()))
        .with_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = client.call::<_, ()>("/slow", ()).await.unwrap_err();
    assert!(matches!(err, CallError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // The server gives up too: its handler future is dropped at the deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while IN_FLIGHT.load(Ordering::SeqCst) != 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        IN_FLIGHT.load(Ordering::SeqCst),
        0,
        "the slow handler is still running"
    );
}

#[tokio::test]
async fn typed_client_gets_typed_values_and_typed_errors() {
    let (_h, url) = start().await;
    let client = Client::new(Arc::new(HttpTransport::from_url(&url).unwrap()));
    let (a, b, c): (f64, i64, f64) = client
        .request("/int3")
        .arg(3.1427)
        .kwarg("key", 1_000_000_000)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (a, b, c),
        (1000000003.1427, 1000000000000000000, 3.1427 * 3.1427)
    );
    let e = client.call::<_, String>("/secret", ()).await.unwrap_err();
    assert_eq!(e.remote_code(), Some(ErrorCode::Unauthorized));
    let e = client
        .call::<_, u32>("/echo", "text".to_string())
        .await
        .unwrap_err();
    assert!(matches!(e, CallError::Decode { .. }), "{e}");
    let dead = Client::new(Arc::new(
        HttpTransport::from_url("http://127.0.0.1:9").unwrap(),
    ));
    let e = dead
        .call::<_, String>("/echo", "x".to_string())
        .await
        .unwrap_err();
    assert!(matches!(e, CallError::Unreachable { .. }), "{e}");
}

#[tokio::test]
async fn json_endpoints_take_keyword_objects_on_get_post_put_delete() {
    let (_h, url) = start().await;
    let http = reqwest::Client::new();
    for method in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let r = http
            .request(method.clone(), format!("{url}/json"))
            .json(&json!({"a": 12, "b": "t"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{method}");
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!([{"a": 12, "b": "t"}])
        );
    }
    let r = http
        .get(format!("{url}/json?a=12&b=text"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!([{"a": 12, "b": "text"}])
    );
    let r = http.patch(format!("{url}/json")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let (status, _, body) = post(&url, "/json", "[1]").await;
    assert_eq!(status, 400);
    assert!(message(&body).contains("not a list"), "{body}");
}

#[tokio::test]
async fn msgpack_requests_get_msgpack_replies() {
    let (_h, url) = start().await;
    let body = rmp_serde::to_vec_named(&json!({"args": ["packed"]})).unwrap();
    let r = reqwest::Client::new()
        .post(format!("{url}/echo"))
        .header("content-type", "application/msgpack")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/msgpack");
    let v: Value = rmp_serde::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(v, json!(["packed"]));
    // The same through a client configured for MessagePack.
    let client = Client::new(Arc::new(
        HttpTransport::from_url(&format!("{url}?codec=msgpack")).unwrap(),
    ));
    let (a, b, c): (f64, i64, f64) = client
        .request("/int3")
        .arg(1.5)
        .kwarg("key", 2)
        .send()
        .await
        .unwrap();
    assert_eq!((a, b, c), (3.5, 4, 2.25));
    assert!(HttpTransport::from_url(&format!("{url}?codec=xml")).is_err());

    // A service may make MessagePack its default for requests that name no content type.
    let t = Arc::new(HttpTransport::from_url("http://127.0.0.1:0").unwrap());
    let packed = Service::new("packed")
        .codec(switchyard_core::Codec::MsgPack)
        .route("/echo", rpc(|s: String| async move { s }));
    let h = switchyard_core::server::serve(t, packed).await.unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/echo", h.url()))
        .body(rmp_serde::to_vec_named(&json!({"args": ["p"]})).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/msgpack");
    let v: Value = rmp_serde::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(v, json!(["p"]));
}

#[tokio::test]
async fn cloud_events_in_binary_and_structured_mode() {
    let (_h, url) = start().await;
    let http = reqwest::Client::new();
    let binary = |id: Option<&str>, data: &str| {
        let mut rb = http
            .post(format!("{url}/greetings"))
            .header("ce-specversion", "1.0")
            .header("ce-type", "greeting")
            .header("ce-source", "/test")
            .header("content-type", "application/json")
            .body(data.to_string());
        if let Some(id) = id {
            rb = rb.header("ce-id", id);
        }
        rb.send()
    };
    assert_eq!(
        binary(Some("1"), r#""hi""#)
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let r = binary(None, r#""hi""#).await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("ce-id"));
    assert_eq!(
        binary(Some("2"), r#""fail""#)
            .await
            .unwrap()
            .status()
            .as_u16(),
        503
    );
    assert_eq!(
        binary(Some("3"), "{not json")
            .await
            .unwrap()
            .status()
            .as_u16(),
        400
    );
    let structured = json!({"specversion": "1.0", "id": "4", "type": "greeting", "source": "/t", "data": "hello"});
    let r = http
        .post(format!("{url}/greetings"))
        .header("content-type", "application/cloudevents+json")
        .body(structured.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = http
        .post(format!("{url}/greetings"))
        .header("content-type", "application/cloudevents+json")
        .body(json!({"specversion": "1.0", "id": "5", "source": "/t"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("\\\"type\\\""));
    let r = http
        .post(format!("{url}/nobody-listens"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "6")
        .header("ce-type", "t")
        .header("ce-source", "/t")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

#[tokio::test]
async fn websocket_routes_reply_close_on_exit_and_reject_unknown_paths() {
    let (_h, url) = start().await;
    let ws = url.replacen("http://", "ws://", 1);
    let (mut s, _) = tokio_tungstenite::connect_async(format!("{ws}/hello"))
        .await
        .unwrap();
    s.send(Message::Text("Mr. Developer".into())).await.unwrap();
    assert_eq!(
        s.next().await.unwrap().unwrap().to_text().unwrap(),
        "ok:Mr. Developer"
    );
    s.send(Message::Text("exit".into())).await.unwrap();
    assert!(matches!(s.next().await, Some(Ok(Message::Close(_))) | None));

    let (mut s, _) = tokio_tungstenite::connect_async(format!("{ws}/user/ann"))
        .await
        .unwrap();
    s.send(Message::Text("hi".into())).await.unwrap();
    assert_eq!(
        s.next().await.unwrap().unwrap().to_text().unwrap(),
        "ann:hi"
    );

    let (mut s, _) = tokio_tungstenite::connect_async(format!("{ws}/no/such/path"))
        .await
        .unwrap();
    assert_eq!(
        s.next().await.unwrap().unwrap().to_text().unwrap(),
        "Websocket close: path does not exist"
    );
    assert!(matches!(s.next().await, Some(Ok(Message::Close(_))) | None));
}

#[tokio::test]
async fn subscribed_sockets_receive_pushed_events() {
    let (_h, url) = start().await;
    let ws = url.replacen("http://", "ws://", 1);
    let (mut s, _) = tokio_tungstenite::connect_async(format!("{ws}/events/greetings"))
        .await
        .unwrap();
    // The subscription is registered when the upgrade completes; give it a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let client = Client::new(Arc::new(HttpTransport::from_url(&url).unwrap()));
    client
        .publish("greetings", &json!({"hello": "socket"}))
        .await
        .unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(frame.to_text().unwrap()).unwrap(),
        json!({"hello": "socket"})
    );
}

/// Events posted over HTTP go through the same consumer stack as a broker's: with an inbox, a
/// sender's retry of an event already handled is accepted without running the handler again,
/// and the service's event layers see it.
#[tokio::test]
async fn events_over_http_are_deduplicated_by_the_inbox() {
    use switchyard_core::consumer::ConsumerPolicy;
    use switchyard_core::inbox::MemoryInbox;
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let layered = Arc::new(AtomicUsize::new(0));
    let seen = layered.clone();
    let service = Service::new("deduped")
        .consumer_policy(ConsumerPolicy {
            inbox: Some(Arc::new(MemoryInbox::new(1_000, Duration::from_secs(60)))),
            ..ConsumerPolicy::default()
        })
        .event_layer(tower::layer::layer_fn(move |inner| {
            let seen = seen.clone();
            tower::service_fn(move |env| {
                seen.fetch_add(1, Ordering::SeqCst);
                tower::ServiceExt::oneshot(Clone::clone(&inner), env)
            })
        }))
        .on_event("orders", move |_v: Value| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
    let t = Arc::new(HttpTransport::from_url("http://127.0.0.1:0").unwrap());
    let h = switchyard_core::server::serve(t, service).await.unwrap();
    let http = reqwest::Client::new();
    let post = |id: &str| {
        http.post(format!("{}/orders", h.url()))
            .header("ce-specversion", "1.0")
            .header("ce-type", "order")
            .header("ce-source", "/test")
            .header("ce-id", id)
            .header("content-type", "application/json")
            .body(r#"{"n":1}"#)
            .send()
    };
    for id in ["order-1", "order-1", "order-2", "order-1"] {
        assert_eq!(post(id).await.unwrap().status().as_u16(), 200, "{id}");
    }
    assert_eq!(
        handled.load(Ordering::SeqCst),
        2,
        "each event id handled once"
    );
    assert_eq!(
        layered.load(Ordering::SeqCst),
        2,
        "the event layer saw each handling"
    );
    h.shutdown().await;
}
