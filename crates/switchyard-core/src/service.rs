//! A service: named routes answered by handlers, event handlers by topic, WebSocket routes.
//! The same `Service` value is served on any transport.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::Codec;
use crate::context::{self, Context};
use crate::error::{ErrorCode, HandlerError};
use crate::handler::Route;
use crate::layer::LayerFor;
use crate::message::{header, Envelope};
use crate::middleware::{
    self,
    routed::{self, Routed},
};
use crate::policy::ConsumerPolicy;
use crate::values::{short_type_name, Reply};

pub(crate) use crate::call::CallParts;
pub use crate::call::CallRequest;
pub use crate::error::ServiceError;

/// Default largest accepted request body: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

type EventFn = Arc<dyn Fn(Envelope) -> BoxFuture<'static, Result<(), HandlerError>> + Send + Sync>;
type WsFn = Arc<dyn Fn(WsMessage) -> BoxFuture<'static, Option<String>> + Send + Sync>;

/// A text frame received on a WebSocket route, with the route's path parameters.
#[derive(Debug, Clone)]
pub struct WsMessage {
    /// The frame's text.
    pub text: String,
    /// Values of the `<name>` segments of the route pattern.
    pub params: HashMap<String, String>,
}

/// What a WebSocket handler may answer: a frame, or nothing.
pub trait IntoWsReply: Send + 'static {
    /// The frame to send back, if any.
    fn into_ws_reply(self) -> Option<String>;
}
impl IntoWsReply for String {
    fn into_ws_reply(self) -> Option<String> {
        Some(self)
    }
}
impl IntoWsReply for Option<String> {
    fn into_ws_reply(self) -> Option<String> {
        self
    }
}
impl IntoWsReply for () {
    fn into_ws_reply(self) -> Option<String> {
        None
    }
}

/// A route pattern with `<name>` segments, as in microservices_connector (`/user/<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    segments: Vec<Segment>,
    raw: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

impl RoutePattern {
    /// Parses `pattern`.
    ///
    /// ```
    /// use switchyard_core::service::RoutePattern;
    /// let p = RoutePattern::new("/user/<name>");
    /// assert_eq!(p.matches("/user/ann").unwrap()["name"], "ann");
    /// assert!(p.matches("/user").is_none());
    /// ```
    pub fn new(pattern: &str) -> Self {
        let segments = pattern
            .split('/')
            .filter(|s| !s.is_empty())
            .map(
                |s| match s.strip_prefix('<').and_then(|s| s.strip_suffix('>')) {
                    Some(name) => Segment::Param(name.to_string()),
                    None => Segment::Literal(s.to_string()),
                },
            )
            .collect();
        Self {
            segments,
            raw: pattern.to_string(),
        }
    }

