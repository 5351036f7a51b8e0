//! The `http://` transport: a pooled keep-alive client for calls and events, and an axum
//! server for serving a service or receiving pushed events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::StreamExt;
use serde_json::Value;
use switchyard_core::call::CallRequest;
use switchyard_core::codec::Codec;
use switchyard_core::error::{redact_url, CallError, ErrorCode, RemoteError, TransportError};
use switchyard_core::message::{header as h, Envelope};
use switchyard_core::server::Served;
use switchyard_core::transport::{
    Capabilities, DeliveryGuarantee, Listener, Ordering, Publisher, Requester, Responder,
    ServeHandle, SubscribeOptions, Subscriber, Subscription, Transport,
};
use switchyard_core::values::Reply;
use switchyard_core::wire;
use tokio::sync::{oneshot, Mutex};

use crate::listen::ServerLimits;
use crate::server::{router_with, ServerState, Subscriptions};
use crate::HttpOptions;

/// The HTTP transport.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use switchyard_core::Client;
/// use switchyard_http::HttpTransport;
/// let client = Client::new(Arc::new(HttpTransport::from_url("http://127.0.0.1:5000")?));
/// let message: String = client.call("/helloworld", "Mr. Developer".to_string()).await?;
/// # Ok(()) }
/// ```
pub struct HttpTransport {
    base: String,
    codec: Codec,
    http: reqwest::Client,
    max_message: usize,
    limits: ServerLimits,
    subscriptions: Arc<Subscriptions>,
    listener: Mutex<Option<ServeHandle>>,
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTransport")
            .field("base", &redact_url(&self.base))
            .finish()
    }
}

impl HttpTransport {
    /// A transport for an `http://` URL (see [`HttpOptions`]).
    pub fn from_url(url: &str) -> Result<Self, TransportError> {
        Self::new(url.parse()?)
    }

    /// A transport with these options.
    pub fn new(options: HttpOptions) -> Result<Self, TransportError> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build()
            .map_err(|e| TransportError::Other(Box::new(e)))?;
        Ok(Self {
            base: options.base,
            codec: options.codec,
            http,
            max_message: options.max_message_bytes,
            limits: options.limits,
            subscriptions: Arc::default(),
            listener: Mutex::new(None),
        })
    }

    /// Sets the limits on the connections the serving side accepts (also set by the URL's
    /// `max_connections`, `header_timeout_ms`, `body_timeout_ms`, `idle_timeout_ms` and
    /// `max_in_flight`).
    pub fn server_limits(mut self, limits: ServerLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the largest event payload `publish` sends (default 1 MiB).
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    fn bind_addr(&self) -> String {
        let rest = self.base.split_once("://").map_or(&*self.base, |(_, r)| r);
        rest.split('/').next().unwrap_or(rest).to_string()
    }

    async fn start_server(
        &self,
        served: Option<Arc<Served>>,
    ) -> Result<ServeHandle, TransportError> {
        let addr = self.bind_addr();
        let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| {
            TransportError::Unreachable {
                url: format!("http://{addr}"),
                source: Box::new(e),
            }
        })?;
        let local = listener
            .local_addr()
            .map_err(|e| TransportError::Other(Box::new(e)))?;
        let app = router_with(ServerState {
            served,
            subscriptions: self.subscriptions.clone(),
        });
        let (tx, rx) = oneshot::channel::<()>();
        let limits = self.limits;
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            crate::listen::serve(listener, app, limits, shutdown).await;
        });
        Ok(ServeHandle::new(tx, task, format!("http://{local}")))
    }

    fn unreachable(&self, e: reqwest::Error) -> TransportError {
        TransportError::Unreachable {
            url: redact_url(&self.base),
            source: Box::new(e),
        }
    }
}

fn remote_error(status: u16, body: &[u8]) -> RemoteError {
    match wire::decode_error(body) {
        Some(error) => error,
        None => RemoteError::new(
            ErrorCode::from_http_status(status),
            format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(body)
                    .chars()
                    .take(500)
                    .collect::<String>()
            ),
        ),
    }
}

