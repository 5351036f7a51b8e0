//! The client (the sender in microservices_connector's tutorial): typed calls to a named
//! service with a deadline, and publishing, each through the client's layers.

use std::any::type_name;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use futures::future::{BoxFuture, Either};

use crate::call::{CallParts, CallRequest};
use crate::codec::Codec;
use crate::context::{self, FirstPollOrTimeout};
use crate::error::{CallError, TransportError};
use crate::layer::{self, LayerFn, LayerFor};
use crate::message::{header, Envelope, Headers};
use crate::middleware::breaker::{self, Admission, Breaker};
use crate::middleware::budget::RetryBudget;
use crate::middleware::bulkhead::Bulkhead;
use crate::middleware::{timeout, trace};
use crate::observe::{ClientMetrics, CountedWait};
use crate::policy::CallPolicy;

pub use crate::middleware::breaker::BreakerState;
use crate::transport::{LocalInstance, Transport};
use crate::values::{Args, CallArgs, Reply};

/// Default time a call waits for its reply: finite, so that a lost reply never hangs a caller.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Calls the routes of a named service and publishes events on one transport. Cheap to clone.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::{sync::Arc, time::Duration};
/// use switchyard_core::{client::Client, handler::rpc, mem::MemTransport, server, service::Service};
/// async fn int3(a: f64, key: i64) -> (f64, i64, f64) { (a + key as f64, key * key, a * a) }
/// let bus = Arc::new(MemTransport::new("client-doc"));
/// let _s = server::serve(bus.clone(), Service::new("app1").route("/int3", rpc(int3).params(["a", "key"]))).await.unwrap();
/// let client = Client::new(bus).service("app1").with_timeout(Duration::from_secs(2));
/// let (x, y, z): (f64, i64, f64) = client.request("/int3").arg(3.1427).kwarg("key", 1000000000).send().await.unwrap();
/// assert_eq!(y, 1000000000000000000);
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    transport: Arc<dyn Transport>,
    service: Option<Arc<str>>,
    // A semver requirement on the service's version, sent with each call.
    version: Option<Arc<str>>,
    timeout: Duration,
    tokens: Arc<HashMap<String, String>>,
    codec: Codec,
    call_layers: Vec<LayerFn<CallRequest, Reply, CallError>>,
    publish_layers: Vec<LayerFn<Envelope, (), TransportError>>,
    // The layers composed around the transport; `None` without layers, when a call goes
    // straight to the transport (or, in process, to the served service) with no boxed future.
    calls: Option<Arc<layer::Stack<CallRequest, Reply, CallError>>>,
    publishes: Option<Arc<layer::Stack<Envelope, (), TransportError>>>,
    // Retries, budget and breaker, shared by the client's clones: one destination, one state.
    guard: GuardSlot,
    // In process, without layers: the named service's instance, while it is the only one
    // and the bus's services are unchanged; calls then take no lock to find it.
    local: OnceLock<KeptInstance>,
}

/// The guard in force: fixed, or replaced each time the client's policy changes in the
/// registry's configuration (`Client::policy_from`); only the latter costs a lock a call.
#[derive(Clone)]
enum GuardSlot {
    Fixed(Arc<Guard>),
    Followed(Arc<std::sync::RwLock<Arc<Guard>>>),
}

impl GuardSlot {
    fn fixed(policy: CallPolicy) -> Self {
        Self::Fixed(Arc::new(Guard::new(policy)))
    }

    fn now(&self) -> GuardNow<'_> {
        match self {
            Self::Fixed(guard) => GuardNow::Borrowed(guard),
            Self::Followed(slot) => {
                GuardNow::Owned(slot.read().unwrap_or_else(|p| p.into_inner()).clone())
            }
        }
    }
}

/// The guard a call goes by, from start to end even if the policy changes meanwhile.
enum GuardNow<'a> {
    Borrowed(&'a Guard),
    Owned(Arc<Guard>),
}

