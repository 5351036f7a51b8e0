//! Calls addressed to a service by name and sent to one of its instances found in a registry:
//! [`Discovery`] is a transport whose requester resolves the call's service, picks an instance
//! and sends the call over that instance's own transport.
//!
//! - The instances of a service are listed at its first call, then watched: a change reaches
//!   the next call. While the registry is unreachable the last set known is kept, and listed
//!   again once it answers.
//! - Instances are grouped by address: on a broker every instance of a service shares the
//!   broker's URL, and the broker spreads the calls among them; over HTTP each instance is an
//!   address of its own, picked here.
//! - [`Balance::RoundRobin`] takes the addresses in turn; [`Balance::PeakEwma`] (the default,
//!   Finagle's and Linkerd's choice) picks the better of two at random by peak-EWMA latency
//!   times calls in flight; a failure counts as a slow call (an instance that fails fast must
//!   not attract traffic), and an address failing five times in a row is left out for 10 s.
//! - A call with a version requirement (`Client::version("^2")`) goes only to instances whose
//!   version meets it; when none does, the error names the versions registered.
//! - A call with a shard key (`CallBuilder::shard_key`) goes to the address owning the key by
//!   rendezvous hashing, the same for every caller.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::StreamExt;

use super::{Change, Health, Instance, Registry};
use crate::call::CallRequest;
use crate::error::{CallError, TransportError};
use crate::message::{header, Envelope};
use crate::transport::{
    Capabilities, DeliveryGuarantee, Ordering as DeliveryOrdering, Publisher, Requester,
    SubscribeOptions, Subscriber, Subscription, Transport,
};
use crate::values::Reply;

/// Makes the transport of an address (the facade's `switchyard::connect`).
pub type Connector = Arc<dyn Fn(&str) -> Result<Arc<dyn Transport>, TransportError> + Send + Sync>;

/// How an instance is picked among those of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Balance {
    /// In turn.
    RoundRobin,
    /// The better of two picked at random, by peak-EWMA latency times calls in flight.
    #[default]
    PeakEwma,
}

/// Failures in a row after which an address is left out for [`EJECT_FOR`].
pub const EJECT_AFTER: u32 = 5;
/// How long an address failing repeatedly is left out.
pub const EJECT_FOR: Duration = Duration::from_secs(10);
/// How long a failed call counts as having taken, at least: failing fast is not fast.
const FAILURE_COST: Duration = Duration::from_secs(1);
/// How fast what is known of an address's latency fades when no call refreshes it (the time
/// for it to fall to 1/e; tower's and Finagle's default): an address once slow, and so passed
/// over by every pick, is worth trying again a while later rather than never.
const LATENCY_FADES_MS: f64 = 10_000.0;
/// How soon an unreachable registry is asked again.
const RESYNC_EVERY: Duration = Duration::from_secs(1);

/// A transport that finds services in a registry. See the module's notes.
pub struct Discovery {
    registry: Arc<dyn Registry>,
    connect: Connector,
    balance: Balance,
    services: Mutex<HashMap<String, Arc<Known>>>,
    transports: Mutex<HashMap<String, Arc<dyn Transport>>>,
    /// Turns over the instances of a service without a broker, publish after publish.
    next_publish: AtomicUsize,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("registry", &self.registry.url())
            .field("balance", &self.balance)
            .finish_non_exhaustive()
    }
}

/// One address of a service, and what the balancer knows of it.
#[derive(Debug)]
struct Endpoint {
    address: String,
    /// The address's stable hash, for rendezvous hashing of shard keys.
    address_hash: u64,
    instances: Vec<Instance>,
    ewma_ns: AtomicU64,
    /// When `ewma_ns` was last set (ms since `Known::epoch`).
    ewma_at_ms: AtomicU64,
    in_flight: AtomicU32,
    failures: AtomicU32,
    /// Left out until then (ms since `Known::epoch`), 0 when not.
    ejected_until_ms: AtomicU64,
    /// The address's transport, once a call needed it: no lookup by address per call.
    transport: std::sync::OnceLock<Arc<dyn Transport>>,
}

