//! `yard`: run the demo, serve the example listener, and call, publish to or subscribe to any
//! service on any transport URL — a curl for services.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use futures::StreamExt;
use serde_json::{json, Value};
use switchyard::policy::CallPolicy;
use switchyard::transport::{ConnectRetry, SubscribeOptions};
use switchyard::{Client, Codec};
use switchyard_cli::{echo, tutorial};

mod demo;
mod dlq;
mod events;
mod logs;

#[derive(Parser)]
#[command(
    name = "yard",
    version,
    about = "switchyard: typed RPC and events between services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written to standard error: `text` for a person, `json` (one object a
    /// line: time, level, target, message, fields, the span a line was logged in, and the
    /// trace_id and span_id of the call or event being handled) for a log collector.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SWITCHYARD_LOG_FORMAT")]
    log_format: LogFormat,
    /// Records metrics and serves them at http://ADDR/metrics (Prometheus' format), with
    /// /healthz and /readyz, for as long as the command runs.
    #[arg(long, global = true, value_name = "ADDR", env = "SWITCHYARD_METRICS")]
    metrics: Option<String>,
    /// Retries, with backoff (200 ms doubling up to 5 s), when the broker is unreachable at
    /// start-up; 0 fails at once with the unreachable URL.
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_CONNECT_RETRIES",
        default_value_t = 0
    )]
    connect_retries: u32,
    /// Service discovery: the registry that `serve` registers in and `services` lists
    /// (`file://DIR` shared by local processes, `mem://NAME` in process, `etcd://HOST:PORT/NS`,
    /// `zk://HOST:PORT/NS`, `redis://HOST:PORT?ns=NS`, `nats://HOST:PORT/NS`).
    #[arg(long, global = true, value_name = "URL", env = "SWITCHYARD_REGISTRY")]
    registry: Option<String>,
    /// How long a registration lasts unless renewed (it is renewed every third of it): an
    /// instance killed without deregistering disappears within this.
    #[arg(long, global = true, value_name = "MS", default_value_t = 10_000)]
    registry_ttl_ms: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Starts the example listener and a sender on loopback and runs microservices_connector's
    /// quickstart and typed examples, printing results and timings. Needs no broker.
    Demo {
        /// Sequential calls for the timing at the end.
        #[arg(long, default_value_t = 2000)]
        calls: usize,
    },
    /// Serves a built-in service until SIGINT.
    Serve {
        /// Which service: `example` (the listener of microservices_connector's tutorial, named
        /// `example`) or `echo` (a test service: `/whoami`, `/echo ARGS…`, `/sleep MS`).
        #[arg(value_parser = ["example", "echo"])]
        which: String,
        /// The echo service's name: what callers address with `--service`.
        #[arg(long, default_value = "echo")]
        name: String,
        /// The echo service's version.
        #[arg(long)]
        version: Option<String>,
        /// Address to listen on (HTTP and WebSocket on one port).
        #[arg(long, default_value = "127.0.0.1:5000")]
        listen: String,
        /// Serve on this transport URL instead (e.g. mem://x, http://0.0.0.0:8080).
        #[arg(long)]
        url: Option<String>,
        /// Shed load: calls beyond an adaptive limit of calls in flight, found from the
        /// service's latency, are answered 503 (Unavailable) at once instead of queueing.
        #[arg(long)]
        adaptive_limit: bool,
    },
    /// Calls ROUTE on the service at URL and prints the reply as JSON. Each ARG is JSON; text
    /// that is not JSON is sent as a string.
    Call {
        /// Transport URL, e.g. http://127.0.0.1:5000; left out with `--registry`, where the
        /// service is found by its name (`yard --registry URL call --service NAME ROUTE …`).
        url: String,
        /// Route, e.g. /helloworld.
        route: Option<String>,
        /// Positional arguments.
        args: Vec<String>,
        /// Keyword argument KEY=JSON (repeatable).
        #[arg(long = "kw", value_name = "KEY=JSON")]
        kwargs: Vec<String>,
        /// Token for the route.
        #[arg(long)]
        token: Option<String>,
        /// Seconds to wait for the reply.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
        /// The service to call, by name (needed on every transport but HTTP, whose URL is one
        /// service).
        #[arg(long)]
        service: Option<String>,
        /// The call policy (retries, budget, breaker) from this JSON file (see `yard policy`).
        #[arg(long, value_name = "FILE")]
        policy: Option<std::path::PathBuf>,
        /// Only instances whose version meets this semver requirement (`^2`, `=1.4.0`), when
        /// the service is found through `--registry`.
        #[arg(long, value_name = "REQ")]
        version: Option<String>,
    },
    /// Configuration kept in the registry (`--registry URL`): get, set (compare-and-set with
    /// `--expect REV`), watch.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Splits SERVICE's calls among its versions, `REQ=WEIGHT` each (`^1=90 ^2=10`), for
    /// every caller finding it through the registry (`--registry URL`); within a second. A
    /// rollback is the same command with the old split.
    Route {
        /// The service.
        service: String,
        /// Shares: a semver requirement and a weight, `REQ=WEIGHT`.
        #[arg(required = true)]
        split: Vec<String>,
    },
    /// Lists the instances in the registry (`--registry URL`): service, version, id and
    /// addresses, one line each; `--json`: one JSON object per instance per line.
    Services {
        /// Only this service's instances.
        #[arg(long)]
        service: Option<String>,
        /// One JSON object per instance per line.
        #[arg(long)]
        json: bool,
    },
    /// Prints the call policy in force as JSON: the defaults, or FILE's settings over them
    /// (the file a client's `--policy` or `CallPolicy` reads).
    Policy {
        /// A JSON file of call policy settings; fields left out keep their defaults.
        #[arg(long, value_name = "FILE")]
        file: Option<std::path::PathBuf>,
    },
    /// Publishes one event (JSON) on TOPIC: `yard publish URL TOPIC DATA`, or with
    /// `--registry` and no URL, `yard publish TOPIC DATA` to wherever the registry says the
    /// topic's handlers are served.
    Publish {
        /// Transport URL (with `--registry`: the topic).
        url: String,
        /// Topic (with `--registry` and no URL: the event).
        topic: String,
        /// The event as JSON (text that is not JSON is sent as a string).
        data: Option<String>,
        /// Ordering key.
        #[arg(long)]
        key: Option<String>,
        /// Encode as MessagePack instead of JSON.
        #[arg(long)]
        msgpack: bool,
    },
    /// The event consumer (POST /event → a JSON file) and the event propagator.
    Events {
        #[command(subcommand)]
        command: events::EventsCommand,
    },
    /// Relays the events of each TOPIC from FROM_URL to TO_URL until SIGINT or SIGTERM, at
    /// least once: an event is acknowledged on FROM only after TO confirmed it (served as the
    /// service NAME on FROM, its consumer group there); and the calls of each ROUTE of
    /// SERVICE made on FROM, made on TO and answered back.
    Relay {
        /// Where the events are read (an `http://` URL: the relay listens there).
        from: String,
        /// Where they are published again.
        to: String,
        /// A topic to relay (repeatable).
        #[arg(long = "topic")]
        topics: Vec<String>,
        /// The relay's service name, its consumer group on FROM.
        #[arg(long, default_value = switchyard::relay::RELAY_NAME)]
        name: String,
        /// A route of `--service` whose calls on FROM are made on TO and answered back
        /// (repeatable).
        #[arg(long = "route", requires = "service")]
        routes: Vec<String>,
        /// The service whose calls are relayed: callers on FROM address it by this name.
        #[arg(long)]
        service: Option<String>,
    },
    /// The bookshelf: `newbook` and `readbook` (aggregates appending events to the log),
    /// `lastreadbooks` and `listbooks` (views folding the log, served over HTTP), `gateway` (the
    /// API over them, found through the registry), or `demo` (all five on loopback, driven
    /// once). Each registers in `--registry` while it runs (default: a file registry in the
    /// temporary folder) and leaves it on SIGINT or SIGTERM.
    Bookshelf {
        /// Which service.
        #[arg(value_parser = ["newbook", "readbook", "lastreadbooks", "listbooks", "gateway", "demo"])]
        which: String,
        /// The topic read as the log.
        #[arg(long, default_value = "bookshelf")]
        topic: String,
        /// The log: kafka://HOST:PORT (or a bare HOST:PORT), nats://… (JetStream) or
        /// redis://… (Streams).
        #[arg(long, default_value = "kafka://127.0.0.1:9092")]
        broker: String,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        addr: String,
        /// Port to listen on (0: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Name to register under (default: the service's).
        #[arg(long)]
        name: Option<String>,
        /// Instance id to register under.
        #[arg(long)]
        id: Option<String>,
        /// Tags recorded with the registration.
        #[arg(long, num_args = 0..)]
        tags: Vec<String>,
        /// Where views keep snapshots of their state (started from them next time).
        #[arg(long, value_name = "DIR")]
        snapshot: Option<std::path::PathBuf>,
        /// `demo`: serve until SIGINT instead of stopping after the run.
        #[arg(long)]
        serve: bool,
    },
    /// A topic's kept dead letters: list (by cause), show, replay, discard.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// The PostgreSQL transactional outbox.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Prints every event on TOPIC as one JSON line.
    Subscribe {
        /// Transport URL.
        url: String,
        /// Topic.
        topic: String,
        /// Join this consumer group (competing consumers) instead of broadcast.
        #[arg(long)]
        group: Option<String>,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
}