    /// The parameters if `path` matches.
    pub fn matches(&self, path: &str) -> Option<HashMap<String, String>> {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut params = HashMap::new();
        for (seg, part) in self.segments.iter().zip(parts) {
            match seg {
                Segment::Literal(l) if l == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => {
                    params.insert(name.clone(), part.to_string());
                }
            }
        }
        Some(params)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

/// What a WebSocket route does.
#[derive(Clone)]
pub enum WsRoute {
    /// Each text frame goes to a handler; its answer, if any, comes back as a frame.
    Handler(WsFn),
    /// The socket receives every event pushed on the topic named by the `<topic>` segment (or
    /// the fixed topic given).
    Events {
        /// A fixed topic; `None` takes it from the `<topic>` path parameter.
        topic: Option<String>,
    },
}

pub use crate::push::{PushHub, Watch, WatchError};

/// A service: what a listener answers. Build it once, serve it on any transport.
///
/// ```
/// use switchyard_core::{handler::rpc, service::Service};
/// async fn helloworld(name: String) -> String { format!("Welcome {name}") }
/// let service = Service::new("app1").route("/helloworld", rpc(helloworld));
/// assert!(service.has_route("/helloworld"));
/// ```
pub struct Service {
    name: String,
    version: Option<String>,
    // Looked up on every call: FxHash is several times faster than SipHash for short keys, and
    // route names come from the service's own code, not from an attacker choosing collisions.
    routes: FxHashMap<String, Route>,
    events: FxHashMap<String, EventFn>,
    ws: Vec<(RoutePattern, WsRoute)>,
    errors: Vec<ServiceError>,
    max_body: usize,
    codec: Codec,
    hub: PushHub,
    ws_token: Option<String>,
    policy: ConsumerPolicy,
    pub(crate) adaptive_limit: Option<crate::middleware::limiter::AdaptiveLimit>,
    dependencies: Vec<(String, bool)>,
    pub(crate) call_layers: Vec<crate::layer::CallLayerFn>,
    pub(crate) event_layers: Vec<crate::layer::EventLayerFn>,
    pub(crate) start_hooks: Vec<(String, Hook)>,
    pub(crate) stop_hooks: Vec<(String, Hook)>,
}

/// A start or stop hook: what it does, and the reason it gives when it fails.
pub(crate) type Hook =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync>;

fn hook<F, Fut, E>(f: F) -> Hook
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    Arc::new(move || {
        let running = f();
        Box::pin(async move { running.await.map_err(|e| e.to_string()) })
    })
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("routes", &self.routes.keys().collect::<Vec<_>>())
            .field("topics", &self.events.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Service {
    /// A service named `name` with no routes.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: None,
            routes: FxHashMap::default(),
            events: FxHashMap::default(),
            ws: Vec::new(),
            errors: Vec::new(),
            max_body: DEFAULT_MAX_BODY,
            codec: Codec::Json,
            hub: PushHub::default(),
            ws_token: None,
            policy: ConsumerPolicy::default(),
            adaptive_limit: None,
            dependencies: Vec::new(),
            call_layers: Vec::new(),
            event_layers: Vec::new(),
            start_hooks: Vec::new(),
            stop_hooks: Vec::new(),
        }
    }

    /// Runs `f` when the service is served, before it takes any call or event; hooks run one
    /// after another in the order they were added. One that fails stops the start: the service
    /// is not served (`TransportError::StartFailed`, naming `name`) and the stop hooks of
    /// those that ran before it are not run.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::sync::Arc;
    /// use switchyard_core::{mem::MemTransport, server, service::Service};
    /// let service = Service::new("books")
    ///     .on_start("open the shelf", || async { Ok::<_, String>(()) })
    ///     .on_stop("close the shelf", || async { Ok::<_, String>(()) });
    /// let served = server::serve(Arc::new(MemTransport::new("hooks-doc")), service).await.unwrap();
    /// served.shutdown().await;
    /// # }
    /// ```
    pub fn on_start<F, Fut, E>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.start_hooks.push((name.into(), hook(f)));
        self
    }