/// A call counted in flight on an endpoint for as long as it lives (a call its caller gave
/// up on is dropped, not finished).
struct InFlight<'a>(&'a Endpoint);

impl<'a> InFlight<'a> {
    fn enter(endpoint: &'a Endpoint) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(endpoint)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Endpoint {
    fn new(address: String, instances: Vec<Instance>) -> Self {
        Self {
            address_hash: crate::shards::stable_hash(&address),
            address,
            instances,
            ewma_ns: AtomicU64::new(0),
            ewma_at_ms: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            transport: std::sync::OnceLock::new(),
        }
    }

    /// Whether an instance at this address says it serves.
    fn serving(&self) -> bool {
        self.instances.iter().any(|i| i.health == Health::Serving)
    }

    /// The latency estimate at `now_ms`, faded by the time since it was last set.
    fn ewma_at(&self, now_ms: u64) -> u64 {
        let ewma = self.ewma_ns.load(Ordering::Relaxed);
        let since = now_ms.saturating_sub(self.ewma_at_ms.load(Ordering::Relaxed));
        if since == 0 || ewma == 0 {
            return ewma;
        }
        // Precision lost in the float round trip is far below what a pick can tell apart.
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let faded = (ewma as f64 * (-(since as f64) / LATENCY_FADES_MS).exp()) as u64;
        faded
    }

    fn cost(&self, now_ms: u64) -> u64 {
        let ewma = self.ewma_at(now_ms).max(1);
        ewma.saturating_mul(u64::from(self.in_flight.load(Ordering::Relaxed)) + 1)
    }

    /// Records a call's latency: a higher one is taken at once (peak), a lower one pulls the
    /// (faded) average down by a quarter of the difference.
    fn record(&self, took: Duration, failed: bool, now_ms: u64) {
        let took = if failed { took.max(FAILURE_COST) } else { took };
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let old = self.ewma_at(now_ms);
        let new = if sample >= old || old == 0 {
            sample
        } else {
            old - (old - sample) / 4
        };
        self.ewma_ns.store(new, Ordering::Relaxed);
        self.ewma_at_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Forgets what is known of the address's latency: it comes back (from ejection, or from
    /// not being ready) as a new address would, tried at once rather than judged by the
    /// calls that had it left out.
    fn forget_latency(&self) {
        self.ewma_ns.store(0, Ordering::Relaxed);
    }
}

/// How a service's calls are routed among its versions: the configuration value
/// `route/<service>` in the registry (`yard route`, `yard config set`), followed by every
/// caller, so that a shift or a rollback is one change that reaches the calls within a
/// second. Rules come first: a call that one matches (by a header it carries, or by its shard
/// key) goes to that rule's versions; the other calls are split by weight. A caller's own
/// version requirement (`Client::version`) comes before both. A rule or a share whose
/// versions nobody serves falls through to the route's other versions rather than failing
/// the call.
///
/// ```
/// use switchyard_core::registry::VersionRoute;
/// let route: VersionRoute = serde_json::from_str(
///     r#"{"rules": [{"header": "x-canary", "equals": "1", "version": "^2"},
///                  {"keys": ["tenant-7"], "version": "^2"}],
///        "split": [{"version": "^1", "weight": 90}, {"version": "^2", "weight": 10}]}"#,
/// )
/// .unwrap();
/// assert!(route.check().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct VersionRoute {
    /// Rules, the first that matches a call deciding its versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<VersionRule>,
    /// Requirements and their shares of the calls no rule matched.
    #[serde(default)]
    pub split: Vec<WeightedVersion>,
}

/// One share of a [`VersionRoute`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedVersion {
    /// A semver requirement (`^2`, `=1.4.0`).
    pub version: String,
    /// Its share, relative to the others'.
    pub weight: u32,
}

/// A rule of a [`VersionRoute`]: calls carrying `header` (equal to `equals`, when given), or
/// whose shard key is one of `keys`, go to the instances meeting `version`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct VersionRule {
    /// A header the call carries (its name in any case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The header's value, when the rule wants one value only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    /// Shard keys (`CallBuilder::shard_key`) the rule takes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// A semver requirement.
    pub version: String,
}

impl VersionRoute {
    /// The configuration key of `service`'s route.
    pub fn key(service: &str) -> String {
        format!("route/{service}")
    }

