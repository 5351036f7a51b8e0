//! The event consumer: `POST /event` over HTTP, and optionally events from any switchyard
//! transport, validated and made durable before they are acknowledged.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::Value;
use switchyard::http::ServerLimits;
use switchyard::transport::ServeHandle;
use switchyard::{HandlerError, Service, TransportError};
use tokio::sync::oneshot;

use crate::pyfmt;
use crate::store::{EventLog, StoreError};
use crate::validate::{Rejection, Validator};

/// Default body limit: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// How the consumer runs.
#[derive(Debug)]
pub struct ConsumerConfig {
    /// Address to listen on (default `0.0.0.0:4444`, like the original).
    pub listen: String,
    /// Path of the event endpoint (default `/event`).
    pub path: String,
    /// The JSON-lines output file (default `output/events.json`).
    pub output: PathBuf,
    /// Largest accepted body.
    pub max_body: usize,
    /// The schema.
    pub validator: Validator,
    /// Limits on the endpoint's connections.
    pub limits: ServerLimits,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:4444".into(),
            path: "/event".into(),
            output: PathBuf::from("output/events.json"),
            max_body: DEFAULT_MAX_BODY,
            validator: Validator::Seed002,
            limits: ServerLimits::default(),
        }
    }
}

struct Shared {
    validator: Validator,
    log: EventLog,
    max_body: usize,
}

/// The outcome of one event, shared by the HTTP endpoint and the broker consumer.
enum Outcome {
    Stored(String),
    Rejected(Rejection),
    NotStored(StoreError),
}

impl Shared {
    async fn take(&self, body: &[u8]) -> Outcome {
        match self.validator.check(body) {
            Ok(accepted) => match self.log.append(accepted.line.clone()).await {
                Ok(()) => Outcome::Stored(accepted.line),
                Err(e) => {
                    tracing::error!(target: "switchyard::events", error = %e, "event not stored");
                    Outcome::NotStored(e)
                }
            },
            Err(rejection) => {
                tracing::error!(target: "switchyard::events", "Bad request was sent with {rejection}");
                Outcome::Rejected(rejection)
            }
        }
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn accept(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let limit = shared.max_body;
    let too_large = || {
        json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            pyfmt::error_body(&format!("Request body exceeds the limit of {limit} bytes")),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return too_large();
    }
    let body = match to_bytes(req.into_body(), limit).await {
        Ok(body) => body,
        Err(e) => {
            return match switchyard::http::listen::body_timeout(&e) {
                Some(t) => json_response(
                    StatusCode::REQUEST_TIMEOUT,
                    pyfmt::error_body(&t.to_string()),
                ),
                None => too_large(),
            }
        }
    };
    match shared.take(&body).await {
        // Flask's jsonify: compact, sorted keys, a trailing newline.
        Outcome::Stored(line) => json_response(StatusCode::OK, format!("{line}\n")),
        Outcome::Rejected(r) => json_response(StatusCode::BAD_REQUEST, r.body()),
        Outcome::NotStored(e) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            pyfmt::error_body(&format!("Storage error - {e}")),
        ),
    }
}

async fn method_not_allowed() -> Response {
    let mut r = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        pyfmt::error_body("The method is not allowed for the requested URL."),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    r
}

async fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        pyfmt::error_body("The requested URL was not found on the server."),
    )
}

/// A running consumer.
#[derive(Debug)]
pub struct RunningConsumer {
    /// The address actually bound.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    brokers: Vec<ServeHandle>,
    shared: Arc<SharedHandle>,
}

/// What a running consumer shares with its broker subscriptions.
#[derive(Debug)]
struct SharedHandle {
    log: EventLog,
}

impl RunningConsumer {
    /// The output file.
    pub fn output(&self) -> &std::path::Path {
        self.shared.log.path()
    }

    /// Stops taking events and waits for those in flight to be stored and answered.
    pub async fn shutdown(mut self) {
        for b in self.brokers.drain(..) {
            b.shutdown().await;
        }
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Runs until the process is interrupted.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// The consumer could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The address is taken or invalid.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// A `--from` transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Starts the HTTP endpoint (and a consumer on each of `from`, a transport URL taking events
/// on `topic`). An output file that cannot be opened does not stop it: every event is then
/// answered 503 until the file can be written.
pub async fn start(
    config: ConsumerConfig,
    from: &[String],
    topic: &str,
) -> Result<RunningConsumer, StartError> {
    let (log, opened) = EventLog::open(&config.output);
    match opened {
        Ok(o) if o.repaired_bytes > 0 => tracing::warn!(
            target: "switchyard::events",
            "repaired {}: cut off a torn last line of {} bytes; {} complete events kept",
            config.output.display(), o.repaired_bytes, o.lines
        ),
        Ok(o) => {
            tracing::info!(target: "switchyard::events", "writing to {} ({} events already there)", config.output.display(), o.lines)
        }
        Err(e) => {
            tracing::error!(target: "switchyard::events", "{e}; answering 503 until it can be written")
        }
    }
    let shared = Arc::new(Shared {
        validator: config.validator,
        log: log.clone(),
        max_body: config.max_body,
    });
    let app = Router::new()
        .route(&config.path, post(accept).fallback(method_not_allowed))
        .fallback(not_found)
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen.clone(),
        source,
    })?;
    let (stop, stopped) = oneshot::channel::<()>();
    // The framework's listener: connection cap, header, body and idle timeouts.
    let limits = config.limits;
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        switchyard::http::listen::serve(listener, app, limits, shutdown).await;
    });
    let mut brokers = Vec::new();
    for url in from {
        let transport = switchyard::connect(url)?;
        let s = shared.clone();
        // Invalid events are a BadRequest: the consumer sends them to `<topic>.dlq` with the
        // validation error instead of retrying them; a storage failure is retried.
        // The HTTP endpoint's body limit holds for broker events too: a larger one is
        // dead-lettered unhandled.
        let service = Service::new("switchyard-events")
            .max_body(config.max_body)
            .on_event(topic, move |event: Value| {
                let s = s.clone();
                async move {
                    let bytes = serde_json::to_vec(&event).map_err(HandlerError::from)?;
                    match s.take(&bytes).await {
                        Outcome::Stored(_) => Ok(()),
                        Outcome::Rejected(r) => Err(HandlerError::bad_request(r.to_string())),
                        Outcome::NotStored(e) => Err(HandlerError::unavailable(e.to_string())),
                    }
                }
            });
        brokers.push(switchyard::serve(&transport, service).await?);
    }
    Ok(RunningConsumer {
        addr,
        stop: Some(stop),
        task,
        brokers,
        shared: Arc::new(SharedHandle { log }),
    })
}
