//! Service discovery: where the instances of each service are, as they come and go.
//!
//! A [`Registry`] keeps one [`Instance`] record per served instance (its service's name and
//! version, its id, an address per transport it serves on, its routes and topics), each held by
//! a lease: an instance that stops renewing (a process killed) disappears when its lease runs
//! out; one that stops gracefully is removed at once. [`Registration`] keeps an instance
//! registered, renewing it on a thread of its own so that busy handlers cannot starve it, and
//! removes it when stopped. Clients list instances and watch them change.
//!
//! Backends are named by URL ([`connect`]): `mem://NAME` (in this process) and `file://DIR`
//! (a folder several local processes share; the default, no server needed) are here; the
//! backends on a server (etcd, ZooKeeper, NATS KV, Redis) are in their own crates. Every
//! backend passes the same cases (`testkit::registry_conformance`).

mod discover;
mod file;
mod memory;
mod registration;
mod serve;
pub(crate) mod setting;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

pub use discover::{
    Balance, Connector, Discovery, VersionRoute, VersionRule, WeightedVersion, EJECT_AFTER,
    EJECT_FOR,
};
pub use file::FileRegistry;
pub use memory::MemoryRegistry;
pub use registration::Registration;
pub use serve::{serve, Registered, DRAIN_GRACE};
pub use setting::{check_setting, read_setting, watch_setting, Setting, Settings};

/// One served instance of a service, as a registry records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Instance {
    /// The service's name: what callers address.
    pub service: String,
    /// The service's version, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// This instance's id, unique to one serve.
    pub id: String,
    /// Where it is reached: one transport URL per transport it serves on (no credentials).
    pub addresses: Vec<String>,
    /// Its routes.
    #[serde(default)]
    pub routes: Vec<String>,
    /// The topics it handles.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Anything else (tags, zone…).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Whether it takes calls now (a record without it: serving).
    #[serde(default)]
    pub health: Health,
}

/// Whether an instance takes calls now, as its registration last said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Health {
    /// It serves.
    #[default]
    Serving,
    /// It is up but not ready (a connection it serves on is down, or it waits for something):
    /// callers pass it over while another instance serves.
    NotReady,
}

impl Health {
    /// This process's health as `/readyz` sees it ([`observe::not_ready`](crate::observe::not_ready)).
    pub fn of_process() -> Self {
        if crate::observe::not_ready().is_empty() {
            Self::Serving
        } else {
            Self::NotReady
        }
    }
}

impl Instance {
    /// An instance of `service` with id `id`, reached at `addresses`.
    pub fn new(
        service: impl Into<String>,
        id: impl Into<String>,
        addresses: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            service: service.into(),
            version: None,
            id: id.into(),
            addresses: addresses.into_iter().collect(),
            routes: Vec::new(),
            topics: Vec::new(),
            metadata: BTreeMap::new(),
            health: Health::Serving,
        }
    }

    /// The instance of a served service: its name, version, instance id, routes and topics,
    /// reached at `addresses`.
    pub fn of(served: &crate::served::Served, addresses: impl IntoIterator<Item = String>) -> Self {
        let service = served.service();
        Self {
            service: served.name().to_string(),
            version: served.version().map(str::to_string),
            id: served.instance().to_string(),
            addresses: addresses.into_iter().collect(),
            routes: service
                .route_paths()
                .into_iter()
                .map(str::to_string)
                .collect(),
            topics: service.topics().into_iter().map(str::to_string).collect(),
            metadata: BTreeMap::new(),
            health: Health::Serving,
        }
    }

    /// With `version`.
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// With `health`.
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = health;
        self
    }

    /// With `key` = `value` in its metadata.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// What changed in a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// An instance appeared, or its record changed.
    Up(Instance),
    /// An instance went away: removed, or its lease ran out.
    Down {
        /// Its service.
        service: String,
        /// Its id.
        id: String,
    },
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The registry's URL is not one this build knows, or is malformed.
    #[error("invalid registry URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL (credentials removed).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry's store could not be reached or written.
    #[error("registry {url} unavailable: {source}")]
    Unavailable {
        /// The registry (credentials removed).
        url: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A compare-and-set lost: the value changed since the revision given.
    #[error("configuration {key} changed meanwhile (revision {found:?}, expected {expected:?})")]
    Conflict {
        /// The key.
        key: String,
        /// Its revision now.
        found: Option<u64>,
        /// The revision the change was made against.
        expected: Option<u64>,
    },
    /// A configuration value is not one that can be applied: not the JSON of its kind, or
    /// refused by the kind's check. Whoever applies it keeps the value in force.
    #[error("configuration {key} (revision {revision}) refused: {reason}")]
    InvalidValue {
        /// The key.
        key: String,
        /// The revision refused.
        revision: u64,
        /// Why.
        reason: String,
    },
    /// A record in the registry could not be read.
    #[error("registry {url}: unreadable record {key}: {reason}")]
    Corrupt {
        /// The registry.
        url: String,
        /// Which record.
        key: String,
        /// Why.
        reason: String,
    },
}