    /// Every requirement parses, every rule matches something, and a split has some weight.
    pub fn check(&self) -> Result<(), String> {
        if self.rules.is_empty() && self.split.is_empty() {
            return Err("a route needs rules or a split".into());
        }
        if !self.split.is_empty() && self.split.iter().all(|w| w.weight == 0) {
            return Err("a route needs a share with a weight above 0".into());
        }
        for rule in &self.rules {
            if rule.header.is_none() && rule.keys.is_empty() {
                return Err(format!(
                    "the rule for {:?} names no header and no keys",
                    rule.version
                ));
            }
            if rule.equals.is_some() && rule.header.is_none() {
                return Err(format!(
                    "the rule for {:?}: equals without a header",
                    rule.version
                ));
            }
        }
        let versions = self.rules.iter().map(|r| &r.version);
        for v in versions.chain(self.split.iter().map(|w| &w.version)) {
            semver::VersionReq::parse(v).map_err(|e| format!("version requirement {v:?}: {e}"))?;
        }
        Ok(())
    }

    fn parsed(&self) -> Result<ParsedRoute, String> {
        self.check()?;
        let req = |v: &str| semver::VersionReq::parse(v).map_err(|e| e.to_string());
        Ok(ParsedRoute {
            rules: self
                .rules
                .iter()
                .map(|r| Ok((r.clone(), req(&r.version)?)))
                .collect::<Result<_, String>>()?,
            split: self
                .split
                .iter()
                .map(|w| Ok((req(&w.version)?, w.weight)))
                .collect::<Result<_, String>>()?,
        })
    }
}

/// A route parsed: its rules and its split, each with its requirement.
#[derive(Debug)]
struct ParsedRoute {
    rules: Vec<(VersionRule, semver::VersionReq)>,
    split: Vec<(semver::VersionReq, u32)>,
}

impl ParsedRoute {
    /// The requirement of the first rule the call matches.
    fn rule_for(
        &self,
        headers: &crate::message::Headers,
        shard: Option<&str>,
    ) -> Option<&semver::VersionReq> {
        self.rules.iter().find_map(|(rule, req)| {
            let by_header = rule.header.as_deref().is_some_and(|name| {
                headers
                    .get(name)
                    .is_some_and(|v| rule.equals.as_deref().is_none_or(|want| want == v))
            });
            let by_key = shard.is_some_and(|k| rule.keys.iter().any(|want| want == k));
            (by_header || by_key).then_some(req)
        })
    }

    /// Whether an instance meets one of the route's requirements.
    fn any(&self, i: &Instance) -> bool {
        self.split.iter().any(|(r, w)| *w > 0 && meets(r, i))
            || self.rules.iter().any(|(_, r)| meets(r, i))
    }
}

/// A route in force.
type RouteInForce = Arc<ParsedRoute>;

/// The known instances of one service.
struct Known {
    service: String,
    endpoints: RwLock<Arc<Vec<Arc<Endpoint>>>>,
    /// The service's version route, parsed, if it has one.
    route: RwLock<Option<RouteInForce>>,
    next: AtomicUsize,
    epoch: Instant,
}

impl Known {
    /// Replaces the set, keeping what is known of the addresses that stay.
    fn set(&self, instances: Vec<Instance>) {
        let mut by_address: Vec<(String, Vec<Instance>)> = Vec::new();
        for i in instances {
            let Some(address) = i.addresses.first().cloned() else {
                continue;
            };
            match by_address.iter_mut().find(|(a, _)| *a == address) {
                Some((_, list)) => list.push(i),
                None => by_address.push((address, vec![i])),
            }
        }
        let mut endpoints = self.endpoints.write().unwrap_or_else(|p| p.into_inner());
        let kept: Vec<Arc<Endpoint>> = by_address
            .into_iter()
            .map(
                |(address, instances)| match endpoints.iter().find(|e| e.address == address) {
                    Some(old) if old.instances == instances => old.clone(),
                    Some(old) => {
                        let e = Endpoint::new(address, instances);
                        // Health changed: one back to serving starts afresh; otherwise what is
                        // known of the address stays.
                        if !e.serving() || old.serving() {
                            e.ewma_ns
                                .store(old.ewma_ns.load(Ordering::Relaxed), Ordering::Relaxed);
                            e.ewma_at_ms
                                .store(old.ewma_at_ms.load(Ordering::Relaxed), Ordering::Relaxed);
                        }
                        Arc::new(e)
                    }
                    None => Arc::new(Endpoint::new(address, instances)),
                },
            )
            .collect();
        *endpoints = Arc::new(kept);
    }

