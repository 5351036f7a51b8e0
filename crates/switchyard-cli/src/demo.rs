//! `yard demo`: microservices_connector's quickstart and tutorial, end to end on loopback.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use switchyard::Client;
use switchyard_cli::tutorial::{self, TestService, CLASS_TOKEN};
use tokio_tungstenite::tungstenite::Message;

use crate::BoxError;

fn check<T: PartialEq + Debug>(what: &str, got: T, want: T) -> Result<T, BoxError> {
    if got == want {
        Ok(got)
    } else {
        Err(format!("{what}: expected {want:?}, got {got:?}").into())
    }
}

fn show<T: serde::Serialize>(label: &str, value: &T, took: Duration) {
    let text = serde_json::to_string(value).unwrap_or_else(|e| format!("<{e}>"));
    println!("  {label:<34} {text}  ({:.2} ms)", took.as_secs_f64() * 1e3);
}

async fn timed<T, F: std::future::Future<Output = Result<T, switchyard::CallError>>>(
    f: F,
) -> Result<(T, Duration), BoxError> {
    let start = Instant::now();
    let v = f.await?;
    Ok((v, start.elapsed()))
}

pub(crate) async fn run(calls: usize) -> Result<(), BoxError> {
    let server = switchyard::serve(
        &switchyard::connect("http://127.0.0.1:0")?,
        tutorial::service(),
    )
    .await?;
    let url = server.url().to_string();
    println!(
        "listener: the example service of microservices_connector's tutorial on {url} (HTTP + WebSocket; no broker needed)\n"
    );

    let client = Client::new(switchyard::connect(&url)?)
        .with_token("/class", CLASS_TOKEN)
        .with_token("/class2", CLASS_TOKEN)
        .with_token("/class3", CLASS_TOKEN);

    println!("quickstart (app2 sends to app1):");
    let (message, t) =
        timed(client.call::<_, String>("/helloworld", "Mr. Developer".to_string())).await?;
    println!("  {message}  ({:.2} ms)", t.as_secs_f64() * 1e3);
    check("quickstart", message.as_str(), "Welcome Mr. Developer")?;

    println!("\nstrings, numbers, several values at once:");
    let (v, t) = timed(
        client
            .request("/str")
            .arg("A variable value")
            .kwarg("key", "A keyword variable value")
            .send::<String>(),
    )
    .await?;
    show("/str -> String", &v, t);
    check(
        "/str",
        v.as_str(),
        "A variable value-A keyword variable value",
    )?;
    let (v, t) = timed(
        client
            .request("/str2")
            .arg("A variable value")
            .kwarg("key", "A keyword variable value")
            .send::<(String, String, String)>(),
    )
    .await?;
    show("/str2 -> (String, String, String)", &v, t);
    check(
        "/str2",
        v.2.as_str(),
        "A variable value-A keyword variable value",
    )?;
    let (v, t) = timed(
        client
            .request("/int")
            .arg(2018)
            .kwarg("key", 312)
            .send::<i64>(),
    )
    .await?;
    show("/int -> i64", &v, t);
    check("/int", v, 2330)?;
    let (v, t) = timed(
        client
            .request("/float")
            .arg(2.018)
            .kwarg("key", 3.12)
            .send::<f64>(),
    )
    .await?;
    show("/float -> f64", &v, t);
    check("/float", v, 2.018 + 3.12)?;
    let (v, t) = timed(
        client
            .request("/int3")
            .arg(3.1427)
            .kwarg("key", 1_000_000_000)
            .send::<(f64, i64, f64)>(),
    )
    .await?;
    show("/int3 -> (f64, i64, f64)", &v, t);
    check("/int3", v.1, 1_000_000_000_000_000_000)?;

    println!("\nlists and maps:");
    let (v, t) = timed(
        client
            .request("/list")
            .arg([12, 34, 45])
            .kwarg("key", ["abc", "zyz"])
            .send::<Vec<Value>>(),
    )
    .await?;
    show("/list -> Vec<Value>", &v, t);
    check("/list", json!(v), json!([12, 34, 45, "abc", "zyz"]))?;
    let key = json!({"int": 20, "str": "adfafsa", "float": 0.2323});
    let (v, t) = timed(
        client
            .request("/dict")
            .arg(json!({"keyword": ["anything"]}))
            .kwarg("key", &key)
            .send::<Map<String, Value>>(),
    )
    .await?;
    show("/dict -> Map<String, Value>", &v, t);
    check(
        "/dict",
        v.get("dict").cloned(),
        Some(json!({"keyword": ["anything"]})),
    )?;
    let (v, t) = timed(
        client
            .request("/list3")
            .arg(json!({"keyword": ["anything"]}))
            .kwarg("key", ["abc", "zyz"])
            .send::<(Value, Vec<String>, Option<Value>)>(),
    )
    .await?;
    show("/list3 -> (Value, Vec<String>, Option)", &v, t);
    check("/list3", v.2, None)?;

    println!("\nnone, structs, tokens:");
    let (v, t) = timed(
        client
            .request("/None")
            .arg([12, 34, 45])
            .kwarg("key", ["abc", "zyz"])
            .send::<Option<Value>>(),
    )
    .await?;
    show("/None -> Option<Value>", &v, t);
    check("/None", v, None)?;
    let (v, t) = timed(
        client
            .request("/class")
            .arg(json!({"keyword": ["anything"]}))
            .kwarg("key", &key)
            .send::<TestService>(),
    )
    .await?;
    show("/class -> TestService", &v, t);
    check(
        "/class",
        v,
        TestService::new(json!({"keyword": ["anything"]})),
    )?;
    let denied = client
        .request("/class")
        .arg(1)
        .kwarg("key", 2)
        .token("wrong")
        .send::<Value>()
        .await;
    println!(
        "  {:<34} {}",
        "/class with a wrong token",
        denied
            .as_ref()
            .map_err(ToString::to_string)
            .err()
            .unwrap_or_default()
    );
    check(
        "/class wrong token",
        denied.err().and_then(|e| e.remote_code()),
        Some(switchyard::ErrorCode::Unauthorized),
    )?;
    let (v, t) = timed(
        client
            .request("/class2")
            .arg(json!({"keyword": ["anything"]}))
            .kwarg("key", &key)
            .send::<(TestService, Value, Option<Value>)>(),
    )
    .await?;
    show("/class2 -> (TestService, Value, Option)", &v, t);
    check("/class2", v.0.value, key.clone())?;
    let (v, t) = timed(
        client
            .request("/json")
            .kwarg("a", 12)
            .kwarg("b", "This is a text")
            .kwarg("c", json!({"dict": "a dict"}))
            .send::<Value>(),
    )
    .await?;
    show("/json (keyword endpoint)", &v, t);
    check(
        "/json",
        v,
        json!({"1": 12, "2": "This is a text", "3": {"dict": "a dict"}}),
    )?;

    println!("\nWebSocket:");
    let ws_url = format!("{}/hello", url.replacen("http://", "ws://", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await?;
    let start = Instant::now();
    ws.send(Message::Text("Mr. Developer".into())).await?;
    let reply = ws.next().await.ok_or("socket closed")??;
    println!(
        "  {:<34} {:?}  ({:.2} ms)",
        ws_url,
        reply.to_text()?,
        start.elapsed().as_secs_f64() * 1e3
    );
    check("ws /hello", reply.to_text()?, "ok:Mr. Developer")?;
    ws.send(Message::Text("exit".into())).await?;

    println!("\ntiming: {calls} sequential /helloworld calls");
    let http = sequential(&client, calls).await?;
    let mem_transport = switchyard::connect("mem://demo")?;
    let mem_server = switchyard::serve(&mem_transport, tutorial::service()).await?;
    let local = sequential(&Client::new(mem_transport).service("example"), calls).await?;
    println!(
        "  {:<10} {:>10.0} calls/s   p50 {:>8.1} µs   p99 {:>8.1} µs",
        "http", http.0, http.1, http.2
    );
    println!(
        "  {:<10} {:>10.0} calls/s   p50 {:>8.1} µs   p99 {:>8.1} µs",
        "in-process", local.0, local.1, local.2
    );
    println!("  (microservices_connector's Python listener: about 575 calls/s, p50 1.6 ms; benchmarks: docs/PERFORMANCE.md)");
    mem_server.shutdown().await;
    server.shutdown().await;
    println!("\ndemo finished: every result matched microservices_connector's documented output");
    Ok(())
}

async fn sequential(client: &Client, calls: usize) -> Result<(f64, f64, f64), BoxError> {
    let mut lat = Vec::with_capacity(calls);
    let start = Instant::now();
    for _ in 0..calls.max(1) {
        let t = Instant::now();
        let _: String = client
            .call("/helloworld", "Mr. Developer".to_string())
            .await?;
        lat.push(t.elapsed());
    }
    let total = start.elapsed();
    lat.sort_unstable();
    let pct =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e6;
    Ok((lat.len() as f64 / total.as_secs_f64(), pct(0.5), pct(0.99)))
}