impl std::ops::Deref for GuardNow<'_> {
    type Target = Guard;

    fn deref(&self) -> &Guard {
        match self {
            Self::Borrowed(guard) => guard,
            Self::Owned(guard) => guard,
        }
    }
}

/// A client's call policy and the state it keeps: the retry budget and the breaker.
struct Guard {
    policy: CallPolicy,
    budget: RetryBudget,
    breaker: Breaker,
    bulkhead: Bulkhead,
    // Made at the first call, for the destination named then; never when metrics are off.
    metrics: OnceLock<Option<ClientMetrics>>,
}

impl Guard {
    fn new(policy: CallPolicy) -> Self {
        Self {
            budget: RetryBudget::new(&policy),
            breaker: Breaker::new(&policy),
            bulkhead: Bulkhead::new(&policy),
            policy,
            metrics: OnceLock::new(),
        }
    }

    /// The destination's metric handles: labelled with the service's name, or the transport's
    /// URL when the client names none (HTTP).
    fn metrics(&self, client: &Client) -> Option<&ClientMetrics> {
        self.metrics
            .get_or_init(|| {
                crate::observe::enabled().then(|| match client.service.as_deref() {
                    Some(name) => ClientMetrics::new(name),
                    None => ClientMetrics::new(&client.transport.url()),
                })
            })
            .as_ref()
    }

    /// Lets a call through the breaker, or refuses it at once.
    #[inline]
    fn admit(
        &self,
        route: &str,
        now: Instant,
        metrics: Option<&ClientMetrics>,
    ) -> Result<Admission, CallError> {
        self.breaker.admit(now).map_err(|retry_in| {
            if let Some(m) = metrics {
                m.refused.increment(1);
            }
            CallError::CircuitOpen {
                route: route.to_string(),
                retry_in,
            }
        })
    }

    /// Tells the breaker how a call it let through at `started` went (counted in the second
    /// it started: no second clock read).
    #[inline]
    fn settle(
        &self,
        admission: Admission,
        started: Instant,
        outcome: &Result<Reply, CallError>,
        metrics: Option<&ClientMetrics>,
    ) {
        let failed = outcome.as_ref().is_err_and(breaker::destination_failed);
        self.breaker.record(admission, started, failed);
        if let Some(m) = metrics {
            m.call(outcome.is_ok());
            if failed || admission == Admission::Probe {
                m.breaker.set(match self.breaker.state(started) {
                    BreakerState::Closed => 0.0,
                    BreakerState::HalfOpen => 1.0,
                    _ => 2.0,
                });
            }
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("transport", &self.transport.url())
            .field("service", &self.service)
            .field("timeout", &self.timeout)
            .field("layers", &self.call_layers.len())
            .finish()
    }
}

impl Client {
    /// A client on `transport` with the default timeout ([`DEFAULT_TIMEOUT`]), naming no
    /// service yet (see [`Client::service`]).
    pub fn new(transport: Arc<dyn Transport>) -> Self {
        Self {
            transport,
            service: None,
            version: None,
            timeout: DEFAULT_TIMEOUT,
            tokens: Arc::default(),
            codec: Codec::Json,
            call_layers: Vec::new(),
            publish_layers: Vec::new(),
            calls: None,
            publishes: None,
            guard: GuardSlot::fixed(CallPolicy::default()),
            local: OnceLock::new(),
        }
    }

    /// Sets how calls are retried and kept off a failing destination (default
    /// [`CallPolicy::default`]: no route retried, the retry budget and the breaker on). The
    /// client's clones share the breaker and budget; this starts them afresh.
    pub fn policy(mut self, policy: CallPolicy) -> Self {
        self.guard = GuardSlot::fixed(policy);
        self
    }