    /// Takes `route` (checked) as the service's route; `None`: no route any more.
    fn set_route(&self, route: Option<VersionRoute>) {
        let parsed = match route.map(|r| r.parsed()).transpose() {
            Ok(parsed) => parsed.map(Arc::new),
            Err(e) => {
                tracing::warn!(target: "switchyard", service = %self.service, error = %e, "invalid version route ignored; the one in force is kept");
                return;
            }
        };
        *self.route.write().unwrap_or_else(|p| p.into_inner()) = parsed;
    }

    /// The service's route, if it has one.
    fn route(&self) -> Option<RouteInForce> {
        self.route.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A requirement drawn by weight from the service's route, if it has one.
    ///
    /// With a shard `key`, the draw is the key's own (its hash placed among the weights), so
    /// that a key keeps its version, and so its instance, while the split stays; without one,
    /// each call draws anew.
    fn draw(&self, key: Option<&str>) -> Option<(semver::VersionReq, RouteInForce)> {
        let route = self.route()?;
        let total: u64 = route.split.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return None;
        }
        let mut at = match key {
            // Stable, as the owner's: every caller draws a key's version alike.
            Some(key) => mix(crate::shards::stable_hash(key)) % total,
            None => fastrand::u64(..total),
        };
        for (req, weight) in route.split.iter() {
            if at < u64::from(*weight) {
                return Some((req.clone(), route.clone()));
            }
            at -= u64::from(*weight);
        }
        None
    }

    /// The address owning `key` among those with an instance `wanted` accepts: rendezvous
    /// hashing (the highest hash of key and address wins), so that a joining address takes
    /// only the keys it now wins, about 1/(N+1) of them, and a leaving one gives away only
    /// its own. Ejected addresses are passed over like absent ones.
    fn owner(&self, key: &str, wanted: impl Fn(&Instance) -> bool) -> Option<Arc<Endpoint>> {
        let endpoints = self
            .endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let now = self.now_ms();
        // FNV-1a of the key, mixed with each address's: stable across processes, builds and
        // Rust releases (`DefaultHasher`, used before, promises no stability across releases,
        // and two callers built apart must agree on a key's owner), and a third of the cost.
        let key_hash = crate::shards::stable_hash(key);
        endpoints
            .iter()
            .filter(|e| e.instances.iter().any(&wanted))
            .filter(|e| e.ejected_until_ms.load(Ordering::Relaxed) <= now)
            .max_by_key(|e| rendezvous(key_hash, e.address_hash))
            .cloned()
    }

    fn instances(&self) -> Vec<Instance> {
        self.endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flat_map(|e| e.instances.iter().cloned())
            .collect()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// An address to call, among those with an instance `wanted` accepts.
    fn pick(&self, balance: Balance, wanted: impl Fn(&Instance) -> bool) -> Option<Arc<Endpoint>> {
        // Counted and indexed in place, not collected: a pick allocates nothing.
        let all = self
            .endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let now = self.now_ms();
        let usable = |e: &Endpoint| e.instances.iter().any(&wanted);
        let live = |e: &Endpoint| {
            usable(e) && e.serving() && e.ejected_until_ms.load(Ordering::Relaxed) <= now
        };
        let mut n = all.iter().filter(|e| live(e)).count();
        // Every address ejected or not ready: better to try one than to fail without trying.
        let candidate: &dyn Fn(&Endpoint) -> bool = if n == 0 {
            n = all.iter().filter(|e| usable(e)).count();
            &usable
        } else {
            &live
        };
        let nth = |k: usize| all.iter().filter(|e| candidate(e)).nth(k).cloned();
        match (n, balance) {
            (0, _) => None,
            (1, _) => nth(0),
            (n, Balance::RoundRobin) => nth(self.next.fetch_add(1, Ordering::Relaxed) % n),
            (n, _) => {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let (a, b) = (nth(a)?, nth(b)?);
                Some(if a.cost(now) <= b.cost(now) { a } else { b })
            }
        }
    }
}

impl Discovery {
    /// Finds services in `registry`, reaching each address through `connect`.
    pub fn new(registry: Arc<dyn Registry>, connect: Connector) -> Self {
        Self {
            registry,
            connect,
            balance: Balance::default(),
            services: Mutex::default(),
            transports: Mutex::default(),
            next_publish: AtomicUsize::new(0),
        }
    }