/// The call policy of `file` (JSON, fields left out keep their defaults), or the defaults.
fn read_policy(file: Option<&std::path::Path>) -> Result<CallPolicy, BoxError> {
    let Some(path) = file else {
        return Ok(CallPolicy::default());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the policy file {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        format!(
            "the policy file {} is not a call policy: {e}",
            path.display()
        )
        .into()
    })
}

fn parse_json_arg(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// Publishes the outbox's events, in order, to a transport URL and marks them sent.
    Relay {
        /// PostgreSQL URL of the outbox.
        #[arg(long, env = "DATABASE_URL")]
        database: String,
        /// Outbox table.
        #[arg(long, default_value = "switchyard_outbox")]
        table: String,
        /// Transport URL to publish to.
        #[arg(long)]
        to: String,
        /// Publish what is pending, then exit.
        #[arg(long)]
        once: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Prints KEY's value and revision as JSON (`null` when not set).
    Get {
        /// The key.
        key: String,
    },
    /// Sets KEY to VALUE; with `--expect REV`, only if its revision is still REV (0: not set).
    Set {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// The revision the change is made against.
        #[arg(long, value_name = "REV")]
        expect: Option<u64>,
    },
    /// Prints KEY's value, then each change, one JSON object a line, until interrupted.
    Watch {
        /// The key.
        key: String,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> ExitCode {
    // The event services read a `.env` file; the environment wins over it. Read before the
    // command line is parsed: options take their defaults from the environment.
    if let Err(e) = switchyard_events::dotenv::load(std::path::Path::new(".env")) {
        eprintln!("yard: cannot read .env: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                // lapin logs every returned call (which we report as Unreachable) and every
                // closed connection (which we report or reconnect) at warn/error itself.
                "warn,lapin=off".into()
            }),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(logs::WithTraceIds(
                tracing_subscriber::fmt::format()
                    .json()
                    .with_current_span(true),
            ))
            .init(),
        // Colour for a person at a terminal; none in a file or a pipe (`NO_COLOR` too).
        LogFormat::Text => logs
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none(),
            )
            .init(),
    }
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("yard: {e}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The registry named by `--registry` (or `SWITCHYARD_REGISTRY`), which `command` needs.
fn registry_of(
    url: Option<&str>,
    command: &str,
) -> Result<std::sync::Arc<dyn switchyard::registry::Registry>, BoxError> {
    let Some(url) = url else {
        return Err(format!("yard {command} needs --registry URL (or SWITCHYARD_REGISTRY)").into());
    };
    Ok(switchyard::registry::connect(url)?)
}

async fn run(cli: Cli) -> Result<(), BoxError> {
    let retry = ConnectRetry::attempts(cli.connect_retries.saturating_add(1));
    // A transport whose broker answered (after the retries asked for).
    let open = |url: String| {
        let retry = retry.clone();
        async move { switchyard::connect_ready(&url, &retry).await }
    };
    // Spans exported with OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set; flushed when this
    // guard drops, after the command has drained.
    let service_name = match &cli.command {
        Command::Serve { which, name, .. } if which == "echo" => name.clone(),
        Command::Serve { .. } => "example".to_string(),
        _ => "yard".to_string(),
    };
    let _tracing = switchyard::otlp::init_from_env(&service_name)?;
    // Installed before anything is served: services and clients make their metric handles
    // when they start.
    let _metrics = match &cli.metrics {
        Some(addr) => {
            switchyard::observe::install_prometheus()?;
            let transport = switchyard::connect(&format!("http://{addr}"))?;
            Some(switchyard::serve(&transport, switchyard::Service::new("yard")).await?)
        }
        None => None,
    };
    match cli.command {
        Command::Demo { calls } => demo::run(calls).await,
        Command::Events { command } => events::run(command).await,
        Command::Dlq { command } => dlq::run(command, open).await,
        Command::Bookshelf {
            which,
            topic,
            broker,
            addr,
            port,
            name,
            id,
            tags,
            snapshot,
            serve,
        } => {
            use switchyard_bookshelf as shelf;
            let registry = cli.registry.clone().unwrap_or_else(|| {
                format!(
                    "file://{}",
                    std::env::temp_dir().join("switchyard-registry").display()
                )
            });
            let mut options = shelf::Options::new(broker, registry);
            options.topic = topic;
            options.addr = addr;
            options.port = port;
            options.name = name;
            options.id = id;
            options.tags = tags;
            options.snapshot_dir = snapshot;
            options.registry_ttl = std::time::Duration::from_millis(cli.registry_ttl_ms);
            let Some(which) = shelf::Which::from_name(&which) else {
                let keep = serve.then(|| {
                    Box::pin(async {
                        let _ = switchyard_cli::shutdown_signal().await;
                    })
                        as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
                });
                return Ok(shelf::demo(options, keep).await?);
            };
            let running = shelf::start(which, options).await?;
            eprintln!("{} serving at {}", which.name(), running.url());
            switchyard_cli::shutdown_signal().await?;
            running.stop().await?;
            Ok(())
        }
        Command::Relay {
            from,
            to,
            topics,
            name,
            routes,
            service,
        } => {
            if topics.is_empty() && routes.is_empty() {
                return Err("yard relay needs a --topic or a --route to relay".into());
            }
            let (from, to) = (open(from).await?, open(to).await?);
            let mut servers = Vec::new();
            if !topics.is_empty() {
                let relay = switchyard::relay::relay(&name, to.clone(), &topics);
                servers.push(switchyard::serve(&from, relay).await?);
            }
            if let Some(service) = &service {
                let relay = switchyard::relay::calls(service, to.clone(), &routes);
                servers.push(switchyard::serve(&from, relay).await?);
            }
            let what: Vec<String> = topics
                .iter()
                .cloned()
                .chain(
                    routes
                        .iter()
                        .map(|r| format!("{}{r}", service.as_deref().unwrap_or(""))),
                )
                .collect();
            println!(
                "relaying {} from {} to {}",
                what.join(", "),
                servers
                    .first()
                    .map(|s| s.url().to_string())
                    .unwrap_or_default(),
                to.url()
            );
            use std::io::Write as _;
            std::io::stdout().flush()?;
            switchyard_cli::shutdown_signal().await?;
            for server in servers {
                server.shutdown().await;
            }
            Ok(())
        }
        Command::Outbox {
            command:
                OutboxCommand::Relay {
                    database,
                    table,
                    to,
                    once,
                },
        } => {
            let outbox = switchyard::store::outbox::PgOutbox::connect(&database, &table).await?;
            let transport = open(to.clone()).await?;
            if once {
                let mut sent = 0;
                loop {
                    match outbox.relay_once(transport.as_ref(), 256).await? {
                        0 => break,
                        n => sent += n,
                    }
                }
                println!("relayed {sent} events");
                return Ok(());
            }
            let relay = outbox.relay(transport.clone()).await?;
            println!("relaying {table} to {}", transport.url());
            switchyard_cli::shutdown_signal().await?;
            let stats = relay.stop().await;
            println!("relayed {} events", stats.sent);
            Ok(())
        }
        Command::Serve {
            which,
            name,
            version,
            listen,
            url,
            adaptive_limit,
        } => {
            let url = url.unwrap_or_else(|| format!("http://{listen}"));
            let transport = open(url).await?;
            let mut service = match which.as_str() {
                "echo" => echo::service(&name, version.as_deref()),
                _ => tutorial::service(),
            };
            if adaptive_limit {
                service = service.adaptive_limit(Default::default());
            }
            let served = service.name().to_string();
            match &cli.registry {
                // Registered once it serves (and its hard dependencies are there); removed
                // before it stops.
                Some(url) => {
                    let registry = switchyard::registry::connect(url)?;
                    let ttl = Duration::from_millis(cli.registry_ttl_ms);
                    let registered =
                        switchyard::registry::serve(transport, service, registry, ttl).await?;
                    println!("serving {served} on {}", registered.url());
                    switchyard_cli::shutdown_signal().await?;
                    if let Err(e) = registered.shutdown().await {
                        tracing::warn!(target: "switchyard", error = %e, "could not deregister");
                    }
                }
                None => {
                    let handle = switchyard::serve(&transport, service).await?;
                    println!("serving {served} on {}", handle.url());
                    switchyard_cli::shutdown_signal().await?;
                    handle.shutdown().await;
                }
            }
            Ok(())
        }
        Command::Call {
            url,
            route,
            args,
            kwargs,
            token,
            timeout,
            service,
            policy,
            version,
        } => {
            let policy = read_policy(policy.as_deref())?;
            // With a registry and no transport URL, the first word is the route.
            let (transport, route, args) = match (&cli.registry, route) {
                (Some(registry), route) if url.starts_with('/') => {
                    let registry = switchyard::registry::connect(registry)?;
                    let args = route.into_iter().chain(args).collect::<Vec<_>>();
                    (switchyard::discover(registry), url, args)
                }
                (_, Some(route)) => (open(url).await?, route, args),
                (_, None) => return Err("yard call URL ROUTE [ARGS…]: no ROUTE given".into()),
            };
            let needs_service = transport.name() != "http" && transport.requester().is_some();
            let mut client = Client::new(transport).policy(policy);
            if let Some(requirement) = version {
                client = client.version(requirement);
            }
            match service {
                Some(name) => client = client.service(name),
                None if needs_service => {
                    return Err(format!(
                        "name the service to call with --service NAME: over {} calls go to a service by name",
                        client.transport().url()
                    )
                    .into())
                }
                None => {}
            }
            let mut call = client
                .request(&route)
                .args(args.iter().map(|a| parse_json_arg(a)))
                .timeout(Duration::from_secs_f64(timeout));
            for kw in &kwargs {
                let (k, v) = kw
                    .split_once('=')
                    .ok_or_else(|| format!("--kw takes KEY=JSON, got {kw:?}"))?;
                call = call.kwarg(k, parse_json_arg(v));
            }
            if let Some(t) = token {
                call = call.token(t);
            }
            let values = call.send_values().await?;
            let out = match values.len() {
                1 => values.into_iter().next().unwrap_or(Value::Null),
                _ => Value::Array(values),
            };
            println!("{out}");
            Ok(())
        }
        Command::Config { command } => {
            let registry = registry_of(cli.registry.as_deref(), "config")?;
            match command {
                ConfigCommand::Get { key } => {
                    println!(
                        "{}",
                        serde_json::to_string(&registry.config_get(&key).await?)?
                    );
                }
                ConfigCommand::Set { key, value, expect } => {
                    let expected = match expect {
                        Some(0) => None,
                        Some(rev) => Some(rev),
                        // No revision given: against the one there now.
                        None => registry.config_get(&key).await?.map(|c| c.revision),
                    };
                    check_setting(&key, &value)?;
                    let revision = registry.config_set(&key, &value, expected).await?;
                    println!("{}", json!({"key": key, "revision": revision}));
                }
                ConfigCommand::Watch { key } => {
                    let mut values = registry.config_watch(&key).await?;
                    let stop = switchyard_cli::shutdown_signal();
                    tokio::pin!(stop);
                    loop {
                        tokio::select! {
                            _ = &mut stop => break,
                            v = values.next() => match v {
                                Some(v) => println!("{}", serde_json::to_string(&v?)?),
                                None => break,
                            },
                        }
                    }
                }
            }
            Ok(())
        }
        Command::Route { service, split } => {
            let registry = registry_of(cli.registry.as_deref(), "route")?;
            let split = split
                .iter()
                .map(|s| {
                    let (version, weight) = s
                        .rsplit_once('=')
                        .ok_or_else(|| format!("a share is REQ=WEIGHT, got {s:?}"))?;
                    let weight = weight
                        .parse::<u32>()
                        .map_err(|e| format!("weight of {s:?}: {e}"))?;
                    Ok(json!({"version": version, "weight": weight}))
                })
                .collect::<Result<Vec<_>, String>>()?;
            let value = json!({ "split": split });
            let route: switchyard::registry::VersionRoute = serde_json::from_value(value.clone())?;
            route.check()?;
            let key = switchyard::registry::VersionRoute::key(&service);
            let expected = registry.config_get(&key).await?.map(|c| c.revision);
            let revision = registry
                .config_set(&key, &value.to_string(), expected)
                .await?;
            println!(
                "{}",
                json!({"service": service, "route": value, "revision": revision})
            );
            Ok(())
        }
        Command::Services { service, json } => {
            let registry = registry_of(cli.registry.as_deref(), "services")?;
            for i in registry.list(service.as_deref()).await? {
                if json {
                    println!("{}", serde_json::to_string(&i)?);
                } else {
                    let health = serde_json::to_value(i.health)?;
                    println!(
                        "{} {} {} {} {}",
                        i.service,
                        i.version.as_deref().unwrap_or("-"),
                        i.id,
                        i.addresses.join(","),
                        health.as_str().unwrap_or("-")
                    );
                }
            }
            Ok(())
        }
        Command::Policy { file } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&read_policy(file.as_deref())?)?
            );
            Ok(())
        }
        Command::Publish {
            url,
            topic,
            data,
            key,
            msgpack,
        } => {
            let codec = if msgpack { Codec::MsgPack } else { Codec::Json };
            let (transport, topic, data) = match (&cli.registry, data) {
                (Some(registry), None) if !url.contains("://") => {
                    let registry = switchyard::registry::connect(registry)?;
                    (switchyard::discover(registry), url, topic)
                }
                (_, Some(data)) => (open(url).await?, topic, data),
                (_, None) => return Err("yard publish URL TOPIC DATA: no DATA given".into()),
            };
            let client = Client::new(transport).with_codec(codec);
            let mut env = client.event(&topic, &parse_json_arg(&data))?;
            if let Some(k) = key {
                env.headers
                    .insert(switchyard::message::header::ORDERING_KEY, k);
            }
            let id = env.id.clone();
            client.publish_envelope(env).await?;
            eprintln!("published {id} on {topic}");
            Ok(())
        }
        Command::Subscribe {
            url,
            topic,
            group,
            count,
        } => {
            let transport = open(url).await?;
            let opts = match group {
                Some(g) => SubscribeOptions::group(g),
                None => SubscribeOptions::broadcast(),
            };
            let mut sub = transport.subscribe(&topic, opts).await?;
            eprintln!("subscribed to {topic} on {}", transport.url());
            let mut seen = 0usize;
            let stop = switchyard_cli::shutdown_signal();
            tokio::pin!(stop);
            loop {
                // A signal stops taking deliveries; the one in hand is printed and acked first.
                let next = tokio::select! {
                    _ = &mut stop => break,
                    next = sub.next() => next,
                };
                let Some(delivery) = next else { break };
                let delivery = match delivery {
                    Ok(d) => d,
                    Err(e) => {
                        eprintln!("yard: subscription error (going on): {e}");
                        continue;
                    }
                };
                let env = &delivery.envelope;
                let codec = env
                    .headers
                    .get("content-type")
                    .and_then(Codec::from_content_type);
                let data = codec
                    .and_then(|c| c.decode::<Value>(&env.payload).ok())
                    .unwrap_or_else(|| {
                        Value::String(String::from_utf8_lossy(&env.payload).into_owned())
                    });
                let headers: serde_json::Map<String, Value> = env
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                    .collect();
                println!(
                    "{}",
                    json!({"id": env.id, "topic": env.subject, "headers": headers, "data": data})
                );
                delivery.ack().await?;
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
            Ok(())
        }
    }
}

/// Refuses, before it is written, a value of a kind the framework applies from configuration
/// (`route/<service>`: a version route; `policy/<service>`: a call policy) that it would not
/// apply. Other keys are the user's own, written as given.
fn check_setting(key: &str, value: &str) -> Result<(), String> {
    use switchyard::registry::{check_setting, VersionRoute};
    let checked = if key.starts_with("route/") {
        check_setting::<VersionRoute>(value).map(drop)
    } else if key.starts_with("policy/") {
        check_setting::<switchyard::policy::CallPolicy>(value).map(drop)
    } else {
        Ok(())
    };
    checked.map_err(|why| format!("{key}: not written: {why}"))
}