    /// Takes the call policy from the configuration `key` in `registry` (by convention
    /// `policy/<service>`; `yard config set policy/books '{"max_in_flight": 50}'`): the value
    /// there now, then each change, each read and checked ([`CallPolicy::check`]) before it
    /// replaces the one in force, within the registry's watch delay. A value refused is
    /// logged and the policy in force kept; a key unset keeps the client's own policy. A
    /// change starts the breaker and the retry budget afresh. Set after [`Client::service`],
    /// which starts a destination's own. An error when the registry cannot be read or the
    /// value there now is refused.
    pub async fn policy_from(
        mut self,
        registry: Arc<dyn crate::registry::Registry>,
        key: &str,
    ) -> Result<Self, crate::registry::RegistryError> {
        use futures::StreamExt;
        let mut values = crate::registry::watch_setting::<CallPolicy>(&registry, key).await?;
        let first = match values.next().await {
            Some(Ok(Some(policy))) => policy,
            Some(Ok(None)) | None => self.guard.now().policy.clone(),
            Some(Err(e)) => return Err(e),
        };
        let slot = Arc::new(std::sync::RwLock::new(Arc::new(Guard::new(first))));
        self.guard = GuardSlot::Followed(slot.clone());
        tokio::spawn(crate::registry::setting::follow_setting(
            registry,
            key.to_string(),
            Some(values),
            Arc::downgrade(&slot),
            |slot: &std::sync::RwLock<Arc<Guard>>, policy: Option<CallPolicy>| {
                // Unset: the policy in force stays.
                if let Some(policy) = policy {
                    tracing::info!(target: "switchyard", "call policy changed");
                    *slot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Guard::new(policy));
                }
            },
        ));
        Ok(self)
    }

    /// Calls go to the service named `name`: to one of its instances, never to another
    /// service on the same broker. Over HTTP, where the URL is one service, the name is not
    /// needed; on every other transport a call must name its service.
    pub fn service(mut self, name: impl Into<Arc<str>>) -> Self {
        self.service = Some(name.into());
        self.local = OnceLock::new();
        // Another destination: a breaker and a budget of its own.
        self.guard = GuardSlot::fixed(self.guard.now().policy.clone());
        self
    }

    /// Calls go only to instances whose version meets `requirement`, a semver requirement
    /// (`^2`, `=1.4.0`, `>=1.2, <2`), where the transport picks instances (discovery through
    /// a registry: [`registry::Discovery`](crate::registry::Discovery)).
    pub fn version(mut self, requirement: impl Into<Arc<str>>) -> Self {
        self.version = Some(requirement.into());
        self
    }

    /// The service calls go to, if named.
    pub fn service_name(&self) -> Option<&str> {
        self.service.as_deref()
    }

    /// Wraps every call this client makes in `layer` (a tower [`Layer`](tower::Layer) over a
    /// [`ClientService`](crate::layer::ClientService)). The first layer added is the
    /// outermost. In process, the call to the served service runs inside these layers, as a
    /// transport would.
    pub fn layer(mut self, layer: impl LayerFor<CallRequest, Reply, CallError>) -> Self {
        let Some(layer) = layer.erased().0 else {
            return self;
        };
        self.call_layers.push(layer);
        self.calls = Some(Arc::new(layer::Stack::new(layer::stack(
            &self.call_layers,
            layer::Boxed::from_boxed(TransportCall {
                transport: self.transport.clone(),
                local: Arc::default(),
            }),
        ))));
        self
    }

    /// Wraps every event this client publishes in `layer` (a tower [`Layer`](tower::Layer)
    /// over a [`PublishService`](crate::layer::PublishService)). The first layer added is the
    /// outermost.
    pub fn publish_layer(mut self, layer: impl LayerFor<Envelope, (), TransportError>) -> Self {
        let Some(layer) = layer.erased().0 else {
            return self;
        };
        self.publish_layers.push(layer);
        self.publishes = Some(Arc::new(layer::Stack::new(layer::stack(
            &self.publish_layers,
            layer::Boxed::from_boxed(TransportPublish(self.transport.clone())),
        ))));
        self
    }