    /// Picks instances with `balance`.
    pub fn balance(mut self, balance: Balance) -> Self {
        self.balance = balance;
        self
    }

    /// The instances of `service` known now (listing them at the first ask).
    pub async fn instances(&self, service: &str) -> Result<Vec<Instance>, CallError> {
        Ok(self.known(service).await?.instances())
    }

    fn registry_error(&self, e: impl std::error::Error + Send + Sync + 'static) -> CallError {
        CallError::Unreachable {
            target: self.registry.url(),
            source: Box::new(e),
        }
    }

    /// The service's known instances: listed now at its first call, then kept up to date by
    /// a watch of its own.
    async fn known(&self, service: &str) -> Result<Arc<Known>, CallError> {
        if let Some(k) = self
            .services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(service)
        {
            return Ok(k.clone());
        }
        let first = self
            .registry
            .list(Some(service))
            .await
            .map_err(|e| self.registry_error(e))?;
        let known = Arc::new(Known {
            service: service.to_string(),
            endpoints: RwLock::default(),
            route: RwLock::default(),
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
        });
        known.set(first);
        // The route as it is now, before the first call: a split applies from the start.
        let key = VersionRoute::key(service);
        match super::read_setting::<VersionRoute>(self.registry.as_ref(), &key).await {
            Ok(route) => known.set_route(route),
            Err(e) => {
                tracing::warn!(target: "switchyard", error = %e, "version route not applied")
            }
        }
        let mut services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        // Another call may have listed it meanwhile: one watch per service.
        if let Some(k) = services.get(service) {
            return Ok(k.clone());
        }
        services.insert(service.to_string(), known.clone());
        tokio::spawn(follow(self.registry.clone(), Arc::downgrade(&known)));
        tokio::spawn(super::setting::follow_setting(
            self.registry.clone(),
            key,
            None,
            Arc::downgrade(&known),
            |known: &Known, route: Option<VersionRoute>| known.set_route(route),
        ));
        Ok(known)
    }