/// Changes as they happen, from the moment the watch began.
pub type Changes = BoxStream<'static, Result<Change, RegistryError>>;

/// Where instances are recorded. See the module's notes.
pub trait Registry: Send + Sync + std::fmt::Debug {
    /// Records `instance` (or replaces its record), held for `ttl` from now.
    fn register(
        &self,
        instance: &Instance,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), RegistryError>>;

    /// Holds `instance`'s record for `ttl` from now; records it again if it was lost (a
    /// registry that restarted, a lease that ran out while the process was paused). By
    /// default, the record is written whole again.
    fn renew(
        &self,
        instance: &Instance,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), RegistryError>> {
        self.register(instance, ttl)
    }

    /// Removes an instance's record at once.
    fn deregister(&self, service: &str, id: &str) -> BoxFuture<'_, Result<(), RegistryError>>;

    /// The live instances of `service`, or of every service.
    fn list(&self, service: Option<&str>) -> BoxFuture<'_, Result<Vec<Instance>, RegistryError>>;

    /// Changes to the instances of `service` (or of every service) from now on, including
    /// services that appear later.
    fn watch(&self, service: Option<&str>) -> BoxFuture<'_, Result<Changes, RegistryError>>;

    /// The registry's URL, credentials removed.
    fn url(&self) -> String;

    /// The configuration value under `key` and its revision, if set.
    fn config_get(&self, key: &str) -> BoxFuture<'_, Result<Option<Config>, RegistryError>>;

    /// Sets `key` to `value` when its revision is still `expected` (`None`: not set yet), and
    /// returns the new revision; [`RegistryError::Conflict`] when someone changed it first
    /// (compare-and-set).
    fn config_set(
        &self,
        key: &str,
        value: &str,
        expected: Option<u64>,
    ) -> BoxFuture<'_, Result<u64, RegistryError>>;

    /// `key`'s value as it is now, then each time it changes.
    fn config_watch(&self, key: &str) -> BoxFuture<'_, Result<ConfigChanges, RegistryError>>;
}

/// A configuration value and its revision (which grows with each change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// The value (JSON, by convention).
    pub value: String,
    /// Its revision.
    pub revision: u64,
}

/// A configuration value as it changes (`None`: not set).
pub type ConfigChanges = BoxStream<'static, Result<Option<Config>, RegistryError>>;

/// `registry`'s changes to `service` found by listing again every [`POLL_EVERY`] ([`polled`]):
/// the watch of a backend whose `list` is all it has.
pub fn watch_by_listing<R: Registry + Clone + 'static>(
    registry: &R,
    service: Option<&str>,
) -> BoxFuture<'static, Result<Changes, RegistryError>> {
    let (this, service) = (registry.clone(), service.map(str::to_string));
    Box::pin(async move {
        let first = this.list(service.as_deref()).await?;
        let snapshot =
            move |s: Option<String>| -> BoxFuture<'static, Result<Vec<Instance>, RegistryError>> {
                let this = this.clone();
                Box::pin(async move { this.list(s.as_deref()).await })
            };
        Ok(polled(service, first, snapshot))
    })
}

/// `registry`'s value of `key` as it changes, found by reading it again every [`POLL_EVERY`]
/// ([`polled_config`]).
pub fn watch_config_by_reading<R: Registry + Clone + 'static>(
    registry: &R,
    key: &str,
) -> BoxFuture<'static, Result<ConfigChanges, RegistryError>> {
    let (this, key) = (registry.clone(), key.to_string());
    let get = move || -> BoxFuture<'static, Result<Option<Config>, RegistryError>> {
        let (this, key) = (this.clone(), key.clone());
        Box::pin(async move { this.config_get(&key).await })
    };
    Box::pin(async move { Ok(polled_config(get)) })
}