    /// Sets how long calls wait for a reply.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `token` with every call of `route` (microservices_connector's `setRule`).
    pub fn with_token(mut self, route: impl Into<String>, token: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.tokens).insert(route.into(), token.into());
        self
    }

    /// Sets the codec of published events (default JSON).
    pub fn with_codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// The transport.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    /// Calls `route` with `args` (a tuple for several arguments, `()` for none) and decodes
    /// the reply as `R` (a tuple for several returned values).
    pub async fn call<A, R>(&self, route: &str, args: A) -> Result<R, CallError>
    where
        A: Serialize + Send + 'static,
        R: DeserializeOwned + 'static,
    {
        // Lent, not boxed: a handler in this task takes it from here.
        let mut lent = Some(args);
        let reply = self
            .send(
                route,
                CallArgs::Lent(&mut lent),
                None,
                self.timeout_for(route),
                None,
                &[],
            )
            .await?;
        decode(route, reply)
    }

    /// Starts a call with positional and keyword arguments.
    pub fn request(&self, route: &str) -> CallBuilder<'_> {
        CallBuilder {
            client: self,
            route: route.to_string(),
            args: Vec::new(),
            kwargs: Map::new(),
            token: None,
            timeout: self.timeout_for(route),
            shard_key: None,
            headers: Vec::new(),
            error: None,
        }
    }

    async fn send(
        &self,
        route: &str,
        args: CallArgs<'_>,
        token: Option<&str>,
        timeout: Duration,
        shard_key: Option<&str>,
        extra: &[(String, String)],
    ) -> Result<Reply, CallError> {
        // Whether this call's latency is measured, if it is answered in process (see
        // `observe::LOCAL_LATENCY_SAMPLE`).
        let timed = crate::observe::enabled() && crate::observe::sample_local_latency();
        let now = crate::clock::call_start(timeout);
        // Inside a handler: pass its trace on and never wait past its deadline.
        let mut headers = Headers::new();
        // The caller's own first: the framework's, set below, are not overridden by them.
        for (name, value) in extra {
            headers.insert(name, value);
        }
        let deadline = context::with_current(|parent| {
            trace::propagate(parent, &mut headers);
            timeout::deadline_of(now, timeout, Some(parent))
        })
        .unwrap_or_else(|| timeout::deadline_of(now, timeout, None));
        if let Some(requirement) = &self.version {
            headers.insert(header::VERSION_REQ, &**requirement);
        }
        if let Some(key) = shard_key {
            headers.insert(header::SHARD_KEY, key);
        }
        // The client span, when spans are on: the call's headers now name it as the parent.
        let mut span = trace::client_call(self.service.as_deref(), route, &mut headers);
        let token = token.or_else(|| self.tokens.get(route).map(String::as_str));
        let guard = self.guard.now();
        let guard = &*guard;
        let metrics = guard.metrics(self);
        // Held until the call ends, however it ends.
        let _slot = match guard.bulkhead.enter(route, now) {
            Ok(slot) => slot,
            Err(e) => return ended(span, Err(e)),
        };
        if !guard.policy.retries(route) {
            let admission = match guard.admit(route, now, metrics) {
                Ok(a) => a,
                Err(e) => return ended(span, Err(e)),
            };
            // The in-process fast path written out here rather than through `attempt`: one
            // future fewer to build and move on every call.
            let outcome = match self.local_instance() {
                Some(served) => {
                    let wait = deadline.saturating_duration_since(now);
                    let call = CallParts {
                        route,
                        args,
                        token,
                        headers,
                        deadline: Some(deadline),
                    };
                    let timed = timed.then(|| {
                        let watch = crate::clock::Stopwatch::start();
                        (watch, crate::observe::LOCAL_LATENCY_SAMPLE)
                    });
                    // A service with no layers, spans off: the in-place stack itself, counted
                    // beside it, without the wrappers of the paths it does not take (nested
                    // `Either`s, each polled and dropped on every call).
                    let outcome = if served.answers_in_place() {
                        let mut counting = served.count_local(timed);
                        let dispatch = served.service().dispatch_in_place(call, counting.as_mut());
                        match counting {
                            None => FirstPollOrTimeout::new(Some(wait), dispatch).await,
                            Some(counting) => {
                                let dispatch = CountedWait::new(&counting, dispatch);
                                let outcome = FirstPollOrTimeout::new(Some(wait), dispatch).await;
                                // Not finished (timed out): counted as the caller leaving, as
                                // it drops.
                                if let Some(result) = &outcome {
                                    counting.finish(result.as_ref().map(|_| ()));
                                }
                                outcome
                            }
                        }
                    } else {
                        FirstPollOrTimeout::new(Some(wait), served.call_local(call, timed)).await
                    };
                    local_outcome(route, wait, outcome)
                }
                None => {
                    self.attempt(route, args, token, headers, deadline, now)
                        .await
                }
            };
            guard.settle(admission, now, &outcome, metrics);
            return ended(span, outcome);
        }
        // An idempotent route: each attempt's arguments and headers are a copy, within the
        // retry budget and the call's deadline.
        guard.budget.deposit(now);
        let Some(args) = args.into_owned() else {
            return ended(span, Err(arguments_taken(route)));
        };
        let copy = match args.wire_copy() {
            Ok(copy) => copy,
            Err(e) => {
                let reason = e.to_string();
                let route = route.to_string();
                return ended(span, Err(CallError::Encode { route, reason }));
            }
        };
        let (mut args, mut attempt) = (args, 1u32);
        loop {
            let started = Instant::now();
            let admission = match guard.admit(route, started, metrics) {
                Ok(a) => a,
                Err(e) => return ended(span, Err(e)),
            };
            let outcome = self
                .attempt(
                    route,
                    args.into(),
                    token,
                    headers.clone(),
                    deadline,
                    started,
                )
                .await;
            guard.settle(admission, started, &outcome, metrics);
            let error = match outcome {
                Err(e) if attempt < guard.policy.attempts(route) && breaker::retryable(&e) => e,
                done => return ended(span, done),
            };
            let cap = guard.policy.backoff_cap(attempt);
            let pause = Duration::from_nanos(fastrand::u64(
                0..=u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX),
            ));
            let now = Instant::now();
            if now + pause >= deadline {
                return ended(span, Err(error));
            }
            if !guard.budget.withdraw(now) {
                if let Some(m) = metrics {
                    m.budget_exhausted.increment(1);
                }
                return ended(span, Err(error));
            }
            if let Some(m) = metrics {
                m.retries.increment(1);
            }
            if let Some(span) = &mut span {
                span.event(
                    "retry",
                    vec![
                        opentelemetry::KeyValue::new("rpc.attempt", i64::from(attempt) + 1),
                        opentelemetry::KeyValue::new("error.message", error.to_string()),
                    ],
                );
            }
            tracing::debug!(target: "switchyard", route, attempt, ?pause, %error, "retrying");
            tokio::time::sleep(pause).await;
            let (args_copy, kwargs_copy) = copy.clone();
            args = Args::Wire {
                args: args_copy,
                kwargs: kwargs_copy,
            };
            attempt += 1;
        }
    }

    /// One attempt at a call, bounded by the call's deadline.
    async fn attempt(
        &self,
        route: &str,
        args: CallArgs<'_>,
        token: Option<&str>,
        headers: Headers,
        deadline: Instant,
        now: Instant,
    ) -> Result<Reply, CallError> {
        let wait = deadline.saturating_duration_since(now);
        // Without layers, in process: call the service directly, in this task; our timeout
        // bounds it. With layers, the in-process call is their innermost service instead.
        if let Some(served) = self.local_instance() {
            let call = CallParts {
                route,
                args,
                token,
                headers,
                deadline: Some(deadline),
            };
            // An attempt of a retried call: measured, as each is its own (rare) call.
            let timed = crate::observe::enabled().then(|| (crate::clock::Stopwatch::start(), 1));
            let outcome = FirstPollOrTimeout::new(Some(wait), served.call_local(call, timed)).await;
            return local_outcome(route, wait, outcome);
        }
        let Some(args) = args.into_owned() else {
            return Err(arguments_taken(route));
        };
        let request = CallRequest {
            service: self.service.clone(),
            route: route.to_string(),
            args,
            token: token.map(str::to_string),
            headers,
            deadline: Some(deadline),
            bounded_by_caller: false,
        };
        let call = match (&self.calls, self.transport.requester()) {
            (Some(stack), _) => Either::Left(stack.call_once(request)),
            (None, Some(requester)) => Either::Right(requester.request(request)),
            (None, None) => return Err(no_request_reply(self.transport.as_ref())),
        };
        match FirstPollOrTimeout::new(Some(wait), call).await {
            Some(Err(CallError::Remote { error, .. })) => Err(timeout::remote(route, wait, error)),
            Some(r) => r,
            None => Err(timeout::timed_out(route, wait)),
        }
    }

    /// Without client layers, in process: the named service's instance, called directly in
    /// this task (the client's timeout bounds it). With layers, the in-process call is their
    /// innermost service instead.
    #[inline(always)]
    fn local_instance(&self) -> Option<Arc<crate::served::Served>> {
        let (None, Some(name)) = (&self.calls, self.service.as_deref()) else {
            return None;
        };
        local_instance(self.transport.as_ref(), name, &self.local)
    }

    /// How long a call of `route` waits: the policy's timeout for the route, else the
    /// client's.
    #[inline]
    fn timeout_for(&self, route: &str) -> Duration {
        self.guard
            .now()
            .policy
            .timeout(route)
            .unwrap_or(self.timeout)
    }

    /// The call policy in force (retries, budget, breaker).
    pub fn call_policy(&self) -> CallPolicy {
        self.guard.now().policy.clone()
    }

    /// Where this client's circuit breaker stands.
    pub fn breaker_state(&self) -> BreakerState {
        self.guard.now().breaker.state(Instant::now())
    }

    /// Publishes `value` on `topic`, encoded with the client's codec.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<(), TransportError> {
        self.publish_envelope(self.event(topic, value)?).await
    }

    /// An event envelope for `value` on `topic`, to add headers (an ordering key…) before
    /// [`Client::publish_envelope`].
    pub fn event<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<Envelope, TransportError> {
        let payload = self
            .codec
            .encode(value)
            .map_err(|e| TransportError::Other(Box::new(e)))?;
        let mut env = Envelope::new(topic, payload);
        env.headers
            .insert(header::CONTENT_TYPE, self.codec.content_type());
        context::with_current(|parent| trace::propagate(parent, &mut env.headers));
        Ok(env)
    }

    /// Publishes a ready envelope.
    pub async fn publish_envelope(&self, mut envelope: Envelope) -> Result<(), TransportError> {
        let span = trace::publish(&envelope.subject, &envelope.id, &mut envelope.headers);
        let published = match &self.publishes {
            None => self.transport.publish(envelope).await,
            Some(stack) => stack.call_once(envelope).await,
        };
        if let Some(span) = span {
            span.end(
                published
                    .as_ref()
                    .err()
                    .map(|e| ("publish".to_string(), e.to_string())),
            );
        }
        published
    }
}

