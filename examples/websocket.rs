//! WebSocket routes (microservices_connector's minisocket): an echo route, a route with a path parameter, and
//! a push stream of events.
//!
//! `cargo run --example websocket`

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use switchyard::service::WsMessage;
use switchyard::{Client, Service};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let service = Service::new("sockets")
        .ws(
            "/hello",
            |m: WsMessage| async move { format!("ok:{}", m.text) },
        )
        .ws("/user/<name>", |m: WsMessage| async move {
            format!("{} says {}", m.params["name"], m.text)
        })
        .ws_events("/news", Some("news"));
    let server = switchyard::serve(&switchyard::connect("http://127.0.0.1:0")?, service).await?;
    let ws = server.url().replacen("http://", "ws://", 1);

    let (mut hello, _) = tokio_tungstenite::connect_async(format!("{ws}/hello")).await?;
    hello.send(Message::Text("Mr. Developer".into())).await?;
    println!("< {}", hello.next().await.ok_or("closed")??.to_text()?);
    hello.send(Message::Text("exit".into())).await?;

    let (mut user, _) = tokio_tungstenite::connect_async(format!("{ws}/user/ann")).await?;
    user.send(Message::Text("hi".into())).await?;
    println!("< {}", user.next().await.ok_or("closed")??.to_text()?);

    let (mut news, _) = tokio_tungstenite::connect_async(format!("{ws}/news")).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    Client::new(switchyard::connect(server.url())?)
        .publish("news", &serde_json::json!({"headline": "switchyard ships"}))
        .await?;
    println!(
        "pushed < {}",
        news.next().await.ok_or("closed")??.to_text()?
    );

    let (mut nowhere, _) = tokio_tungstenite::connect_async(format!("{ws}/nowhere")).await?;
    println!("< {}", nowhere.next().await.ok_or("closed")??.to_text()?);
    server.shutdown().await;
    Ok(())
}
