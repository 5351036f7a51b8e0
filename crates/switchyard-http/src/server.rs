//! The HTTP side of a service: one fallback handler that sends each request to an RPC route,
//! a JSON endpoint, an event handler or a WebSocket route.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::future::BoxFuture;
use serde_json::{Map, Value};
use switchyard_core::call::CallRequest;
use switchyard_core::codec::Codec;
use switchyard_core::error::{ErrorCode, RemoteError, TransportError};
use switchyard_core::handler::RouteKind;
use switchyard_core::message::{header as h, Envelope, Headers};
use switchyard_core::server::Served;
use switchyard_core::service::{Service, DEFAULT_MAX_BODY};
use switchyard_core::transport::{Acker, Delivery, SubscriptionMode};
use switchyard_core::values::{Args, Reply};
use switchyard_core::wire::CallBody;
use tokio::sync::oneshot;

use crate::ws;

/// Subscribers of an HTTP transport that receives events pushed to it.
#[derive(Default)]
pub(crate) struct Subscriptions {
    topics: Mutex<HashMap<String, TopicSubscribers>>,
}

#[derive(Default)]
struct TopicSubscribers {
    groups: HashMap<
        String,
        (
            async_channel::Sender<Delivery>,
            async_channel::Receiver<Delivery>,
        ),
    >,
    broadcast: Vec<async_channel::Sender<Delivery>>,
}

impl Subscriptions {
    pub(crate) fn add(
        &self,
        topic: &str,
        mode: SubscriptionMode,
    ) -> async_channel::Receiver<Delivery> {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let entry = topics.entry(topic.to_string()).or_default();
        match mode {
            SubscriptionMode::Group(name) => entry
                .groups
                .entry(name)
                .or_insert_with(|| async_channel::bounded(1))
                .1
                .clone(),
            _ => {
                let (tx, rx) = async_channel::bounded(1024);
                entry.broadcast.push(tx);
                rx
            }
        }
    }

    /// Hands `env` to every group (one member each) and every broadcast subscriber; `None`
    /// if nobody subscribes, otherwise whether every group acknowledged it.
    async fn deliver(&self, env: Envelope) -> Option<bool> {
        let (groups, broadcast) = {
            let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
            let t = topics.get_mut(&env.subject)?;
            t.broadcast.retain(|tx| !tx.is_closed());
            t.groups.retain(|_, (_, rx)| rx.receiver_count() > 0);
            if t.groups.is_empty() && t.broadcast.is_empty() {
                return None;
            }
            let groups: Vec<_> = t.groups.values().map(|(tx, _)| tx.clone()).collect();
            (groups, t.broadcast.clone())
        };
        let mut all_acked = true;
        for tx in broadcast {
            // A broadcast subscriber whose queue stays full is not sent a 200 for an event it
            // will never see: the sender gets 503 and retries (a subscriber that had it then
            // sees it twice: at least once, as everywhere).
            let d = Delivery::new(env.clone(), Box::new(PushAcker(None)));
            let queued = tokio::time::timeout(QUEUE_WAIT, tx.send(d)).await;
            all_acked &= matches!(queued, Ok(Ok(())));
        }
        for tx in groups {
            let (ack_tx, ack_rx) = oneshot::channel();
            let d = Delivery::new(env.clone(), Box::new(PushAcker(Some(ack_tx))));
            if !matches!(
                tokio::time::timeout(QUEUE_WAIT, tx.send(d)).await,
                Ok(Ok(()))
            ) {
                all_acked = false;
                continue;
            }
            // A dropped delivery counts as a nack, and so does one not settled in time: the
            // sender gets 503 and may retry.
            let settled = tokio::time::timeout(SETTLE_WAIT, ack_rx).await;
            all_acked &= matches!(settled, Ok(Ok(true)));
        }
        Some(all_acked)
    }
}

/// How long a pushed event waits for room in a subscriber's queue.
const QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a pushed event waits for its group subscriber to settle it.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Acknowledges a pushed event by answering its HTTP request.
struct PushAcker(Option<oneshot::Sender<bool>>);

impl Acker for PushAcker {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(true);
        }
        Box::pin(async { Ok(()) })
    }
    fn nack(
        mut self: Box<Self>,
        _delay: Option<std::time::Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(false);
        }
        Box::pin(async { Ok(()) })
    }
}

#[derive(Clone)]
pub(crate) struct ServerState {
    pub(crate) served: Option<Arc<Served>>,
    pub(crate) subscriptions: Arc<Subscriptions>,
}

/// The axum router that serves `service`, its layers included: mount it, wrap it in tower
/// layers, or serve it with `axum::serve`. (The `http://` transport's listener does exactly
/// that.)
pub fn router(service: Arc<Service>) -> Router {
    router_with(ServerState {
        served: Some(Arc::new(Served::new(service))),
        subscriptions: Arc::default(),
    })
}