/// A watch of a configuration value made by looking again every [`POLL_EVERY`], for backends
/// with no push of their own: the value now, then each change.
pub fn polled_config<F>(get: F) -> ConfigChanges
where
    F: Fn() -> BoxFuture<'static, Result<Option<Config>, RegistryError>> + Send + Sync + 'static,
{
    use futures::StreamExt;
    futures::stream::unfold((get, None::<Option<Config>>), |(get, last)| async move {
        loop {
            if last.is_some() {
                tokio::time::sleep(POLL_EVERY).await;
            }
            match get().await {
                Ok(now) if last.as_ref() == Some(&now) => continue,
                Ok(now) => return Some((Ok(now.clone()), (get, Some(now)))),
                Err(e) => return Some((Err(e), (get, last))),
            }
        }
    })
    .boxed()
}

/// The registry named by `url`: `mem://NAME` or `file://DIR` here; the server-backed ones
/// through the facade's `switchyard::registry::connect`.
pub fn connect(url: &str) -> Result<Arc<dyn Registry>, RegistryError> {
    let invalid = |reason: &str| RegistryError::InvalidUrl {
        url: crate::error::redact_url(url),
        reason: reason.to_string(),
    };
    if let Some(name) = url.strip_prefix("mem://") {
        if name.is_empty() {
            return Err(invalid("mem:// needs a name: mem://NAME"));
        }
        return Ok(Arc::new(MemoryRegistry::named(name)));
    }
    if let Some(path) = url.strip_prefix("file://") {
        if path.is_empty() {
            return Err(invalid("file:// needs a folder: file:///path/to/registry"));
        }
        return Ok(Arc::new(FileRegistry::new(path)));
    }
    Err(invalid("known here: mem://NAME, file://DIR"))
}

/// Whether a record held until `expires_ms` (ms since the Unix epoch) is still live now: for
/// backends that keep the lease in the record.
pub fn live(expires_ms: u64) -> bool {
    expires_ms > now_ms()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// When a lease of `ttl` taken now ends, in ms since the Unix epoch (hosts' clocks assumed in
/// step, as for events' expiry).
pub fn expiry(ttl: Duration) -> u64 {
    now_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

/// `name` as one part of a backend's key: ASCII letters and digits and the bytes in `keep`
/// as they are, any other byte as `mark` and two hex digits, so that no name holds the
/// backend's separators or pattern characters.
///
/// ```
/// use switchyard_core::registry::key_part;
/// assert_eq!(key_part("a.b:c", b"-_.", '%'), "a.b%3Ac");
/// assert_eq!(key_part("a.b", b"-_", '='), "a=2Eb");
/// ```
pub fn key_part(name: &str, keep: &[u8], mark: char) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "{mark}{b:02X}");
        }
    }
    out
}

/// Instances in the order every backend lists them: by service, then id.
pub fn in_order(mut instances: Vec<Instance>) -> Vec<Instance> {
    instances.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
    instances
}

/// What a backend's own pushed watch says of one record that holds its own lease (NATS KV,
/// ZooKeeper): for [`leased`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Leased {
    /// The record under `key` written or renewed: `instance`, held until `expires_ms`.
    Put {
        /// The backend's key of the record.
        key: String,
        /// What it holds.
        instance: Instance,
        /// When its lease ends, in ms since the Unix epoch.
        expires_ms: u64,
    },
    /// The record under `key` removed.
    Removed {
        /// The backend's key of the record.
        key: String,
    },
}

