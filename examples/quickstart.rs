//! microservices_connector's quickstart: app1 listens, app2 sends, in one program.
//!
//! `cargo run --example quickstart` runs in process; point it anywhere else with
//! `SWITCHYARD_URL=http://127.0.0.1:5000 cargo run --example quickstart` — the service code
//! does not change.

use switchyard::{rpc, Client, Config, Service};

async fn helloworld(name: String) -> String {
    format!("Welcome {name}")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load()?;
    let transport = switchyard::connect(config.url_or("mem://quickstart"))?;

    // app1: the listener.
    let service = Service::new("app1").route("/helloworld", rpc(helloworld));
    let server = switchyard::serve(&transport, service).await?;

    // app2: the sender, on whatever address the listener actually got.
    let friend = Client::new(switchyard::connect(server.url())?).service("app1");
    let message: String = friend
        .call("/helloworld", "Mr. Developer".to_string())
        .await?;
    println!("{message}");

    server.shutdown().await;
    Ok(())
}
