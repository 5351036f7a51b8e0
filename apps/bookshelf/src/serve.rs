//! Starting one bookshelf service: its HTTP server, its log, its registration.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use switchyard::event_log::{RunningView, View, ViewReader};
use switchyard::message::header;
use switchyard::registry::{Instance, Registration, RegistryError};
use switchyard::transport::ConnectRetry;
use switchyard::{Envelope, Transport, TransportError};
use tokio::sync::oneshot;

use crate::event::{Event, BOOK_ADDED, BOOK_READ};
use crate::gateway;
use crate::views::{BookList, LastRead};

/// One of the bookshelf's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The aggregate adding books.
    NewBook,
    /// The aggregate marking books read.
    ReadBook,
    /// The view of the last books read.
    LastReadBooks,
    /// The view of the books added.
    ListBooks,
    /// The API in front of the four, finding them through discovery.
    Gateway,
}

impl Which {
    /// Every service, the gateway last (it waits for the others).
    pub const ALL: [Which; 5] = [
        Which::NewBook,
        Which::ReadBook,
        Which::LastReadBooks,
        Which::ListBooks,
        Which::Gateway,
    ];

    /// The name it registers under by default, and the gateway looks for.
    pub fn name(self) -> &'static str {
        match self {
            Which::NewBook => "newbook",
            Which::ReadBook => "readbook",
            Which::LastReadBooks => "lastreadbooks",
            Which::ListBooks => "listbooks",
            Which::Gateway => "gateway",
        }
    }

    /// The service named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.name() == name)
    }
}

/// How a bookshelf service runs: the seed's flags.
#[derive(Debug, Clone)]
pub struct Options {
    /// The topic read as the log (`bookshelf`).
    pub topic: String,
    /// The log's URL: `kafka://HOST:PORT` (also a bare `HOST:PORT`, as the seed's `--broker`),
    /// `nats://…` (JetStream) or `redis://…` (Streams).
    pub broker: String,
    /// Address to listen on.
    pub addr: String,
    /// Port to listen on (0: any free one).
    pub port: u16,
    /// Name to register under (default: the service's own, e.g. `lastreadbooks`).
    pub name: Option<String>,
    /// Instance id to register under (default: the name and a random suffix).
    pub id: Option<String>,
    /// Tags, recorded in the registration's metadata (`tags`, comma-separated).
    pub tags: Vec<String>,
    /// The registry's URL.
    pub registry: String,
    /// How long a registration lasts unless renewed (a killed service leaves within it).
    pub registry_ttl: Duration,
    /// Where views keep their snapshot (`<dir>/<name>-<topic>.json`); none: replay all.
    pub snapshot_dir: Option<PathBuf>,
    /// How long the gateway waits for the other four to be registered.
    pub wait_for_peers: Duration,
}

impl Options {
    /// The defaults, with the log at `broker` and the registry at `registry`.
    pub fn new(broker: impl Into<String>, registry: impl Into<String>) -> Self {
        Self {
            topic: "bookshelf".into(),
            broker: broker.into(),
            addr: "127.0.0.1".into(),
            port: 0,
            name: None,
            id: None,
            tags: Vec::new(),
            registry: registry.into(),
            registry_ttl: Duration::from_secs(10),
            snapshot_dir: None,
            wait_for_peers: Duration::from_secs(60),
        }
    }

    /// The log's URL, a bare `HOST:PORT` read as Kafka.
    pub fn broker_url(&self) -> String {
        if self.broker.contains("://") {
            self.broker.clone()
        } else {
            format!("kafka://{}", self.broker)
        }
    }
}