/// `outcome`, the client span (if any) ended with it.
#[inline]
fn ended(
    span: Option<trace::HopSpan>,
    outcome: Result<Reply, CallError>,
) -> Result<Reply, CallError> {
    if let Some(span) = span {
        trace::end_call(span, &outcome);
    }
    outcome
}

/// The outcome of an in-process call bounded by `wait` (`None`: it timed out).
#[inline]
fn local_outcome(
    route: &str,
    wait: Duration,
    outcome: Option<Result<Reply, crate::error::HandlerError>>,
) -> Result<Reply, CallError> {
    match outcome {
        Some(Ok(reply)) => Ok(reply),
        Some(Err(e)) => Err(timeout::remote(route, wait, e.into_remote())),
        None => Err(timeout::timed_out(route, wait)),
    }
}

/// The instance of the service `name` in this process, if `transport` has one: `kept` while
/// it may be kept, else asked of the transport.
#[inline(always)]
fn local_instance(
    transport: &dyn Transport,
    name: &str,
    kept: &OnceLock<KeptInstance>,
) -> Option<Arc<crate::served::Served>> {
    if let Some(served) = kept.get().and_then(KeptInstance::current) {
        return Some(served);
    }
    let found = transport.local(name)?;
    // Kept by the first pick that may be kept; once the bus's services change, this client
    // asks the bus on every call (a lock and a count) instead.
    if let Some(instance) = KeptInstance::of(&found) {
        let _ = kept.set(instance);
    }
    Some(found.served().clone())
}