    fn transport(&self, address: &str) -> Result<Arc<dyn Transport>, TransportError> {
        let mut transports = self.transports.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = transports.get(address) {
            return Ok(t.clone());
        }
        let t = (self.connect)(address)?;
        transports.insert(address.to_string(), t.clone());
        Ok(t)
    }
}

/// Keeps `known` up to date from the registry's changes, listing again after a failure, until
/// nobody holds `known` any more.
async fn follow(registry: Arc<dyn Registry>, known: Weak<Known>) {
    loop {
        let Some(service) = known.upgrade().map(|k| k.service.clone()) else {
            return;
        };
        let watched = registry.watch(Some(&service)).await;
        // Listed again after the watch began: nothing that changed in between is missed.
        let listed = registry.list(Some(&service)).await;
        match (watched, listed) {
            (Ok(mut changes), Ok(now)) => {
                let Some(k) = known.upgrade() else { return };
                // Kept by id and changed as the watch says: not listed again at each change.
                let mut current: std::collections::BTreeMap<String, Instance> =
                    now.into_iter().map(|i| (i.id.clone(), i)).collect();
                k.set(current.values().cloned().collect());
                drop(k);
                while let Some(change) = changes.next().await {
                    let Some(k) = known.upgrade() else { return };
                    match change {
                        Ok(Change::Up(i)) => {
                            current.insert(i.id.clone(), i);
                            k.set(current.values().cloned().collect());
                        }
                        Ok(Change::Down { id, .. }) => {
                            current.remove(&id);
                            k.set(current.values().cloned().collect());
                        }
                        Err(e) => {
                            tracing::warn!(target: "switchyard", %service, error = %e, "registry watch failed: keeping the instances known");
                            break;
                        }
                    }
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(target: "switchyard", %service, error = %e, "registry unreachable: keeping the instances known");
            }
        }
        tokio::time::sleep(RESYNC_EVERY).await;
    }
}

fn meets(req: &semver::VersionReq, i: &Instance) -> bool {
    i.version
        .as_deref()
        .and_then(|v| semver::Version::parse(v).ok())
        .is_some_and(|v| req.matches(&v))
}

impl Requester for Discovery {
    fn request(&self, request: CallRequest) -> BoxFuture<'_, Result<Reply, CallError>> {
        Box::pin(async move {
            let Some(service) = request.service.clone() else {
                return Err(CallError::NoService {
                    route: request.route,
                    transport: self.url(),
                });
            };
            let known = self.known(&service).await?;
            let requirement = match request.headers.get(header::VERSION_REQ) {
                None => None,
                Some(r) => Some((
                    r.to_string(),
                    semver::VersionReq::parse(r).map_err(|e| CallError::Encode {
                        route: request.route.clone(),
                        reason: format!("version requirement {r:?}: {e}"),
                    })?,
                )),
            };
            // The caller's own requirement wins; otherwise the service's route draws one,
            // and when nothing meets the one drawn, any of the route's will do (a share
            // whose instances are gone must not fail calls).
            let shard = request.headers.get(header::SHARD_KEY).map(str::to_string);
            // A rule of the route the call matches, unless the caller asked for versions.
            let ruled = match &requirement {
                Some(_) => None,
                None => known.route().and_then(|route| {
                    let req = route.rule_for(&request.headers, shard.as_deref())?.clone();
                    let picked = match shard.as_deref() {
                        Some(key) => known.owner(key, |i| meets(&req, i)),
                        None => known.pick(self.balance, |i| meets(&req, i)),
                    };
                    // Nobody serves the rule's versions: the route's others take the call.
                    picked.or_else(|| known.pick(self.balance, |i| route.any(i)))
                }),
            };
            let picked = match (&requirement, shard.as_deref()) {
                _ if ruled.is_some() => ruled,
                (Some((_, req)), Some(key)) => known.owner(key, |i| meets(req, i)),
                (Some((_, req)), None) => known.pick(self.balance, |i| meets(req, i)),
                (None, Some(key)) => match known.draw(Some(key)) {
                    None => known.owner(key, |_| true),
                    Some((drawn, route)) => known
                        .owner(key, |i| meets(&drawn, i))
                        .or_else(|| known.owner(key, |i| route.any(i))),
                },
                (None, None) => match known.draw(None) {
                    None => known.pick(self.balance, |_| true),
                    Some((drawn, route)) => known
                        .pick(self.balance, |i| meets(&drawn, i))
                        .or_else(|| known.pick(self.balance, |i| route.any(i))),
                },
            };
            let Some(endpoint) = picked else {
                let known_instances = known.instances();
                return Err(match requirement {
                    Some((requirement, _)) if !known_instances.is_empty() => {
                        let mut available: Vec<String> = known_instances
                            .iter()
                            .filter_map(|i| i.version.clone())
                            .collect();
                        available.sort();
                        available.dedup();
                        CallError::NoVersion {
                            service: service.to_string(),
                            requirement,
                            available,
                        }
                    }
                    _ => CallError::NoInstance {
                        service: service.to_string(),
                        registry: self.registry.url(),
                    },
                });
            };
            let transport = match endpoint.transport.get() {
                Some(t) => t.clone(),
                None => {
                    let t = self.transport(&endpoint.address)?;
                    endpoint.transport.get_or_init(|| t).clone()
                }
            };
            let Some(requester) = transport.requester() else {
                return Err(CallError::Transport(TransportError::Unsupported {
                    transport: transport.name(),
                    operation: "request/reply",
                }));
            };
            let started = Instant::now();
            let in_flight = InFlight::enter(&endpoint);
            let outcome = requester.request(request).await;
            drop(in_flight);
            let failed = outcome
                .as_ref()
                .is_err_and(crate::middleware::breaker::destination_failed);
            let now = known.now_ms();
            endpoint.record(started.elapsed(), failed, now);
            if failed {
                let n = endpoint.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= EJECT_AFTER {
                    let until = now + u64::try_from(EJECT_FOR.as_millis()).unwrap_or(0);
                    endpoint.ejected_until_ms.store(until, Ordering::Relaxed);
                    endpoint.failures.store(0, Ordering::Relaxed);
                    endpoint.forget_latency();
                    tracing::warn!(target: "switchyard", %service, address = %endpoint.address, "instance failing repeatedly: left out for a while");
                }
            } else {
                endpoint.failures.store(0, Ordering::Relaxed);
            }
            outcome
        })
    }
}

/// Where an event on a topic goes: for each service that registered a handler of it, the
/// broker it is served on (the broker then delivers to each group itself; one publish per
/// broker), or else one of its instances in turn (HTTP instances are pushed their events).
fn event_targets(instances: &[Instance], topic: &str, turn: usize) -> Vec<String> {
    let mut services: std::collections::BTreeMap<&str, Vec<&Instance>> = Default::default();
    for instance in instances
        .iter()
        .filter(|i| i.topics.iter().any(|t| t == topic))
    {
        services
            .entry(&instance.service)
            .or_default()
            .push(instance);
    }
    let mut targets = std::collections::BTreeSet::new();
    for handlers in services.values() {
        let broker = handlers
            .iter()
            .flat_map(|i| &i.addresses)
            .find(|a| !a.starts_with("http://") && !a.starts_with("https://"));
        let target = match broker {
            Some(broker) => broker.clone(),
            None => match handlers[turn % handlers.len()].addresses.first() {
                Some(address) => address.clone(),
                None => continue,
            },
        };
        targets.insert(target);
    }
    targets.into_iter().collect()
}

impl Publisher for Discovery {
    /// Publishes where the registry says the topic's handlers are (`event_targets`); the
    /// registry is listed at each publish (a command line's `yard publish`, an occasional
    /// event), not kept by topic. No registered handler: an error naming the topic, the
    /// event not sent anywhere.
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            let unreachable =
                |e: Box<dyn std::error::Error + Send + Sync>| TransportError::Unreachable {
                    url: self.registry.url(),
                    source: e,
                };
            let all = self
                .registry
                .list(None)
                .await
                .map_err(|e| unreachable(Box::new(e)))?;
            let turn = self.next_publish.fetch_add(1, Ordering::Relaxed);
            let targets = event_targets(&all, &envelope.subject, turn);
            if targets.is_empty() {
                return Err(unreachable(
                    format!(
                        "no registered instance handles topic {:?}: the event was not sent",
                        envelope.subject
                    )
                    .into(),
                ));
            }
            for target in targets {
                self.transport(&target)?.publish(envelope.clone()).await?;
            }
            Ok(())
        })
    }
}

