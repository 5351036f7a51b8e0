//! Seed 001's switch: the same service and the same caller on every transport compiled in,
//! chosen only by URL.
//!
//! `cargo run --example switch_transport` (or pass URLs: `... -- mem://a http://127.0.0.1:0`)

use switchyard::{rpc, Client, Service};

async fn shout(text: String) -> String {
    text.to_uppercase()
}

fn service() -> Service {
    Service::new("shouter").route("/shout", rpc(shout).params(["text"]))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut urls: Vec<String> = std::env::args().skip(1).collect();
    if urls.is_empty() {
        urls = vec!["mem://switch".into(), "http://127.0.0.1:0".into()];
    }
    for url in urls {
        let server = switchyard::serve(&switchyard::connect(&url)?, service()).await?;
        let client = Client::new(switchyard::connect(server.url())?);
        let reply: String = client
            .request("/shout")
            .kwarg("text", "same code")
            .send()
            .await?;
        println!("{:<8} {reply}", client.transport().name());
        server.shutdown().await;
    }
    Ok(())
}
