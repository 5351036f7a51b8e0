//! Two versions of one service found through a registry, and a caller whose traffic is shifted
//! from one to the other and rolled back by changing the service's version route, printing the
//! split each time. No broker: the instances serve over HTTP on loopback, the registry is in
//! this process (`mem://`), or any registry URL given (`file:///tmp/reg`, `redis://…`).
//!
//! `cargo run -p switchyard-examples --example discovery [-- REGISTRY_URL]`

use std::collections::BTreeMap;
use std::time::Duration;

use switchyard::registry::{Instance, Registration, VersionRoute};
use switchyard::{rpc, Client, Service};

const CALLS: usize = 1_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "mem://discovery-example".into());
    let registry = switchyard::registry::connect(&url)?;

    // Two versions of `books`, each on an HTTP port of its own, registered as they serve.
    let mut running = Vec::new();
    for version in ["1.4.0", "2.0.0"] {
        let v = version.to_string();
        let service = Service::new("books").version(version).route(
            "/version",
            rpc(move || {
                let v = v.clone();
                async move { v }
            }),
        );
        let served =
            switchyard::serve(&switchyard::connect("http://127.0.0.1:0")?, service).await?;
        let instance = Instance::new(
            "books",
            format!("books-{version}"),
            [served.url().to_string()],
        )
        .with_version(version);
        let registration =
            Registration::start(registry.clone(), instance, Duration::from_secs(5)).await?;
        running.push((served, registration));
    }

    let client = Client::new(switchyard::discover(registry.clone())).service("books");
    let key = VersionRoute::key("books");
    for (label, old, new) in [
        ("all on 1.x", 100, 0),
        ("canary: 10 % on 2.x", 90, 10),
        ("half and half", 50, 50),
        ("all on 2.x", 0, 100),
        ("rollback: all on 1.x", 100, 0),
    ] {
        let route = format!(
            r#"{{"split": [{{"version": "^1", "weight": {old}}}, {{"version": "^2", "weight": {new}}}]}}"#
        );
        let revision = registry.config_get(&key).await?.map(|c| c.revision);
        registry.config_set(&key, &route, revision).await?;
        // Every caller follows the route within a second (it looks every 100 ms).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut split = BTreeMap::<String, usize>::new();
        for _ in 0..CALLS {
            let version: String = client.call("/version", ()).await?;
            *split.entry(version).or_default() += 1;
        }
        let shares: Vec<String> = ["1.4.0", "2.0.0"]
            .iter()
            .map(|v| {
                format!(
                    "{v} {:>5.1} %",
                    100.0 * *split.get(*v).unwrap_or(&0) as f64 / CALLS as f64
                )
            })
            .collect();
        println!(
            "{label:<22} route {old:>3}/{new:<3} → {}",
            shares.join(", ")
        );
    }

    for (served, registration) in running {
        registration.stop().await?;
        served.shutdown().await;
    }
    Ok(())
}
