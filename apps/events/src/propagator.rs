//! The event propagator: sends events picked at random from a file to an HTTP endpoint (the
//! original's plain `POST`) or to any switchyard transport URL.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Semaphore;

/// How the propagator runs.
#[derive(Debug, Clone)]
pub struct PropagatorConfig {
    /// `http(s)://…` for a plain `POST` of the event (default
    /// `http://127.0.0.1:4444/event`), or any transport URL to publish on `topic`.
    pub endpoint: String,
    /// A JSON file holding a list of events; `None` uses the built-in dataset.
    pub input: Option<PathBuf>,
    /// Pause between events (default 5 s), when no rate is given.
    pub interval: Duration,
    /// Events to send; `None` runs until interrupted.
    pub count: Option<u64>,
    /// Events per second, with up to 64 in flight (a load test); overrides `interval`.
    pub rate: Option<f64>,
    /// Attempts per event on connection errors or 5xx answers (backoff doubles from 100 ms).
    pub attempts: u32,
    /// Topic for transport URLs.
    pub topic: String,
    /// Print each response (as the original did).
    pub print_responses: bool,
}

impl Default for PropagatorConfig {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:4444/event".into(),
            input: None,
            interval: Duration::from_secs(5),
            count: None,
            rate: None,
            attempts: 5,
            topic: "events".into(),
            print_responses: true,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Events sent (each counted once, however many attempts it took).
    pub sent: u64,
    /// Answered 2xx (or published, for a transport URL).
    pub accepted: u64,
    /// Answered 4xx.
    pub rejected: u64,
    /// Not delivered after every attempt.
    pub failed: u64,
    /// Median latency of answered events.
    pub p50: Duration,
    /// 99th percentile latency of answered events.
    pub p99: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {}, accepted {}, rejected {}, failed {}; latency p50 {:.2} ms, p99 {:.2} ms",
            self.sent,
            self.accepted,
            self.rejected,
            self.failed,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3
        )
    }
}

/// The input could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PropagateError {
    /// Unreadable input.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not a non-empty JSON list.
    #[error("{path} must hold a non-empty JSON list of events: {reason}")]
    Input {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The endpoint URL names no usable transport.
    #[error(transparent)]
    Transport(#[from] switchyard::TransportError),
}

/// Loads the events to send.
pub fn load_events(input: Option<&PathBuf>) -> Result<Vec<Value>, PropagateError> {
    let (path, text) = match input {
        Some(p) => (
            p.display().to_string(),
            std::fs::read_to_string(p).map_err(|source| PropagateError::Read {
                path: p.display().to_string(),
                source,
            })?,
        ),
        None => (
            "<built-in dataset>".into(),
            crate::DEFAULT_EVENTS.to_string(),
        ),
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(v)) if !v.is_empty() => Ok(v),
        Ok(_) => Err(PropagateError::Input {
            path,
            reason: "not a non-empty list".into(),
        }),
        Err(e) => Err(PropagateError::Input {
            path,
            reason: e.to_string(),
        }),
    }
}

enum Target {
    Http(reqwest::Client, String),
    Transport(switchyard::Client, String),
}

enum Sent {
    Answered { status: u16, body: String },
    Published,
}

impl Target {
    async fn send(&self, event: &Value) -> Result<Sent, String> {
        match self {
            Target::Http(http, url) => {
                let body = serde_json::to_vec(event).map_err(|e| e.to_string())?;
                let r = http
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| format!("{e}"))?;
                let status = r.status().as_u16();
                let body = r.text().await.map_err(|e| e.to_string())?;
                Ok(Sent::Answered { status, body })
            }
            Target::Transport(client, topic) => client
                .publish(topic, event)
                .await
                .map(|()| Sent::Published)
                .map_err(|e| e.to_string()),
        }
    }
}

#[derive(Default)]
struct Tally {
    summary: Summary,
    latencies: Vec<Duration>,
}