pub(crate) fn router_with(state: ServerState) -> Router {
    Router::new().fallback(entry).with_state(state)
}

const JSON: &str = "application/json";

/// `GET /healthz` (the process answers), `GET /readyz` (it serves: a server of this transport
/// is ready once it answers, its listener being its only transport) and `GET /metrics` (when
/// metrics are recorded, `switchyard_core::observe`), unless the service has routes of those
/// names; `None` for any other request.
fn health(req: &Request, path: &str, served: Option<&Served>) -> Option<Response> {
    if req.method() != Method::GET {
        return None;
    }
    if path == "/metrics" {
        let text = switchyard_core::observe::render()?;
        return Some(
            (
                StatusCode::OK,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                )],
                text,
            )
                .into_response(),
        );
    }
    if !matches!(path, "/healthz" | "/readyz") {
        return None;
    }
    let mut status = serde_json::json!({"status": "ok"});
    let mut code = StatusCode::OK;
    if path == "/readyz" {
        // Ready when every transport this process serves on is connected and nothing it
        // waits for (a hard dependency) is missing.
        let why = switchyard_core::observe::not_ready();
        if !why.is_empty() {
            status = serde_json::json!({"status": "unavailable", "not_ready": why});
            code = StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    if let Some(served) = served {
        status["service"] = served.name().into();
        status["instance"] = served.instance().into();
    }
    Some(
        (
            code,
            [(header::CONTENT_TYPE, HeaderValue::from_static(JSON))],
            status.to_string(),
        )
            .into_response(),
    )
}

pub(crate) fn error_response(code: ErrorCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"error": RemoteError::new(code, message)});
    let status =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(JSON))],
        body.to_string(),
    )
        .into_response()
}

fn ok_response(reply: Reply, codec: Codec) -> Response {
    match reply.encode(codec) {
        Ok(bytes) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(codec.content_type()),
            )],
            bytes,
        )
            .into_response(),
        Err(e) => error_response(ErrorCode::Internal, format!("reply does not encode: {e}")),
    }
}

fn is_cloud_event(headers: &HeaderMap) -> bool {
    headers.contains_key(crate::names::CE_SPECVERSION)
        || headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/cloudevents+json"))
}

fn is_websocket_upgrade(req: &Request) -> bool {
    req.method() == Method::GET
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// A request refused before it reached a handler.
struct Rejection(ErrorCode, String);

impl Rejection {
    /// A body that did not arrive in time: `408`, the error code a deadline's.
    fn timeout(t: crate::listen::BodyReadTimeout) -> Self {
        Self(ErrorCode::DeadlineExceeded, t.to_string())
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let mut response = error_response(self.0, self.1);
        if self.0 == ErrorCode::DeadlineExceeded {
            // The client was too slow, not a server behind this one: 408, not 504.
            *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
        }
        response
    }
}

/// Reads the body, refusing anything over `limit` before reading it when the length is known.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, Rejection> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = || {
        Rejection(
            ErrorCode::PayloadTooLarge,
            format!("request body exceeds the limit of {limit} bytes"),
        )
    };
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    to_bytes(body, limit)
        .await
        .map_err(|e| match crate::listen::body_timeout(&e) {
            Some(t) => Rejection::timeout(t),
            None => too_large(),
        })
}

/// Headers that travel into a call's or an event's context.
fn context_headers(headers: &HeaderMap) -> Headers {
    let mut out = Headers::new();
    for (name, value) in headers {
        let n = name.as_str();
        let keep = n == h::TRACEPARENT
            || n == h::TRACESTATE
            || n == switchyard_core::middleware::trace::BAGGAGE
            || (n.starts_with("x-") && n != h::DEADLINE_MS)
            || n.starts_with("ce-")
            || n == "content-type";
        if keep {
            if let Ok(v) = value.to_str() {
                out.insert(n, v);
            }
        }
    }
    out
}

