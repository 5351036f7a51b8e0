//! In-process calls for `valgrind --tool=callgrind`, whose instruction counts repeat from run
//! to run where criterion's times on a shared machine do not: N calls of one shape, with the
//! direct async call as the baseline.
//!
//! `cargo bench -p switchyard-benches --bench calls --no-run`, then
//! `valgrind --tool=callgrind target/release/deps/calls-* 20000 MODE` with MODE one of
//! `direct` (the baseline), `plain` (`Client::call` over `mem://`), `layer` (one empty
//! service layer), `client` (one empty client layer), `metrics` (`plain` with the Prometheus
//! recorder installed). Without valgrind it prints the time a call took. Figures go to
//! docs/PERFORMANCE.md.

use std::hint::black_box;
use std::time::Instant;

use switchyard::{rpc, Client, Service};
use tower::layer::util::Identity;

async fn hello(name: String) -> String {
    format!("Welcome {name}")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let calls: u32 = args
        .next()
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(200_000);
    let mode = args.next().unwrap_or_else(|| "plain".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        if mode == "metrics" {
            switchyard::observe::install_prometheus()?;
        }
        let transport = switchyard::connect("mem://calls")?;
        let service = Service::new("a").route("/hello", rpc(hello));
        let service = match mode.as_str() {
            "layer" => service.layer(Identity::new()),
            _ => service,
        };
        let _served = switchyard::serve(&transport, service).await?;
        let client = Client::new(transport).service("a");
        let client = match mode.as_str() {
            "client" => client.layer(Identity::new()),
            _ => client,
        };
        let started = Instant::now();
        for _ in 0..calls {
            let reply = if mode == "direct" {
                hello(black_box("Mr. Developer".to_string())).await
            } else {
                client
                    .call("/hello", black_box("Mr. Developer".to_string()))
                    .await?
            };
            black_box(reply);
        }
        println!("{mode}: {:?} a call", started.elapsed() / calls);
        Ok(())
    })
}