impl Requester for HttpTransport {
    fn request(&self, request: CallRequest) -> BoxFuture<'_, Result<Reply, CallError>> {
        Box::pin(async move {
            let route = request.route;
            let token = request.token.as_deref();
            let body = wire::encode_call(&request.args, token, self.codec).map_err(|e| {
                CallError::Encode {
                    route: route.clone(),
                    reason: e.to_string(),
                }
            })?;
            let mut rb = self
                .http
                .post(format!("{}{}", self.base, route))
                .header(reqwest::header::CONTENT_TYPE, self.codec.content_type())
                .body(body);
            if let Some(deadline) = request.deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                let ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
                rb = rb.header(
                    crate::names::DEADLINE_MS,
                    reqwest::header::HeaderValue::from(ms),
                );
            }
            for (k, v) in request.headers.iter() {
                rb = rb.header(k, v);
            }
            let resp = rb.send().await.map_err(|e| {
                if e.is_connect() {
                    CallError::Unreachable {
                        target: redact_url(&self.base),
                        source: Box::new(e),
                    }
                } else {
                    CallError::Transport(self.unreachable(e))
                }
            })?;
            let status = resp.status().as_u16();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| CallError::Transport(self.unreachable(e)))?;
            if status == 200 {
                let values: Vec<Value> =
                    self.codec.decode(&bytes).map_err(|e| CallError::Decode {
                        route: route.clone(),
                        expected: "a JSON array of returned values",
                        reason: e.to_string(),
                    })?;
                Ok(Reply::Wire(values))
            } else {
                Err(CallError::Remote {
                    route,
                    error: remote_error(status, &bytes),
                })
            }
        })
    }
}

impl Publisher for HttpTransport {
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            if envelope.payload.len() > self.max_message {
                return Err(TransportError::PayloadTooLarge {
                    size: envelope.payload.len(),
                    limit: self.max_message,
                });
            }
            // CloudEvents HTTP binary mode: attributes as ce-* headers, data as the body.
            let mut rb = self.http.post(format!(
                "{}/{}",
                self.base,
                envelope.subject.trim_start_matches('/')
            ));
            for (attr, value) in envelope.cloud_event_attributes() {
                // The HTTP binding's header names are ours: `ce-*`, and `content-type`.
                rb = rb.header(attr.header(), value);
            }
            for (k, v) in envelope.headers.iter() {
                let covered = k == h::CONTENT_TYPE || k.starts_with("ce-");
                if !covered {
                    rb = rb.header(k, v);
                }
            }
            let resp = rb
                .body(envelope.payload)
                .send()
                .await
                .map_err(|e| self.unreachable(e))?;
            let status = resp.status().as_u16();
            if (200..300).contains(&status) {
                Ok(())
            } else {
                let body = resp.bytes().await.unwrap_or_default();
                Err(TransportError::Rejected(remote_error(status, &body)))
            }
        })
    }
}

impl Subscriber for HttpTransport {
    /// Receives events pushed to this transport's address: starts a listener there on first
    /// use. An acknowledged event answers its sender 200; a nack answers 503.
    fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Subscription, TransportError>> {
        let topic = topic.to_string();
        Box::pin(async move {
            let mut listener = self.listener.lock().await;
            if listener.is_none() {
                *listener = Some(self.start_server(None).await?);
            }
            let rx = self.subscriptions.add(&topic, options.mode);
            Ok(Box::pin(rx.map(Ok)) as Subscription)
        })
    }
}

impl Responder for HttpTransport {
    /// Starts an HTTP server on the URL's address: hyper runs its connections, and each call
    /// and event posted to it goes through the served service's layers.
    fn listen(&self, served: Arc<Served>) -> BoxFuture<'_, Result<Listener, TransportError>> {
        Box::pin(async move {
            let server = self.start_server(Some(served)).await?;
            let url = server.url().to_string();
            Ok(Listener::driven(url, true).on_close(server.shutdown()))
        })
    }
}

impl Transport for HttpTransport {
    fn name(&self) -> &'static str {
        "http"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: false,
            ordering: Ordering::None,
            // A publish returns only after the receiver acknowledged; nothing redelivers.
            delivery: DeliveryGuarantee::AtMostOnce,
            request_reply: true,
            consumer_groups: true,
            broadcast: true,
            redelivery: false,
            services_share_url: false,
            keeps_for_later_groups: false,
            replay: false,
        }
    }

    fn url(&self) -> String {
        redact_url(&self.base)
    }

    fn requester(&self) -> Option<&dyn Requester> {
        Some(self)
    }

    fn responder(&self) -> Option<&dyn Responder> {
        Some(self)
    }
}