/// The codec of a request: its content type, or the service's codec when it names none (JSON
/// unless the service chose otherwise, since microservices_connector's clients send JSON).
fn request_codec(headers: &HeaderMap, service_default: Codec) -> Result<Codec, Rejection> {
    match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        None => Ok(service_default),
        Some(ct) => Codec::from_content_type(ct).ok_or_else(|| {
            Rejection(
                ErrorCode::BadRequest,
                format!(
                    "unsupported content type {ct:?}: use application/json or application/msgpack"
                ),
            )
        }),
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

async fn entry(State(state): State<ServerState>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    if is_websocket_upgrade(&req) {
        return ws::upgrade(state, req, path).await;
    }
    if is_cloud_event(req.headers()) {
        return handle_event(state, req, path).await;
    }
    let Some(served) = state.served.clone() else {
        return health(&req, &path, None)
            .unwrap_or_else(|| error_response(ErrorCode::NotFound, format!("no route {path}")));
    };
    let service = served.service();
    let Some(route) = service.route_at(&path) else {
        return health(&req, &path, Some(&served)).unwrap_or_else(|| {
            served.count_unrouted();
            error_response(ErrorCode::NotFound, format!("no route {path}"))
        });
    };
    let kind = route.kind();
    let method = req.method().clone();
    let allowed = match kind {
        RouteKind::Rpc => method == Method::POST,
        RouteKind::Json => matches!(
            method,
            Method::GET | Method::POST | Method::PUT | Method::DELETE
        ),
    };
    if !allowed {
        let mut resp = error_response(
            ErrorCode::MethodNotAllowed,
            format!("{path} does not accept {method}"),
        );
        let allow = if kind == RouteKind::Rpc {
            "POST"
        } else {
            "GET, POST, PUT, DELETE"
        };
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
        return resp;
    }
    let (parts, body) = req.into_parts();
    let codec = match request_codec(&parts.headers, service.preferred_codec()) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let bytes = match read_body(body, &parts.headers, service.body_limit()).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let empty = bytes.iter().all(u8::is_ascii_whitespace);
    let malformed = |e: &dyn std::fmt::Display| {
        error_response(
            ErrorCode::BadRequest,
            format!("malformed request body: {e}"),
        )
    };
    let wrong_shape = |e: &dyn std::fmt::Display| {
        error_response(
            ErrorCode::BadRequest,
            format!(
                r#"request body must be {{"args": [...], "kwargs": {{...}}, "token": null}}: {e}"#
            ),
        )
    };
    let mut token = bearer(&parts.headers);
    let args = match kind {
        RouteKind::Rpc => {
            // JSON straight into the call's shape, without an intermediate `Value` tree.
            let body = match codec {
                _ if empty => Ok(CallBody::default()),
                Codec::Json => serde_json::from_slice::<CallBody>(&bytes).map_err(|e| {
                    if e.is_data() {
                        wrong_shape(&e)
                    } else {
                        malformed(&e)
                    }
                }),
                _ => match codec.decode::<Value>(&bytes) {
                    Ok(v) => serde_json::from_value::<CallBody>(v).map_err(|e| wrong_shape(&e)),
                    Err(e) => Err(malformed(&e)),
                },
            };
            match body {
                Ok(b) => {
                    let (args, body_token) = b.into_parts();
                    token = body_token.or(token);
                    args
                }
                Err(resp) => return resp,
            }
        }
        RouteKind::Json => {
            let parsed = match codec.decode::<Value>(&bytes) {
                _ if empty => Value::Object(Map::new()),
                Ok(v) => v,
                Err(e) => return malformed(&e),
            };
            let kwargs = match unwrap_rpc_envelope(parsed) {
                Value::Object(mut m) if m.is_empty() => {
                    // No body (typical of GET): keyword arguments from the query string.
                    for (k, v) in
                        url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
                    {
                        let value =
                            serde_json::from_str(&v).unwrap_or(Value::String(v.into_owned()));
                        m.insert(k.into_owned(), value);
                    }
                    m
                }
                Value::Object(m) => m,
                other => {
                    return error_response(
                        ErrorCode::BadRequest,
                        format!(
                            "a JSON endpoint takes an object of keyword arguments, not {}",
                            kind_of(&other)
                        ),
                    )
                }
            };
            Args::Wire {
                args: Vec::new(),
                kwargs,
            }
        }
    };
    // The deadline becomes an `Instant` here; the call's headers need not carry it again.
    let deadline = parts
        .headers
        .get(crate::names::DEADLINE_MS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| std::time::Instant::now() + std::time::Duration::from_millis(ms));
    let headers = context_headers(&parts.headers);
    let mut request = CallRequest::new(path, args);
    request.token = token;
    request.deadline = deadline;
    request.headers = headers;
    match served.call(request).await {
        Ok(reply) => ok_response(reply, codec),
        Err(e) => error_response(e.code(), e.message()),
    }
}

/// A switchyard client calls JSON endpoints with the RPC body
/// (`{"args": [], "kwargs": {...}, "token": ...}`); plain HTTP clients send the keyword object
/// itself. Accept both: an object whose only keys are those three, with `kwargs` an object and
/// `args` empty, is the RPC form.
fn unwrap_rpc_envelope(body: Value) -> Value {
    let is_rpc = match &body {
        Value::Object(m) => {
            m.get("kwargs").is_some_and(Value::is_object)
                && m.keys()
                    .all(|k| k == "args" || k == "kwargs" || k == "token")
                && m.get("args")
                    .is_none_or(|a| a.as_array().is_some_and(Vec::is_empty))
        }
        _ => false,
    };
    match body {
        Value::Object(mut m) if is_rpc => m.remove("kwargs").unwrap_or_default(),
        other => other,
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// An event in binary or structured CloudEvents mode → an envelope.
fn decode_cloud_event(headers: &HeaderMap, body: Bytes, topic: &str) -> Result<Envelope, String> {
    let mut ctx = context_headers(headers);
    let structured = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/cloudevents+json"));
    if structured {
        let mut ce: Map<String, Value> = match serde_json::from_slice(&body) {
            Ok(Value::Object(m)) => m,
            Ok(other) => {
                return Err(format!(
                    "a structured CloudEvent must be an object, not {}",
                    kind_of(&other)
                ))
            }
            Err(e) => return Err(format!("malformed CloudEvent: {e}")),
        };
        let mut attr = |name: &str| -> Result<String, String> {
            match ce.remove(name) {
                Some(Value::String(s)) => Ok(s),
                Some(_) => Err(format!("CloudEvent attribute {name:?} must be a string")),
                None => Err(format!("CloudEvent lacks required attribute {name:?}")),
            }
        };
        let (spec, id, ty, source) = (
            attr("specversion")?,
            attr("id")?,
            attr("type")?,
            attr("source")?,
        );
        if spec != "1.0" {
            return Err(format!("unsupported CloudEvents specversion {spec:?}"));
        }
        if ce.contains_key("data_base64") {
            return Err("data_base64 is not supported; send data".into());
        }
        let data = ce.remove("data").unwrap_or(Value::Null);
        let payload = match (&data, ce.get("datacontenttype").and_then(Value::as_str)) {
            (Value::String(s), Some(ct)) if Codec::from_content_type(ct).is_none() => {
                Bytes::from(s.clone())
            }
            _ => Bytes::from(serde_json::to_vec(&data).map_err(|e| e.to_string())?),
        };
        let content_type = ce
            .remove("datacontenttype")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| JSON.to_string());
        ctx.insert(h::CONTENT_TYPE, content_type);
        ctx.insert(h::CE_TYPE, ty);
        ctx.insert(h::CE_SOURCE, source);
        for (k, v) in ce {
            if let Value::String(s) = v {
                ctx.insert(format!("ce-{k}"), s);
            }
        }
        ctx.remove("ce-specversion");
        return Ok(Envelope {
            id,
            subject: topic.to_string(),
            headers: ctx,
            payload,
        });
    }
    let required = |name: &str| {
        ctx.get(name)
            .map(str::to_string)
            .ok_or_else(|| format!("CloudEvent lacks required header {name:?}"))
    };
    let (spec, id) = (required("ce-specversion")?, required("ce-id")?);
    required("ce-type")?;
    required("ce-source")?;
    if spec != "1.0" {
        return Err(format!("unsupported CloudEvents specversion {spec:?}"));
    }
    ctx.remove("ce-id");
    ctx.remove("ce-specversion");
    if ctx.get(h::CONTENT_TYPE).is_none() {
        ctx.insert(h::CONTENT_TYPE, JSON);
    }
    Ok(Envelope {
        id,
        subject: topic.to_string(),
        headers: ctx,
        payload: body,
    })
}

async fn handle_event(state: ServerState, req: Request, path: String) -> Response {
    if req.method() != Method::POST {
        return error_response(ErrorCode::MethodNotAllowed, "events are sent with POST");
    }
    let limit = state
        .served
        .as_ref()
        .map_or(DEFAULT_MAX_BODY, |s| s.service().body_limit());
    let (parts, body) = req.into_parts();
    let bytes = match read_body(body, &parts.headers, limit).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let topic = path.trim_start_matches('/');
    let env = match decode_cloud_event(&parts.headers, bytes, topic) {
        Ok(env) => env,
        Err(msg) => return error_response(ErrorCode::BadRequest, msg),
    };
    let accepted = || (StatusCode::OK, [(header::CONTENT_TYPE, JSON)], "{}").into_response();
    if let Some(served) = &state.served {
        let service = served.service();
        if service.handles_topic(topic) {
            // The same path as a broker's deliveries: watchers, inbox, event layers, handler.
            return match served.receive_event(env).await {
                Ok(()) => accepted(),
                Err(e) => error_response(e.code(), e.message()),
            };
        }
        // A topic the service only pushes to its WebSocket watchers.
        if served.push_to_watchers(&env) {
            return accepted();
        }
    }
    match state.subscriptions.deliver(env).await {
        Some(true) => accepted(),
        Some(false) => error_response(
            ErrorCode::Unavailable,
            "the subscriber did not acknowledge the event; retry",
        ),
        None => error_response(
            ErrorCode::NotFound,
            format!("no subscriber for topic {topic}"),
        ),
    }
}
