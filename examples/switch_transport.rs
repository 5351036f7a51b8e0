//! Switching transports: the same service and the same caller on every transport compiled in,
//! chosen only by URL. Each URL gets one call (where the transport has request/reply) and one
//! event through the service's event handler.
//!
//! `cargo run --example switch_transport` (or pass URLs:
//! `... -- mem://a http://127.0.0.1:0 amqp://127.0.0.1:5672 nats://127.0.0.1:4222
//! redis://127.0.0.1:6379 mqtt://127.0.0.1:1883 kafka://127.0.0.1:9092`)

use std::time::Duration;

use switchyard::{rpc, Client, Envelope, Service};
use tokio::sync::mpsc;

async fn shout(text: String) -> String {
    text.to_uppercase()
}

fn service(heard: mpsc::UnboundedSender<String>) -> Service {
    Service::new("shouter")
        .route("/shout", rpc(shout).params(["text"]))
        .on_event("switch.heard", move |text: String| {
            let heard = heard.clone();
            async move {
                let _ = heard.send(text.to_uppercase());
            }
        })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut urls: Vec<String> = std::env::args().skip(1).collect();
    if urls.is_empty() {
        urls = vec!["mem://switch".into(), "http://127.0.0.1:0".into()];
    }
    for url in urls {
        let (heard_tx, mut heard) = mpsc::unbounded_channel();
        let transport = switchyard::connect(&url)?;
        let server = switchyard::serve(&transport, service(heard_tx)).await?;
        let client = Client::new(switchyard::connect(server.url())?).service("shouter");
        let name = client.transport().name();
        if client.transport().capabilities().request_reply {
            let reply: String = client
                .request("/shout")
                .kwarg("text", "same code")
                .send()
                .await?;
            println!("{name:<8} call  {reply}");
        }
        let event = Envelope::new("switch.heard", serde_json::to_vec("same handler")?);
        client.transport().publish(event).await?;
        let got = tokio::time::timeout(Duration::from_secs(30), heard.recv()).await?;
        println!("{name:<8} event {}", got.unwrap_or_default());
        server.shutdown().await;
    }
    Ok(())
}
