//! `yard dlq`: a topic's kept dead letters — grouped by the fingerprint of their failure,
//! shown, replayed to the topic they came from, or discarded.

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use switchyard::dead_letters::{self, DeadLetters, Filter};
use switchyard::Transport;

use crate::BoxError;

/// How long a read waits for one more dead letter before it takes it that there are none.
const IDLE: Duration = Duration::from_secs(2);

#[derive(Subcommand)]
pub(crate) enum DlqCommand {
    /// One line per cause (fingerprint): how many, error code, first and last failure, the
    /// error. Nothing is settled.
    List {
        #[command(flatten)]
        which: Which,
    },
    /// Each dead letter as one JSON object per line. Nothing is settled.
    Show {
        #[command(flatten)]
        which: Which,
    },
    /// Publishes each dead letter again as its original message (its id, so a consumer with
    /// an inbox handles it once) on its original topic, in the order kept, then settles it.
    Replay {
        #[command(flatten)]
        which: Which,
        /// At most this many a second (`500` or `500/s`); as fast as the broker takes them
        /// when left out.
        #[arg(long)]
        rate: Option<String>,
    },
    /// Settles dead letters for good, after a confirmation (or `--yes`).
    Discard {
        #[command(flatten)]
        which: Which,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

/// The dead letters a command takes.
#[derive(clap::Args)]
pub(crate) struct Which {
    /// Transport URL.
    url: String,
    /// The topic whose dead letters these are (they are kept on TOPIC.dlq).
    topic: String,
    /// Only those with KEY=VALUE: `fingerprint=…`, `code=…`, `error=…` (a part of it);
    /// repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    filter: Vec<String>,
    /// At most this many.
    #[arg(long, default_value_t = 10_000)]
    limit: usize,
}

pub(crate) async fn run(
    command: DlqCommand,
    open: impl AsyncFn(String) -> Result<Arc<dyn Transport>, switchyard::TransportError>,
) -> Result<(), BoxError> {
    let which = match &command {
        DlqCommand::List { which }
        | DlqCommand::Show { which }
        | DlqCommand::Replay { which, .. }
        | DlqCommand::Discard { which, .. } => which,
    };
    let filter = Filter::parse(&which.filter)?;
    let transport = open(which.url.clone()).await?;
    let letters = DeadLetters::new(transport.clone(), &which.topic);
    let mut out = std::io::stdout().lock();
    match command {
        DlqCommand::List { which } => {
            let held = letters.hold(&filter, which.limit, IDLE).await?;
            for f in held.failures() {
                writeln!(
                    out,
                    "{}  {:>6}  {:<12}  {}  {}  {}",
                    f.fingerprint, f.count, f.code, f.first_failed_at, f.last_failed_at, f.error
                )?;
            }
            eprintln!("{} dead letters of {}", held.len(), which.topic);
            held.release().await;
        }
        DlqCommand::Show { which } => {
            let held = letters.hold(&filter, which.limit, IDLE).await?;
            for letter in held.letters() {
                writeln!(out, "{}", dead_letters::to_json(letter))?;
            }
            held.release().await;
        }
        DlqCommand::Replay { which, rate } => {
            let per_second = rate.as_deref().map(parse_rate).transpose()?;
            let done = letters
                .replay(
                    &filter,
                    transport.as_ref(),
                    per_second.unwrap_or(f64::INFINITY),
                    which.limit,
                    IDLE,
                )
                .await?;
            writeln!(out, "{}", serde_json::to_string(&done)?)?;
        }
        DlqCommand::Discard { which, yes } => {
            let held = letters.hold(&filter, which.limit, IDLE).await?;
            if held.is_empty() {
                eprintln!("no dead letters of {} to discard", which.topic);
                return Ok(());
            }
            let confirmed = yes || {
                eprint!(
                    "discard {} dead letters of {} for good? [y/N] ",
                    held.len(),
                    which.topic
                );
                let mut answer = String::new();
                std::io::stdin().lock().read_line(&mut answer)?;
                matches!(answer.trim(), "y" | "Y" | "yes")
            };
            if confirmed {
                let n = held.discard().await?;
                writeln!(out, "{n} discarded")?;
            } else {
                held.release().await;
                return Err("nothing discarded".into());
            }
        }
    }
    Ok(())
}

/// `500` or `500/s`.
fn parse_rate(text: &str) -> Result<f64, BoxError> {
    let number = text.strip_suffix("/s").unwrap_or(text);
    match number.parse::<f64>() {
        Ok(n) if n > 0.0 && n.is_finite() => Ok(n),
        _ => Err(format!("--rate {text:?}: a number a second, like 500 or 500/s").into()),
    }
}