/// An in-process instance a client keeps calling while it is the only one of its service and
/// the bus's services are unchanged: no lock taken to find it. Held weakly: a call holds the
/// instance while it runs, and a stopping server waits for those calls, not for its clients.
#[derive(Clone)]
struct KeptInstance {
    served: std::sync::Weak<crate::served::Served>,
    while_unchanged: crate::transport::Unchanged,
}

impl KeptInstance {
    fn of(found: &LocalInstance) -> Option<Self> {
        found.kept().map(|unchanged| Self {
            served: Arc::downgrade(found.served()),
            while_unchanged: unchanged.clone(),
        })
    }

    #[inline]
    fn current(&self) -> Option<Arc<crate::served::Served>> {
        if self.while_unchanged.holds() {
            self.served.upgrade()
        } else {
            None
        }
    }
}

/// A call whose lent arguments were taken before it was sent: a fault of the framework's,
/// said rather than hidden.
fn arguments_taken(route: &str) -> CallError {
    CallError::Encode {
        route: route.to_string(),
        reason: "the call's arguments were taken before it was sent".into(),
    }
}

fn no_request_reply(transport: &dyn Transport) -> CallError {
    CallError::Transport(TransportError::Unsupported {
        transport: transport.name(),
        operation: "request/reply",
    })
}

