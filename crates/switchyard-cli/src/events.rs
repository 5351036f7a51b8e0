//! `yard events`: the event consumer and propagator.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use switchyard::http::ServerLimits;

use clap::Subcommand;
use switchyard_events::consumer::{self, ConsumerConfig};
use switchyard_events::propagator::{self, PropagatorConfig};
use switchyard_events::validate::Validator;

use crate::BoxError;

#[derive(Subcommand)]
pub(crate) enum EventsCommand {
    /// Accepts events on `POST /event`, validates them and appends each valid one to a
    /// JSON-lines file, answering 200 only once it is on disk.
    Consume {
        /// Port (the original's `PORT`).
        #[arg(long, env = "PORT", default_value_t = 4444)]
        port: u16,
        /// Address to bind: every interface by default, as the original Flask service does
        /// (reachable from other machines); use 127.0.0.1 to keep it local.
        #[arg(long, default_value = "0.0.0.0")]
        host: String,
        /// Output file (the original's `TARGET_FILE_LOCATION`).
        #[arg(
            long,
            env = "TARGET_FILE_LOCATION",
            default_value = "output/events.json"
        )]
        output: PathBuf,
        /// Path of the endpoint.
        #[arg(long, default_value = "/event")]
        path: String,
        /// A JSON Schema for other event shapes (default: the two string fields `event_type` and `event_payload`).
        #[arg(long)]
        schema: Option<PathBuf>,
        /// Also take events from this transport URL (repeatable), e.g. mem://x.
        #[arg(long)]
        from: Vec<String>,
        /// Topic to take events from on `--from` transports.
        #[arg(long, default_value = "events")]
        topic: String,
        /// Largest accepted body in bytes, over HTTP and from `--from` transports alike.
        #[arg(long, default_value_t = consumer::DEFAULT_MAX_BODY)]
        max_body: usize,
        /// Most HTTP connections open at once; more are answered 503 (default: three quarters
        /// of the open-file limit, at most 10,000).
        #[arg(long)]
        max_connections: Option<usize>,
    },
    /// Sends events picked at random from a file, one every interval (or at a rate).
    Propagate {
        /// Where to send: an HTTP endpoint (plain POST) or any transport URL (the original's
        /// `ENDPOINT`).
        #[arg(long, env = "ENDPOINT", default_value = "http://127.0.0.1:4444/event")]
        endpoint: String,
        /// JSON list of events (the original's `INPUT_FILE_LOCATION`; default: the built-in set of eleven events).
        #[arg(long, env = "INPUT_FILE_LOCATION")]
        input: Option<PathBuf>,
        /// Seconds between events (the original's `WAIT_SECONDS`; fractions allowed).
        #[arg(long, env = "WAIT_SECONDS", default_value_t = 5.0)]
        interval: f64,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Events per second, up to 64 in flight (load mode; overrides the interval).
        #[arg(long)]
        rate: Option<f64>,
        /// Topic for transport URLs.
        #[arg(long, default_value = "events")]
        topic: String,
        /// Do not print each response.
        #[arg(long)]
        quiet: bool,
    },
    /// Runs both on loopback at once (the original's `make services`) for COUNT events.
    Demo {
        /// Events to send.
        #[arg(long, default_value_t = 11)]
        count: u64,
        /// Seconds between events.
        #[arg(long, default_value_t = 0.2)]
        interval: f64,
        /// Output file.
        #[arg(long, default_value = "output/events.json")]
        output: PathBuf,
    },
}

fn printer() -> Arc<dyn Fn(&str) + Send + Sync> {
    Arc::new(|line: &str| println!("{}", line.trim_end()))
}

pub(crate) async fn run(cmd: EventsCommand) -> Result<(), BoxError> {
    match cmd {
        EventsCommand::Consume {
            port,
            host,
            output,
            path,
            schema,
            from,
            topic,
            max_body,
            max_connections,
        } => {
            let validator = match schema {
                Some(p) => Validator::from_schema_file(&p)?,
                None => Validator::Seed002,
            };
            let config = ConsumerConfig {
                listen: format!("{host}:{port}"),
                path,
                output: output.clone(),
                max_body,
                validator,
                limits: match max_connections {
                    Some(n) => ServerLimits::default().max_connections(n),
                    None => ServerLimits::default(),
                },
            };
            let running = consumer::start(config, &from, &topic).await?;
            println!(
                "event consumer on http://{} writing {}",
                running.addr,
                output.display()
            );
            switchyard_cli::shutdown_signal().await?;
            running.shutdown().await;
            Ok(())
        }
        EventsCommand::Propagate {
            endpoint,
            input,
            interval,
            count,
            rate,
            topic,
            quiet,
        } => {
            let config = PropagatorConfig {
                endpoint,
                input,
                interval: Duration::from_secs_f64(interval.max(0.0)),
                count,
                rate,
                topic,
                print_responses: !quiet,
                ..PropagatorConfig::default()
            };
            let summary = propagator::run(config, printer()).await?;
            eprintln!("{summary}");
            Ok(())
        }
        EventsCommand::Demo {
            count,
            interval,
            output,
        } => {
            let running = consumer::start(
                ConsumerConfig {
                    listen: "127.0.0.1:0".into(),
                    output: output.clone(),
                    ..ConsumerConfig::default()
                },
                &[],
                "events",
            )
            .await?;
            println!(
                "consumer on http://{}/event writing {}; propagating {count} events",
                running.addr,
                output.display()
            );
            let summary = propagator::run(
                PropagatorConfig {
                    endpoint: format!("http://{}/event", running.addr),
                    interval: Duration::from_secs_f64(interval.max(0.0)),
                    count: Some(count),
                    ..PropagatorConfig::default()
                },
                printer(),
            )
            .await?;
            running.shutdown().await;
            println!("{summary}");
            Ok(())
        }
    }
}