/// Sends events until `count` is reached (or forever), printing each response through `out`,
/// and returns the summary. Connection errors are reported on stderr and retried.
pub async fn run(
    config: PropagatorConfig,
    out: Arc<dyn Fn(&str) + Send + Sync>,
) -> Result<Summary, PropagateError> {
    let events = Arc::new(load_events(config.input.as_ref())?);
    let target = Arc::new(
        if config.endpoint.starts_with("http://") || config.endpoint.starts_with("https://") {
            let http = reqwest::Client::builder()
                .tcp_nodelay(true)
                .timeout(Duration::from_secs(30))
                .build()
                .map_err(|e| {
                    PropagateError::Transport(switchyard::TransportError::Other(Box::new(e)))
                })?;
            Target::Http(http, config.endpoint.clone())
        } else {
            Target::Transport(
                switchyard::Client::new(switchyard::connect(&config.endpoint)?),
                config.topic.clone(),
            )
        },
    );
    let tally = Arc::new(Mutex::new(Tally::default()));
    let progress = Progress::new(config.count);
    let in_flight = Arc::new(Semaphore::new(if config.rate.is_some() { 64 } else { 1 }));
    let pause = match config.rate {
        Some(r) if r > 0.0 => Duration::from_secs_f64(1.0 / r),
        _ => config.interval,
    };
    let mut ticker = tokio::time::interval(pause.max(Duration::from_micros(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0u64;
    loop {
        if config.count.is_some_and(|c| n >= c) {
            break;
        }
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        n += 1;
        let event = events[fastrand::usize(..events.len())].clone();
        let (target, tally, out, progress) =
            (target.clone(), tally.clone(), out.clone(), progress.clone());
        let (attempts, print) = (config.attempts.max(1), config.print_responses);
        let job = async move {
            let outcome = send_with_retries(&target, &event, attempts).await;
            let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
            t.summary.sent += 1;
            match outcome {
                Ok((Sent::Answered { status, body }, took)) => {
                    t.latencies.push(took);
                    if (200..300).contains(&status) {
                        t.summary.accepted += 1;
                    } else if (400..500).contains(&status) {
                        t.summary.rejected += 1;
                    } else {
                        t.summary.failed += 1;
                    }
                    if print {
                        out(&body);
                    }
                }
                Ok((Sent::Published, took)) => {
                    t.latencies.push(took);
                    t.summary.accepted += 1;
                    if print {
                        out(&format!("published {event}"));
                    }
                }
                Err(e) => {
                    t.summary.failed += 1;
                    eprintln!("event not delivered after {attempts} attempts: {e}");
                }
            }
            progress.tick(t.summary.sent);
            drop(permit);
        };
        if config.rate.is_some() {
            tasks.spawn(job);
        } else {
            job.await;
        }
    }
    while tasks.join_next().await.is_some() {}
    progress.finish();
    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
    let mut lat = std::mem::take(&mut t.latencies);
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    t.summary.p50 = pct(0.5);
    t.summary.p99 = pct(0.99);
    Ok(t.summary.clone())
}

async fn send_with_retries(
    target: &Target,
    event: &Value,
    attempts: u32,
) -> Result<(Sent, Duration), String> {
    let mut backoff = Duration::from_millis(100);
    let mut last = String::new();
    for attempt in 1..=attempts {
        let start = Instant::now();
        match target.send(event).await {
            // A 5xx (the consumer could not store it) is worth another try, like a refused
            // connection; a 4xx is the event's own fault and is final.
            Ok(Sent::Answered { status, body }) if status >= 500 && attempt < attempts => {
                last = format!("HTTP {status}: {body}");
            }
            Ok(s) => return Ok((s, start.elapsed())),
            Err(e) => last = e,
        }
        eprintln!("attempt {attempt} failed: {last}; retrying in {backoff:?}");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    Err(last)
}

/// A progress bar on stderr, drawn only on a terminal and only when the count is known.
#[derive(Clone)]
struct Progress(Option<u64>);

impl Progress {
    fn new(count: Option<u64>) -> Self {
        Self(count.filter(|_| std::io::stderr().is_terminal()))
    }
    fn tick(&self, done: u64) {
        if let Some(total) = self.0 {
            let width = 30;
            let filled = (done * width / total.max(1)) as usize;
            let mut e = std::io::stderr();
            let _ = write!(
                e,
                "\r[{}{}] {done}/{total}",
                "#".repeat(filled),
                " ".repeat(width as usize - filled.min(width as usize))
            );
            let _ = e.flush();
        }
    }
    fn finish(&self) {
        if self.0.is_some() {
            eprintln!();
        }
    }
}