/// The innermost service of a client's call stack: the transport, or in process the served
/// service itself.
#[derive(Clone)]
struct TransportCall {
    transport: Arc<dyn Transport>,
    // In process: the instance kept, as a client without layers keeps it.
    local: Arc<OnceLock<KeptInstance>>,
}

impl tower::Service<CallRequest> for TransportCall {
    type Response = Reply;
    type Error = CallError;
    type Future = BoxFuture<'static, Result<Reply, CallError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), CallError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: CallRequest) -> Self::Future {
        // In process: the named service's instance, called in this task as a call without
        // layers is (its route and token lent, its latency sampled), within the client's
        // timeout, which awaits this stack: the instance arms no timer of its own.
        let local = request
            .service
            .as_deref()
            .and_then(|name| local_instance(self.transport.as_ref(), name, &self.local));
        if let Some(served) = local {
            return Box::pin(async move {
                let CallRequest {
                    route,
                    args,
                    token,
                    headers,
                    deadline,
                    ..
                } = request;
                let call = CallParts {
                    route: &route,
                    args: args.into(),
                    token: token.as_deref(),
                    headers,
                    deadline,
                };
                let timed = crate::observe::local_latency_sample();
                let outcome = served.call_local(call, timed).await;
                outcome.map_err(|e| CallError::Remote {
                    route,
                    error: e.into_remote(),
                })
            });
        }
        let transport = self.transport.clone();
        Box::pin(async move {
            match transport.requester() {
                Some(requester) => requester.request(request).await,
                None => Err(no_request_reply(transport.as_ref())),
            }
        })
    }
}