    /// Runs `f` when the service stops, after its calls and events in flight have finished
    /// and it takes no more; hooks run one after another in the order they were added, each
    /// whether or not the one before it failed (failures are logged).
    pub fn on_stop<F, Fut, E>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.stop_hooks.push((name.into(), hook(f)));
        self
    }

    /// Wraps every call this service answers, on every transport, in `layer` (a tower
    /// [`Layer`](tower::Layer) over a [`CallService`](crate::layer::CallService), see
    /// [`LayerFor`]). The
    /// first layer added is the outermost: it sees the call first. The framework's own checks
    /// (route, token, deadline, panic recovery) run inside every user layer, next to the
    /// handler; `docs/MIDDLEWARE.md` gives the whole order.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
    /// use switchyard_core::{client::Client, handler::rpc, mem::MemTransport, server, service::Service};
    /// let seen = Arc::new(AtomicUsize::new(0));
    /// let counter = seen.clone();
    /// let service = Service::new("counted")
    ///     .route("/one", rpc(|| async { 1 }))
    ///     .layer(tower::layer::layer_fn(move |inner| {
    ///         let counter = counter.clone();
    ///         tower::service_fn(move |call| {
    ///             counter.fetch_add(1, Ordering::Relaxed);
    ///             tower::ServiceExt::oneshot(std::clone::Clone::clone(&inner), call)
    ///         })
    ///     }));
    /// let bus = Arc::new(MemTransport::new("layer-doc"));
    /// let _s = server::serve(bus.clone(), service).await.unwrap();
    /// let one: i32 = Client::new(bus).service("counted").call("/one", ()).await.unwrap();
    /// assert_eq!((one, seen.load(Ordering::Relaxed)), (1, 1));
    /// # }
    /// ```
    pub fn layer(mut self, layer: impl LayerFor<CallRequest, Reply, HandlerError>) -> Self {
        self.call_layers.extend(layer.erased().0);
        self
    }

    /// Wraps every event this service handles, on every transport, in `layer` (a tower
    /// [`Layer`](tower::Layer) over an [`EventService`](crate::layer::EventService)).
    /// The first layer added is the outermost. The consumer's own policies (inbox, retries,
    /// dead letters) run outside it: a layer sees each delivery attempt.
    pub fn event_layer(mut self, layer: impl LayerFor<Envelope, (), HandlerError>) -> Self {
        self.event_layers.extend(layer.erased().0);
        self
    }

    /// Sets how the service's event handlers are retried and dead-lettered on transports that
    /// redeliver (default [`ConsumerPolicy::default`]).
    pub fn consumer_policy(mut self, policy: ConsumerPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The retry and dead-letter policy of the event handlers.
    pub fn policy(&self) -> &ConsumerPolicy {
        &self.policy
    }

    /// Sets the version this service reports (`x-service-version`).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Sheds load: calls reaching the service from a transport beyond an adaptive limit of
    /// calls in flight, found from the service's latency
    /// ([`limiter`](crate::middleware::limiter)), are answered `Unavailable` (503) at once
    /// instead of waiting. Off by default; in-process calls are bounded by their client's
    /// bulkhead instead.
    pub fn adaptive_limit(mut self, limit: crate::middleware::limiter::AdaptiveLimit) -> Self {
        self.adaptive_limit = Some(limit);
        self
    }

    /// Declares that this service needs `service` (a hard dependency): served with a registry
    /// ([`registry::serve`](crate::registry::serve)), it is not ready, and not registered,
    /// until `service` is discoverable there.
    pub fn depends_on(mut self, service: impl Into<String>) -> Self {
        self.dependencies.push((service.into(), true));
        self
    }

    /// Declares that this service uses `service` when it is there (a soft dependency): its
    /// absence is logged at start, and the service runs without it.
    pub fn soft_depends_on(mut self, service: impl Into<String>) -> Self {
        self.dependencies.push((service.into(), false));
        self
    }

    /// The services this one depends on, each with whether the dependency is hard.
    pub fn dependencies(&self) -> &[(String, bool)] {
        &self.dependencies
    }

    /// Sets the largest request body accepted (default [`DEFAULT_MAX_BODY`]).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Sets the codec of requests that name no content type, and so of their replies (default
    /// JSON). A request that names its content type is always answered in it.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Registers an RPC or JSON route.
    pub fn route(mut self, path: &str, route: Route) -> Self {
        if !path.starts_with('/') {
            self.errors.push(ServiceError::BadRoute(path.to_string()));
        }
        if let Some(arity) = route.arity {
            if !route.params.is_empty() && route.params.len() != arity {
                self.errors.push(ServiceError::ParamCount {
                    route: path.to_string(),
                    named: route.params.len(),
                    arity,
                });
            }
        }
        if self.routes.insert(path.to_string(), route).is_some() {
            self.errors
                .push(ServiceError::DuplicateRoute(path.to_string()));
        }
        self
    }

    /// Registers an event handler for `topic`. The payload decodes into `T` with the codec
    /// named by its content type; a payload that does not decode is a `BadRequest` (the
    /// consumer sends it to the dead-letter destination instead of retrying it).
    pub fn on_event<F, Fut, T, O>(mut self, topic: &str, handler: F) -> Self
    where
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = O> + Send + 'static,
        T: DeserializeOwned + Send + 'static,
        O: EventOutcome,
    {
        let handler = Arc::new(handler);
        let f: EventFn = Arc::new(move |env: Envelope| {
            let codec = env
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(Codec::from_content_type)
                .unwrap_or_default();
            match codec.decode::<T>(&env.payload) {
                Ok(value) => {
                    let fut = handler(value);
                    Box::pin(async move { fut.await.into_outcome() })
                }
                Err(e) => {
                    let msg = format!("event does not decode as {}: {e}", short_type_name::<T>());
                    Box::pin(async move { Err(HandlerError::bad_request(msg)) })
                }
            }
        });
        if self.events.insert(topic.to_string(), f).is_some() {
            self.errors
                .push(ServiceError::DuplicateTopic(topic.to_string()));
        }
        self
    }

    /// Registers a handler of `topic` that takes the whole envelope (id, headers, payload)
    /// undecoded: for what passes messages on rather than reads them (a relay). It runs in
    /// the same consumer as [`Service::on_event`]'s handlers: retries, dead letters, inbox.
    pub fn on_envelope<F, Fut, O>(mut self, topic: &str, handler: F) -> Self
    where
        F: Fn(Envelope) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = O> + Send + 'static,
        O: EventOutcome,
    {
        let f: EventFn = Arc::new(move |env: Envelope| {
            let fut = handler(env);
            Box::pin(async move { fut.await.into_outcome() })
        });
        if self.events.insert(topic.to_string(), f).is_some() {
            self.errors
                .push(ServiceError::DuplicateTopic(topic.to_string()));
        }
        self
    }

    /// Registers a WebSocket route (microservices_connector's minisocket): each text frame goes to `handler`,
    /// and its answer, if any, is sent back.
    pub fn ws<F, Fut>(mut self, pattern: &str, handler: F) -> Self
    where
        F: Fn(WsMessage) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: IntoWsReply,
    {
        let f: WsFn = Arc::new(move |m| {
            let fut = handler(m);
            Box::pin(async move { fut.await.into_ws_reply() })
        });
        self.ws
            .push((RoutePattern::new(pattern), WsRoute::Handler(f)));
        self
    }

    /// Registers a WebSocket route that streams events to the socket: `topic` fixed, or
    /// `None` to take it from the pattern's `<topic>` segment.
    pub fn ws_events(mut self, pattern: &str, topic: Option<&str>) -> Self {
        self.ws.push((
            RoutePattern::new(pattern),
            WsRoute::Events {
                topic: topic.map(str::to_string),
            },
        ));
        self
    }

    /// Requires `token` to open any of the service's WebSocket routes (event watchers
    /// included), checked like an RPC route's token: the upgrade request's `token` query
    /// parameter, `Authorization: Bearer` or `x-token` header, compared in constant time.
    pub fn ws_token(mut self, token: impl Into<String>) -> Self {
        self.ws_token = Some(token.into());
        self
    }

    /// Caps the WebSocket watchers of pushed events: `topics` watched at once and `watchers`
    /// in all (defaults [`crate::push::MAX_TOPICS`] and [`crate::push::MAX_WATCHERS`]).
    pub fn watch_limits(mut self, topics: usize, watchers: usize) -> Self {
        self.hub = PushHub::with_limits(topics, watchers);
        self
    }

    /// Whether `given` opens the service's WebSocket routes.
    pub fn ws_token_accepts(&self, given: Option<&str>) -> bool {
        self.ws_token
            .as_deref()
            .is_none_or(|expected| middleware::token_matches(expected, given))
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The service's version, if set.
    pub fn service_version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// The largest request body accepted.
    pub fn body_limit(&self) -> usize {
        self.max_body
    }

    /// The codec this service prefers.
    pub fn preferred_codec(&self) -> Codec {
        self.codec
    }

    /// Whether `path` is a route.
    pub fn has_route(&self, path: &str) -> bool {
        self.routes.contains_key(path)
    }

    /// The route at `path`.
    pub fn route_at(&self, path: &str) -> Option<&Route> {
        self.routes.get(path)
    }

    /// Every route with its path, in no order.
    pub(crate) fn routes(&self) -> impl Iterator<Item = (&str, &Route)> {
        self.routes
            .iter()
            .map(|(path, route)| (path.as_str(), route))
    }

    /// All route paths, sorted.
    pub fn route_paths(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.routes.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Topics with event handlers, sorted.
    pub fn topics(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.events.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Whether `topic` has a handler.
    pub fn handles_topic(&self, topic: &str) -> bool {
        self.events.contains_key(topic)
    }

    /// The WebSocket route matching `path`, with its parameters.
    pub fn ws_route(&self, path: &str) -> Option<(&WsRoute, HashMap<String, String>)> {
        self.ws
            .iter()
            .find_map(|(p, r)| p.matches(path).map(|params| (r, params)))
    }

    /// The server-push hub.
    pub fn hub(&self) -> &PushHub {
        &self.hub
    }

    /// Pushes `value` as JSON to every WebSocket subscribed to `topic`.
    pub fn push<T: Serialize>(&self, topic: &str, value: &T) -> Result<usize, serde_json::Error> {
        Ok(self.hub.push(topic, serde_json::to_string(value)?))
    }

    /// Checks how the service was put together; transports call this before serving.
    pub fn validate(&self) -> Result<(), ServiceError> {
        match self.errors.first() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Answers one call: finds the route, checks the token, runs the handler within the
    /// caller's deadline, and turns a panic into a 500 for this call only.
    ///
    /// The route and token are checked before the returned future is first polled; the
    /// future borrows only the service.
    pub fn dispatch(
        &self,
        req: CallRequest,
    ) -> impl Future<Output = Result<Reply, HandlerError>> + Send + '_ {
        self.dispatch_owned(req, true)
    }

    /// [`Service::dispatch`] of a call whose caller bounds it by its own timeout
    /// ([`CallRequest::bounded_by_caller`]): without the deadline layer.
    pub(crate) fn dispatch_bounded(
        &self,
        req: CallRequest,
    ) -> impl Future<Output = Result<Reply, HandlerError>> + Send + '_ {
        self.dispatch_owned(req, false)
    }

    #[inline]
    fn dispatch_owned(
        &self,
        req: CallRequest,
        enforce_deadline: bool,
    ) -> impl Future<Output = Result<Reply, HandlerError>> + Send + '_ {
        let CallRequest {
            route,
            args,
            token,
            headers,
            deadline,
            ..
        } = req;
        let call = CallParts {
            route: &route,
            args: args.into(),
            token: token.as_deref(),
            headers,
            deadline,
        };
        self.dispatch_parts(call, enforce_deadline)
    }

    /// Dispatches a call whose route and token are borrowed: finds the route (`404`), then
    /// runs the framework's call stack ([`middleware::routed`](crate::middleware::routed):
    /// token, deadline, panic recovery, handler). `enforce_deadline` is false for a caller
    /// that runs the handler inside its own future and bounds it by its own timeout (an
    /// in-process call): the stack has no deadline layer then
    /// ([`InPlaceStack`](crate::middleware::routed::InPlaceStack)).
    ///
    /// Not an `async fn`: what is checked up front is done before the future exists, and the
    /// future holds only the running handler (an `async fn` kept its arguments and their
    /// moved copies too, and a transport boxes this future once per call).
    pub(crate) fn dispatch_parts<'s>(
        &'s self,
        call: CallParts<'_>,
        enforce_deadline: bool,
    ) -> impl Future<Output = Result<Reply, HandlerError>> + Send + 's {
        use futures::future::{ready, Either};
        use tower::Service as _;
        let routed = match self.routed(call, enforce_deadline) {
            Ok(routed) => routed,
            Err(unknown) => return Either::Left(ready(Err(unknown))),
        };
        Either::Right(if middleware::trace::enabled() {
            Either::Right(routed::traced_stack().call(routed))
        } else if enforce_deadline {
            Either::Left(Either::Left(routed::call_stack().call(routed)))
        } else {
            Either::Left(Either::Right(routed::in_place_stack().call(routed)))
        })
    }

    /// [`Service::dispatch_parts`] of a call answered in its caller's task while spans are
    /// off: the in-place stack alone, with none of the others' wrappers around its future.
    /// `counting` (metrics on) is told the route found.
    pub(crate) fn dispatch_in_place<'s>(
        &'s self,
        call: CallParts<'_>,
        counting: Option<&mut crate::observe::Counting<'s>>,
    ) -> impl Future<Output = Result<Reply, HandlerError>> + Send + 's {
        use futures::future::{ready, Either};
        use tower::Service as _;
        match self.routed(call, false) {
            Ok(routed) => {
                if let Some(counting) = counting {
                    counting.route_found(routed.route);
                }
                Either::Right(routed::in_place_stack().call(routed))
            }
            Err(unknown) => Either::Left(ready(Err(unknown))),
        }
    }

    /// A call with its route found (`NotFound` when the service has none such) and its
    /// context made.
    #[inline]
    fn routed<'s, 'c>(
        &'s self,
        call: CallParts<'c>,
        enforce_deadline: bool,
    ) -> Result<Routed<'s, 'c>, HandlerError> {
        let CallParts {
            route: path,
            args,
            token,
            headers,
            deadline,
        } = call;
        let Some((path, route)) = self.routes.get_key_value(path) else {
            return Err(HandlerError::new(
                ErrorCode::NotFound,
                format!("no route {path}"),
            ));
        };
        // A deadline given by the transport is the header's, already read.
        let context = match deadline {
            Some(_) => Context { deadline, headers },
            None => Context::from_headers(headers),
        };
        Ok(Routed {
            service: &self.name,
            path,
            route,
            args,
            token,
            context,
            enforce_deadline,
        })
    }

    /// Handles one event. Returns `NotFound` if no handler takes the topic.
    pub async fn handle_event(&self, env: Envelope) -> Result<(), HandlerError> {
        let topic = env.subject.clone();
        let handler = self.events.get(&topic).cloned().ok_or_else(|| {
            HandlerError::new(ErrorCode::NotFound, format!("no handler for topic {topic}"))
        })?;
        let mut headers = env.headers.clone();
        headers.insert("ce-id", env.id.clone());
        let span = middleware::trace::process(&self.name, &topic, &env.id, &mut headers);
        let ctx = Context::from_headers(headers);
        let run = AssertUnwindSafe(context::scope(ctx, handler(env))).catch_unwind();
        let outcome = run
            .await
            .unwrap_or_else(|panic| Err(middleware::panic_error(&topic, panic)));
        if let Some(span) = span {
            span.end(middleware::trace::handler_error(&outcome));
        }
        outcome
    }
}