impl Subscriber for Discovery {
    fn subscribe(
        &self,
        _topic: &str,
        _options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Subscription, TransportError>> {
        Box::pin(async {
            Err(TransportError::Unsupported {
                transport: "discover",
                operation: "events (subscribe on a broker's URL)",
            })
        })
    }
}

impl Transport for Discovery {
    fn name(&self) -> &'static str {
        "discover"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: false,
            ordering: DeliveryOrdering::None,
            delivery: DeliveryGuarantee::AtMostOnce,
            request_reply: true,
            consumer_groups: false,
            broadcast: false,
            redelivery: false,
            services_share_url: true,
            keeps_for_later_groups: false,
            replay: false,
        }
    }

    fn url(&self) -> String {
        format!("discover+{}", self.registry.url())
    }

    fn requester(&self) -> Option<&dyn Requester> {
        Some(self)
    }

    fn responder(&self) -> Option<&dyn crate::transport::Responder> {
        None
    }
}

/// The rendezvous score of a key on an address, from their stable hashes: the highest wins.
fn rendezvous(key_hash: u64, address_hash: u64) -> u64 {
    mix(key_hash ^ address_hash.rotate_left(29))
}

/// SplitMix64's finalizer: every bit of the input moves every bit of the output, so scores
/// from FNV-1a hashes (weak in their low bits) spread evenly.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shards::stable_hash;

    fn owner_of(key: &str, addresses: &[&str]) -> usize {
        let k = stable_hash(key);
        (0..addresses.len())
            .max_by_key(|&i| rendezvous(k, stable_hash(addresses[i])))
            .unwrap_or(0)
    }

    #[test]
    fn an_address_once_slow_is_tried_again_as_what_is_known_of_it_fades() {
        let once_slow = Endpoint::new("mem://a".into(), Vec::new());
        let steady = Endpoint::new("mem://b".into(), Vec::new());
        once_slow.record(Duration::from_millis(1), true, 0);
        steady.record(Duration::from_micros(100), false, 0);
        assert!(once_slow.cost(1_000) > steady.cost(1_000));
        // The steady one keeps being called; the other is not, and fades.
        steady.record(Duration::from_micros(100), false, 120_000);
        assert!(
            once_slow.cost(120_000) < steady.cost(120_000),
            "{} vs {}",
            once_slow.cost(120_000),
            steady.cost(120_000)
        );
        // A sample after the fade pulls from the faded value, not from the old peak.
        once_slow.record(Duration::from_micros(50), false, 120_000);
        assert!(once_slow.ewma_at(120_000) <= 50_000);
    }

    #[test]
    fn an_address_back_to_serving_starts_afresh() {
        let known = Known {
            service: "books".into(),
            endpoints: RwLock::default(),
            route: RwLock::default(),
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
        };
        let at = |health| {
            let mut i = Instance::new("books", "b1", ["mem://b1".to_string()]);
            i.health = health;
            vec![i]
        };
        let endpoint = |k: &Known| k.endpoints.read().map(|e| e[0].clone()).ok();
        known.set(at(Health::Serving));
        if let Some(e) = endpoint(&known) {
            e.record(Duration::from_secs(1), true, known.now_ms());
        }
        known.set(at(Health::NotReady));
        let kept = endpoint(&known).map(|e| e.ewma_ns.load(Ordering::Relaxed));
        assert_eq!(kept, Some(1_000_000_000), "kept while not ready");
        known.set(at(Health::Serving));
        let afresh = endpoint(&known).map(|e| e.ewma_ns.load(Ordering::Relaxed));
        assert_eq!(afresh, Some(0), "forgotten once serving again");
    }

    #[test]
    fn shard_keys_spread_evenly_and_a_new_address_takes_only_its_share() {
        let three = [
            "http://10.0.0.1:80",
            "http://10.0.0.2:80",
            "http://10.0.0.3:80",
        ];
        let four = [three[0], three[1], three[2], "http://10.0.0.4:80"];
        let mut counts = [0usize; 3];
        let mut moved = 0;
        for k in 0..9_000 {
            let key = format!("customer-{k}");
            let before = owner_of(&key, &three);
            counts[before] += 1;
            let after = owner_of(&key, &four);
            if after != before {
                assert_eq!(after, 3, "a key moved between old addresses");
                moved += 1;
            }
        }
        for c in counts {
            assert!((2_700..=3_300).contains(&c), "uneven: {counts:?}");
        }
        assert!((1_900..=2_600).contains(&moved), "{moved} of 9,000 moved");
    }

    #[test]
    fn a_keys_owner_is_the_same_in_every_build() {
        // Fixed values (computed apart, by the published FNV-1a and SplitMix64 constants): a
        // change to the hash would move every key of every running cluster.
        let key = stable_hash("customer-1");
        assert_eq!(key, 7_350_730_748_565_324_119);
        assert_eq!(
            rendezvous(key, stable_hash("http://10.0.0.1:80")),
            9_836_117_241_079_171_006
        );
        assert_eq!(
            rendezvous(key, stable_hash("http://10.0.0.3:80")),
            12_742_422_177_772_031_257
        );
        let three = [
            "http://10.0.0.1:80",
            "http://10.0.0.2:80",
            "http://10.0.0.3:80",
        ];
        assert_eq!(owner_of("customer-1", &three), 2);
    }
}