/// The innermost service of a client's publish stack: the transport.
#[derive(Clone)]
struct TransportPublish(Arc<dyn Transport>);

impl tower::Service<Envelope> for TransportPublish {
    type Response = ();
    type Error = TransportError;
    type Future = BoxFuture<'static, Result<(), TransportError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), TransportError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, envelope: Envelope) -> Self::Future {
        let transport = self.0.clone();
        Box::pin(async move { transport.publish(envelope).await })
    }
}

fn decode<R: DeserializeOwned + 'static>(route: &str, reply: Reply) -> Result<R, CallError> {
    reply.decode::<R>().map_err(|reason| CallError::Decode {
        route: route.to_string(),
        expected: type_name::<R>(),
        reason,
    })
}

/// A call being put together: positional arguments, keyword arguments, token, timeout.
#[derive(Debug)]
#[must_use = "a call does nothing until `.send()` is awaited"]
pub struct CallBuilder<'a> {
    client: &'a Client,
    route: String,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    token: Option<String>,
    timeout: Duration,
    shard_key: Option<String>,
    headers: Vec<(String, String)>,
    error: Option<CallError>,
}

impl CallBuilder<'_> {
    fn encode<T: Serialize>(&mut self, value: T) -> Option<Value> {
        match serde_json::to_value(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.error.get_or_insert(CallError::Encode {
                    route: self.route.clone(),
                    reason: e.to_string(),
                });
                None
            }
        }
    }

    /// Adds a positional argument.
    pub fn arg<T: Serialize>(mut self, value: T) -> Self {
        if let Some(v) = self.encode(value) {
            self.args.push(v);
        }
        self
    }

    /// Adds several positional arguments already in JSON form.
    pub fn args(mut self, values: impl IntoIterator<Item = Value>) -> Self {
        self.args.extend(values);
        self
    }

    /// Adds a keyword argument.
    pub fn kwarg<T: Serialize>(mut self, name: &str, value: T) -> Self {
        if let Some(v) = self.encode(value) {
            self.kwargs.insert(name.to_string(), v);
        }
        self
    }

    /// Sends the call to the instance that owns `key` (consistent hashing where the transport
    /// picks instances: [`registry::Discovery`](crate::registry::Discovery)): every call with
    /// the same key goes to the same instance while the set of instances stays, and an
    /// instance joining takes about 1/(N+1) of the keys, from the others evenly.
    pub fn shard_key(mut self, key: impl Into<String>) -> Self {
        self.shard_key = Some(key.into());
        self
    }

    /// Sends `name: value` with the call: the handler sees it, and a rule of the service's
    /// version route can match it ([`VersionRule`](crate::registry::VersionRule)). Over HTTP,
    /// names travel in lower case.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sends this token (overrides the client's token for the route).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Waits at most `timeout` for this call.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends the call and decodes the reply as `R`.
    pub async fn send<R: DeserializeOwned + 'static>(self) -> Result<R, CallError> {
        let route = self.route.clone();
        let reply = self.send_raw().await?;
        decode(&route, reply)
    }

    /// Sends the call and returns the reply's wire values (one per returned value).
    pub async fn send_values(self) -> Result<Vec<Value>, CallError> {
        let route = self.route.clone();
        let reply = self.send_raw().await?;
        match reply {
            Reply::Wire(v) => Ok(v),
            local => local.into_values().map_err(|e| CallError::Decode {
                route,
                expected: "JSON values",
                reason: e.to_string(),
            }),
        }
    }

    async fn send_raw(self) -> Result<Reply, CallError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let args = Args::Wire {
            args: self.args,
            kwargs: self.kwargs,
        };
        self.client
            .send(
                &self.route,
                args.into(),
                self.token.as_deref(),
                self.timeout,
                self.shard_key.as_deref(),
                &self.headers,
            )
            .await
    }
}