/// Why a bookshelf service could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BookshelfError {
    /// The log could not be reached or read.
    #[error("the log at {url}: {source}")]
    Log {
        /// The log's URL.
        url: String,
        /// What the transport said.
        source: TransportError,
    },
    /// The registry refused or could not be reached.
    #[error("the registry: {0}")]
    Registry(#[from] RegistryError),
    /// The HTTP port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The gateway did not find a service it fronts.
    #[error("the gateway found no {service} in {registry} within {waited:?}")]
    PeerMissing {
        /// The service's name.
        service: String,
        /// The registry's URL.
        registry: String,
        /// How long it waited.
        waited: Duration,
    },
}

/// A running bookshelf service.
pub struct Running {
    which: Which,
    url: String,
    registration: Registration,
    shutdown: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    view: Option<Box<dyn StopView>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("which", &self.which)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// A running view of any state, stopped with its snapshot written.
trait StopView: Send {
    fn stop(self: Box<Self>) -> BoxFuture<'static, ()>;
}

impl<S: Send + Sync + 'static> StopView for RunningView<S> {
    fn stop(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(RunningView::stop(*self))
    }
}

impl Running {
    /// Where it answers: `http://ADDR:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Which service it is.
    pub fn which(&self) -> Which {
        self.which
    }

    /// Leaves the registry first (callers stop coming), then stops serving once the requests
    /// in flight are answered, then stops the view (writing its snapshot).
    pub async fn stop(self) -> Result<(), BookshelfError> {
        let removed = self.registration.stop().await;
        let _ = self.shutdown.send(());
        let _ = self.server.await;
        if let Some(view) = self.view {
            view.stop().await;
        }
        removed?;
        Ok(())
    }
}

/// Starts `which` with `options`: the log opened (a view caught up with it), the HTTP server
/// listening, the instance registered. The gateway first waits for the other four.
pub async fn start(which: Which, options: Options) -> Result<Running, BookshelfError> {
    let registry = switchyard::registry::connect(&options.registry)?;
    let name = options
        .name
        .clone()
        .unwrap_or_else(|| which.name().to_string());
    let bind = format!("{}:{}", options.addr, options.port);
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .map_err(|source| BookshelfError::Listen {
            addr: bind.clone(),
            source,
        })?;
    let local = listener
        .local_addr()
        .map_err(|source| BookshelfError::Listen {
            addr: bind.clone(),
            source,
        })?;
    let url = format!("http://{local}");
    let mut view: Option<Box<dyn StopView>> = None;
    let router = match which {
        Which::NewBook | Which::ReadBook => {
            let log = open_log(&options).await?;
            aggregate(which, log, options.topic.clone())
        }
        Which::ListBooks => {
            let running = start_view(&options, &name, BookList::default(), BookList::fold).await?;
            let router = view_router(running.reader(), BookList::answer);
            view = Some(Box::new(running));
            router
        }
        Which::LastReadBooks => {
            let running = start_view(&options, &name, LastRead::default(), LastRead::fold).await?;
            let router = view_router(running.reader(), LastRead::answer);
            view = Some(Box::new(running));
            router
        }
        Which::Gateway => {
            let peers = gateway::Peers::find(registry.clone(), options.wait_for_peers).await?;
            gateway::router(peers)
        }
    };
    let (shutdown, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let serving = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        if let Err(e) = serving.await {
            tracing::error!(target: "bookshelf", error = %e, "HTTP server failed");
        }
    });
    let id = options
        .id
        .clone()
        .unwrap_or_else(|| format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    let mut instance = Instance::new(name, id, [url.clone()]);
    instance.routes = routes(which).iter().map(|r| r.to_string()).collect();
    if which != Which::Gateway {
        instance.topics = vec![options.topic.clone()];
    }
    if !options.tags.is_empty() {
        instance = instance.with_metadata("tags", options.tags.join(","));
    }
    let registration = Registration::start(registry, instance, options.registry_ttl).await?;
    tracing::info!(target: "bookshelf", service = which.name(), %url, "serving");
    Ok(Running {
        which,
        url,
        registration,
        shutdown,
        server,
        view,
    })
}