/// Changes from a backend's pushed events on records that carry their own lease: `Up` when a
/// record is written (a renewal that changes nothing else says nothing), `Down` when it is
/// removed or when its lease ends without a renewal. `known` are the records there when the
/// watch began (key, instance, lease end), so that their leases are followed too. `expired`
/// is called with the key of a record whose lease has ended by this watcher's clock: it reads
/// the record again and returns its lease end when it was renewed after all (a renewal this
/// watcher has not heard yet: its runtime may have been held up), or removes it so that lists
/// and other watchers agree. The stream ends after the first error of `events`.
pub fn leased<S, E>(known: Vec<(String, Instance, u64)>, events: S, expired: E) -> Changes
where
    S: futures::Stream<Item = Result<Leased, RegistryError>> + Send + Unpin + 'static,
    E: Fn(String) -> BoxFuture<'static, Option<u64>> + Send + Sync + 'static,
{
    use futures::StreamExt;
    use std::collections::{BTreeSet, HashMap};
    /// The records known, and their lease ends in order: the next to end found at once, as
    /// a watch of a thousand instances hears their renewals all the time.
    struct State<S, E> {
        known: HashMap<String, (Instance, u64)>,
        ends: BTreeSet<(u64, String)>,
        events: S,
        expired: E,
    }
    impl<S, E> State<S, E> {
        fn keep(&mut self, key: String, instance: Instance, ends: u64) -> Option<Instance> {
            self.ends.insert((ends, key.clone()));
            let before = self.known.insert(key.clone(), (instance, ends))?;
            if before.1 != ends {
                self.ends.remove(&(before.1, key));
            }
            Some(before.0)
        }
        fn forget(&mut self, key: &str) -> Option<Change> {
            let (gone, ends) = self.known.remove(key)?;
            self.ends.remove(&(ends, key.to_string()));
            Some(Change::Down {
                service: gone.service,
                id: gone.id,
            })
        }
    }
    let mut state = State {
        known: HashMap::new(),
        ends: BTreeSet::new(),
        events,
        expired,
    };
    for (key, instance, ends) in known {
        state.keep(key, instance, ends);
    }
    futures::stream::unfold(Some(state), |state| async move {
        let mut st = state?;
        loop {
            let event = match st.ends.first().cloned() {
                // A renewal comes a third of a lease early: a lease ending unrenewed is over.
                Some((ends, key)) => {
                    let wait = Duration::from_millis(ends.saturating_sub(now_ms()));
                    match tokio::time::timeout(wait, st.events.next()).await {
                        Ok(event) => event,
                        Err(_) => {
                            match (st.expired)(key.clone()).await {
                                Some(renewed) if renewed > ends => {
                                    if let Some((instance, _)) = st.known.get(&key).cloned() {
                                        st.keep(key, instance, renewed);
                                    }
                                }
                                _ => {
                                    if let Some(down) = st.forget(&key) {
                                        return Some((Ok(down), Some(st)));
                                    }
                                }
                            }
                            continue;
                        }
                    }
                }
                None => st.events.next().await,
            };
            match event {
                None => return None,
                Some(Err(e)) => return Some((Err(e), None)),
                Some(Ok(Leased::Put {
                    key,
                    instance,
                    expires_ms,
                })) => {
                    if !live(expires_ms) {
                        continue;
                    }
                    if st.keep(key, instance.clone(), expires_ms).as_ref() == Some(&instance) {
                        continue;
                    }
                    return Some((Ok(Change::Up(instance)), Some(st)));
                }
                Some(Ok(Leased::Removed { key })) => {
                    if let Some(down) = st.forget(&key) {
                        return Some((Ok(down), Some(st)));
                    }
                }
            }
        }
    })
    .boxed()
}

/// How often a polled watch looks again.
pub const POLL_EVERY: Duration = Duration::from_millis(100);

/// Changes found by comparing what `snapshot` finds every [`POLL_EVERY`] with what it found
/// before, starting from `first`. For backends with no push of their own (in process, a
/// folder, Redis without keyspace notifications); a lease that runs out shows as `Down` at
/// the next look. Each watcher lists the whole set at each look: fine for a few hundred
/// instances, not for the thousands a pushing backend (etcd, NATS KV) serves.
pub fn polled<F>(service: Option<String>, first: Vec<Instance>, snapshot: F) -> Changes
where
    F: Fn(Option<String>) -> BoxFuture<'static, Result<Vec<Instance>, RegistryError>>
        + Send
        + Sync
        + 'static,
{
    use futures::StreamExt;
    use std::collections::{HashMap, VecDeque};
    struct State<F> {
        known: HashMap<(String, String), Instance>,
        pending: VecDeque<Change>,
        snapshot: F,
        service: Option<String>,
    }
    let known = first
        .into_iter()
        .map(|i| ((i.service.clone(), i.id.clone()), i))
        .collect();
    let state = State {
        known,
        pending: VecDeque::new(),
        snapshot,
        service,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(change) = st.pending.pop_front() {
                return Some((Ok(change), st));
            }
            tokio::time::sleep(POLL_EVERY).await;
            let now = match (st.snapshot)(st.service.clone()).await {
                Ok(now) => now,
                Err(e) => return Some((Err(e), st)),
            };
            let mut seen = HashMap::with_capacity(now.len());
            for instance in now {
                let key = (instance.service.clone(), instance.id.clone());
                if st.known.get(&key) != Some(&instance) {
                    st.pending.push_back(Change::Up(instance.clone()));
                }
                seen.insert(key, instance);
            }
            for (service, id) in st.known.keys() {
                if !seen.contains_key(&(service.clone(), id.clone())) {
                    st.pending.push_back(Change::Down {
                        service: service.clone(),
                        id: id.clone(),
                    });
                }
            }
            st.known = seen;
        }
    })
    .boxed()
}