/// What an event handler may return: `()` or `Result<(), E>`.
pub trait EventOutcome: Send + 'static {
    /// Success, or the error that makes the consumer retry (or dead-letter) the event.
    fn into_outcome(self) -> Result<(), HandlerError>;
}
impl EventOutcome for () {
    fn into_outcome(self) -> Result<(), HandlerError> {
        Ok(())
    }
}
impl<E: Into<HandlerError> + Send + 'static> EventOutcome for Result<(), E> {
    fn into_outcome(self) -> Result<(), HandlerError> {
        self.map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::rpc;
    use crate::values::Args;
    use std::time::Duration;

    async fn protected(a: i64) -> i64 {
        a * 2
    }

    fn svc() -> Service {
        Service::new("t")
            .route("/p", rpc(protected).token("123456"))
            .route("/panic", rpc(|| async { panic!("boom") as i64 }))
            .route(
                "/panic-early",
                rpc(|| -> std::future::Ready<i64> { panic!("before the future") }),
            )
            .route(
                "/slow",
                rpc(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }),
            )
    }

    #[tokio::test]
    async fn tokens_are_enforced() {
        let s = svc();
        let mut req = CallRequest::new("/p", Args::local(2i64));
        let e = s.dispatch(req).await.unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (ErrorCode::Unauthorized, "missing token for /p")
        );
        req = CallRequest::new("/p", Args::local(2i64));
        req.token = Some("12345".into());
        assert_eq!(
            s.dispatch(req).await.unwrap_err().code(),
            ErrorCode::Unauthorized
        );
        req = CallRequest::new("/p", Args::local(2i64));
        req.headers.insert(header::TOKEN, "123456");
        assert_eq!(s.dispatch(req).await.unwrap().decode::<i64>().unwrap(), 4);
    }

    #[tokio::test]
    async fn a_panic_fails_only_that_call() {
        let s = svc();
        let e = s
            .dispatch(CallRequest::new("/panic", Args::local(())))
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Internal);
        assert!(e.message().contains("boom"));
        let e = s
            .dispatch(CallRequest::new("/panic-early", Args::local(())))
            .await
            .unwrap_err();
        assert!(e.message().contains("before the future"), "{e}");
        let mut ok = CallRequest::new("/p", Args::local(1i64));
        ok.token = Some("123456".into());
        assert!(s.dispatch(ok).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_stops_a_slow_handler() {
        let s = svc();
        let mut req = CallRequest::new("/slow", Args::local(()));
        req.headers.set_deadline(Duration::from_millis(50));
        let e = s.dispatch(req).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::DeadlineExceeded);
        let mut req = CallRequest::new("/slow", Args::local(()));
        req.deadline = Some(std::time::Instant::now() + Duration::from_millis(50));
        let e = s.dispatch(req).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::DeadlineExceeded);
    }

    #[test]
    fn assembly_mistakes_are_reported_not_panicked() {
        let s = Service::new("t")
            .route("/a", rpc(protected))
            .route("/a", rpc(protected));
        assert_eq!(s.validate(), Err(ServiceError::DuplicateRoute("/a".into())));
        let s = Service::new("t").route("/a", rpc(protected).params(["x", "y"]));
        assert!(matches!(
            s.validate(),
            Err(ServiceError::ParamCount {
                named: 2,
                arity: 1,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn undecodable_events_are_bad_requests() {
        let s = Service::new("t").on_event("n", |_v: u32| async {});
        let e = s
            .handle_event(Envelope::new("n", "\"text\""))
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadRequest);
        assert!(s.handle_event(Envelope::new("n", "7")).await.is_ok());
        assert_eq!(
            s.handle_event(Envelope::new("other", "7"))
                .await
                .unwrap_err()
                .code(),
            ErrorCode::NotFound
        );
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_is_not_handled() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static RAN: AtomicUsize = AtomicUsize::new(0);
        let service = Service::new("late").route(
            "/work",
            rpc(|| async {
                RAN.fetch_add(1, Ordering::SeqCst);
            }),
        );
        let mut late = CallRequest::new("/work", Args::local(()));
        late.deadline = Some(std::time::Instant::now() - Duration::from_millis(1));
        let err = service.dispatch(late).await.expect_err("answered");
        assert_eq!(err.code(), ErrorCode::DeadlineExceeded);
        assert_eq!(RAN.load(Ordering::SeqCst), 0, "the handler ran for nobody");
    }
}
