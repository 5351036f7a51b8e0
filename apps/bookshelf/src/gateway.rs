//! The gateway: one HTTP API over the four services, each found through discovery.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use switchyard::registry::{Discovery, Health, Registry};

use crate::serve::{refuse, BookshelfError, Which};

/// The services the gateway fronts.
const PEERS: [Which; 4] = [
    Which::NewBook,
    Which::ReadBook,
    Which::LastReadBooks,
    Which::ListBooks,
];

/// Where the gateway's peers are: the framework's [`Discovery`] (each service listed once,
/// then followed by a registry watch of its own), instances taken in turns.
#[derive(Clone)]
pub struct Peers {
    discovery: Arc<Discovery>,
    next: Arc<AtomicUsize>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").finish_non_exhaustive()
    }
}

impl Peers {
    /// Waits (up to `wait`) until each of the four is registered; their addresses are kept up
    /// to date from then on.
    pub async fn find(registry: Arc<dyn Registry>, wait: Duration) -> Result<Self, BookshelfError> {
        let peers = Self {
            // The gateway calls its peers over plain HTTP; no transport is ever made.
            discovery: Arc::new(Discovery::new(
                registry.clone(),
                Arc::new(|url: &str| switchyard::connect(url)),
            )),
            next: Arc::default(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        };
        let started = Instant::now();
        let mut logged = Instant::now() - Duration::from_secs(10);
        for peer in PEERS {
            while peers.urls(peer).await.is_err() {
                if started.elapsed() >= wait {
                    return Err(BookshelfError::PeerMissing {
                        service: peer.name().to_string(),
                        registry: registry.url(),
                        waited: wait,
                    });
                }
                if logged.elapsed() >= Duration::from_secs(5) {
                    tracing::info!(target: "bookshelf", service = peer.name(), registry = %registry.url(), "gateway waiting for a service to register");
                    logged = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(peers)
    }

    /// The `http://` addresses of `which`'s serving instances, or why there are none.
    async fn urls(&self, which: Which) -> Result<Vec<String>, Refusal> {
        let instances = self
            .discovery
            .instances(which.name())
            .await
            .map_err(|e| Refusal(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        let mut urls: Vec<String> = instances
            .into_iter()
            .filter(|i| i.health == Health::Serving)
            .filter_map(|i| i.addresses.into_iter().find(|a| a.starts_with("http://")))
            .collect();
        if urls.is_empty() {
            return Err(Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no {} is registered", which.name()),
            ));
        }
        urls.sort();
        Ok(urls)
    }

    async fn url_of(&self, which: Which) -> Result<String, Refusal> {
        let urls = self.urls(which).await?;
        Ok(urls[self.next.fetch_add(1, Ordering::Relaxed) % urls.len()].clone())
    }

    /// Sends to `which`; its status and JSON body, or the gateway's answer why not.
    async fn send(
        &self,
        which: Which,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), Refusal> {
        let url = format!("{}/", self.url_of(which).await?);
        let request = match body {
            Some(b) => self.http.post(&url).json(&b),
            None => self.http.get(&url),
        };
        let bad_gateway =
            |e: String| Refusal(StatusCode::BAD_GATEWAY, format!("{}: {e}", which.name()));
        let answer = request
            .send()
            .await
            .map_err(|e| bad_gateway(e.to_string()))?;
        let status =
            StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let bytes = answer
            .bytes()
            .await
            .map_err(|e| bad_gateway(e.to_string()))?;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }
}

/// Why the gateway answers instead of the service: none registered, or it did not answer.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        refuse(self.0, self.1)
    }
}

/// The gateway's routes over `peers`.
pub fn router(peers: Peers) -> Router {
    Router::new()
        .route("/bookshelf/books", post(add_book).get(list_books))
        .route("/bookshelf/books/last/read", get(last_read))
        .route("/bookshelf/books/{id}/finished", post(finished))
        .with_state(peers)
}

/// `POST /bookshelf/books`: the book to `newbook`; `201 {"id"}`.
async fn add_book(State(peers): State<Peers>, body: Bytes) -> Response {
    let Ok(book @ Value::Object(_)) = serde_json::from_slice::<Value>(&body) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object (a book)",
        );
    };
    match peers.send(Which::NewBook, Some(book)).await {
        Ok((StatusCode::CREATED, added)) => {
            (StatusCode::CREATED, Json(json!({ "id": added["id"] }))).into_response()
        }
        other => pass(other),
    }
}

/// `GET /bookshelf/books`: `listbooks`'s answer.
async fn list_books(State(peers): State<Peers>) -> Response {
    pass(peers.send(Which::ListBooks, None).await)
}

/// `GET /bookshelf/books/last/read`: `lastreadbooks`'s answer.
async fn last_read(State(peers): State<Peers>) -> Response {
    pass(peers.send(Which::LastReadBooks, None).await)
}

/// `POST /bookshelf/books/<id>/finished`: `{"id"}` to `readbook`; `204`.
async fn finished(State(peers): State<Peers>, Path(id): Path<String>) -> Response {
    match peers.send(Which::ReadBook, Some(json!({ "id": id }))).await {
        Ok((StatusCode::CREATED, _)) => StatusCode::NO_CONTENT.into_response(),
        other => pass(other),
    }
}

/// A peer's answer passed on as it is, or the gateway's own when there was none.
fn pass(answer: Result<(StatusCode, Value), Refusal>) -> Response {
    match answer {
        Ok((status, value)) => (status, Json(value)).into_response(),
        Err(r) => r.into_response(),
    }
}