fn routes(which: Which) -> &'static [&'static str] {
    match which {
        Which::NewBook | Which::ReadBook => &["POST /"],
        Which::LastReadBooks | Which::ListBooks => &["GET /"],
        Which::Gateway => &[
            "POST /bookshelf/books",
            "GET /bookshelf/books",
            "GET /bookshelf/books/last/read",
            "POST /bookshelf/books/{id}/finished",
        ],
    }
}

async fn open_log(options: &Options) -> Result<Arc<dyn Transport>, BookshelfError> {
    let url = options.broker_url();
    switchyard::connect_ready(&url, &ConnectRetry::attempts(3))
        .await
        .map_err(|source| BookshelfError::Log { url, source })
}

/// A view of the log, caught up with it before it is registered: the gateway never finds a
/// view that would answer from half its history.
async fn start_view<S>(
    options: &Options,
    name: &str,
    initial: S,
    fold: fn(&mut S, &Envelope) -> Result<(), switchyard::HandlerError>,
) -> Result<RunningView<S>, BookshelfError>
where
    S: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let log = open_log(options).await?;
    let mut view = View::new(name, initial, fold);
    if let Some(dir) = &options.snapshot_dir {
        view = view.snapshot(
            dir.join(format!("{name}-{}.json", options.topic)),
            Duration::from_secs(5),
        );
    }
    let running = view
        .start(log, &options.topic)
        .await
        .map_err(|source| BookshelfError::Log {
            url: options.broker_url(),
            source,
        })?;
    running.reader().ready().await;
    Ok(running)
}

fn view_router<S: Send + Sync + 'static>(reader: ViewReader<S>, answer: fn(&S) -> Value) -> Router {
    Router::new().route(
        "/",
        get(move || {
            let reader = reader.clone();
            async move { Json(reader.read(answer)) }
        }),
    )
}

#[derive(Clone)]
struct Aggregate {
    which: Which,
    log: Arc<dyn Transport>,
    topic: String,
}

fn aggregate(which: Which, log: Arc<dyn Transport>, topic: String) -> Router {
    Router::new()
        .route("/", post(command))
        .with_state(Aggregate { which, log, topic })
}

/// The service's own answer when it cannot do what was asked: `{"error": WHY}`.
pub(crate) fn refuse(status: StatusCode, why: impl Into<String>) -> Response {
    (status, Json(json!({ "error": why.into() }))).into_response()
}

/// A command in, its event appended to the log, `201` once the log has it.
async fn command(State(agg): State<Aggregate>, body: Bytes) -> Response {
    let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(&body) else {
        return refuse(StatusCode::BAD_REQUEST, "the body must be a JSON object");
    };
    let (event, answer) = match agg.which {
        Which::NewBook => {
            let id = uuid::Uuid::new_v4().to_string();
            body.insert("id".into(), Value::String(id));
            let book = Value::Object(body);
            let event = Event::new(BOOK_ADDED, Value::String(book.to_string()), false, false);
            (event, book)
        }
        _ => {
            let Some(Value::String(id)) = body.get("id") else {
                return refuse(StatusCode::BAD_REQUEST, "the body must have a string id");
            };
            let answer = json!({ "id": id });
            (
                Event::new(BOOK_READ, Value::Object(body), true, false),
                answer,
            )
        }
    };
    let payload = match serde_json::to_vec(&event) {
        Ok(p) => p,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut envelope = Envelope::new(agg.topic.as_str(), payload);
    // The event's id is the message's: a log that de-duplicates by id (JetStream) and an inbox
    // know a retried append.
    envelope.id = event.id.clone();
    // One ordering key for the whole log: one partition on Kafka, so every view folds the
    // events in the one order they were appended.
    envelope
        .headers
        .insert(header::ORDERING_KEY, agg.topic.as_str());
    match agg.log.publish(envelope).await {
        Ok(()) => (StatusCode::CREATED, Json(answer)).into_response(),
        Err(e) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the event was not appended to the log: {e}"),
        ),
    }
}
