//! A service registry in ZooKeeper (`zk://HOST:PORT[,HOST:PORT…][/NS]`), laid out as the
//! framework this project descends from sketched it, endpoints and their subscribers:
//!
//! ```text
//! /switchyard/<ns>/services/<service>/instances/<id>        ephemeral: the record (JSON)
//! /switchyard/<ns>/services/<service>/subscribers/sub-<seq> ephemeral sequential: a watcher
//! /switchyard/<ns>/config/<key>                              persistent: a configuration value
//! ```
//!
//! A record is an ephemeral node of the registering handle's session, so a process killed
//! disappears when its session expires (`?session_timeout_ms=`, 10 s by default; the server
//! bounds it between 2 and 20 of its ticks). A session outlives any one instance, so each record
//! also says when its lease ends: readers skip a record past it and delete it, and watchers
//! report it gone when its lease ends unrenewed. Watches are ZooKeeper's persistent recursive
//! ones (3.6 and later), pushed. A configuration value's revision is its node's version + 1;
//! compare-and-set is ZooKeeper's versioned `setData`.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use switchyard_core::error::redact_url;
use switchyard_core::registry::{
    expiry, in_order, key_part, leased, live, Changes, Config, ConfigChanges, Instance, Leased,
    Registry, RegistryError,
};
use switchyard_core::url_options::UrlOptions;
use tokio::sync::Mutex;
use zookeeper_client as zk;

/// A registry in ZooKeeper. See the module's notes.
#[derive(Debug, Clone)]
pub struct ZkRegistry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    url: String,
    cluster: String,
    root: String,
    session_timeout: Duration,
    /// The session, made at first use and made again once it has expired.
    client: Mutex<Option<zk::Client>>,
}

#[derive(Serialize, Deserialize)]
struct Record {
    instance: Instance,
    expires_ms: u64,
}

/// A name as one node name: letters, digits, `-`, `_` and `.` kept, anything else `%XX`, so
/// that no name holds a `/` (nor is `.` or `..` alone, which `%2E` avoids below).
fn part(name: &str) -> String {
    match name {
        "." | ".." | "" => key_part(name, b"", '%'),
        _ => key_part(name, b"-_.", '%'),
    }
}

fn open() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

impl ZkRegistry {
    /// The registry at `zk://HOST:PORT[,HOST:PORT…][/NS]` (`?ns=NS` also names the namespace;
    /// `default` when none is given; `?session_timeout_ms=` the session's timeout).
    pub fn from_url(url: &str) -> Result<Self, RegistryError> {
        let invalid = |reason: String| RegistryError::InvalidUrl {
            url: redact_url(url),
            reason,
        };
        let rest = url
            .strip_prefix("zk://")
            .ok_or_else(|| invalid("a ZooKeeper registry's URL is zk://HOST:PORT".into()))?;
        let options =
            UrlOptions::parse(url, &["session_timeout_ms"]).map_err(|e| invalid(e.to_string()))?;
        let rest = rest.split('?').next().unwrap_or_default();
        let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
        if hosts.is_empty() {
            return Err(invalid("no host".into()));
        }
        let cluster = hosts
            .split(',')
            .map(|h| {
                if h.contains(':') {
                    h.to_string()
                } else {
                    format!("{h}:2181")
                }
            })
            .collect::<Vec<_>>()
            .join(",");
        let path = path.trim_matches('/');
        let namespace = match options
            .namespace(&['/'])
            .map_err(|e| invalid(e.to_string()))?
        {
            Some(ns) => ns,
            None if path.is_empty() => "default".to_string(),
            None if path.contains('/') => {
                return Err(invalid(format!("namespace {path:?} holds a /")))
            }
            None => path.to_string(),
        };
        let session_timeout = options
            .millis("session_timeout_ms")
            .map_err(|e| invalid(e.to_string()))?
            .unwrap_or(Duration::from_secs(10));
        Ok(Self {
            inner: Arc::new(Inner {
                url: redact_url(url),
                cluster,
                root: format!("/switchyard/{}", part(&namespace)),
                session_timeout,
                client: Mutex::new(None),
            }),
        })
    }

    fn unavailable(&self, e: zk::Error) -> RegistryError {
        RegistryError::Unavailable {
            url: self.inner.url.clone(),
            source: Box::new(e),
        }
    }

    /// The session, connected now if there is none or it has ended.
    async fn client(&self) -> Result<zk::Client, RegistryError> {
        let mut held = self.inner.client.lock().await;
        if let Some(client) = held.as_ref() {
            if !client.state().is_terminated() {
                return Ok(client.clone());
            }
        }
        let client = zk::Client::connector()
            .with_session_timeout(self.inner.session_timeout)
            .with_connection_timeout(Duration::from_secs(5))
            .connect(&self.inner.cluster)
            .await
            .map_err(|e| self.unavailable(e))?;
        *held = Some(client.clone());
        Ok(client)
    }

    fn services(&self) -> String {
        format!("{}/services", self.inner.root)
    }

    fn instances(&self, service: &str) -> String {
        format!("{}/{}/instances", self.services(), part(service))
    }

    fn node(&self, service: &str, id: &str) -> String {
        format!("{}/{}", self.instances(service), part(id))
    }

    fn config_node(&self, key: &str) -> String {
        format!("{}/config/{}", self.inner.root, part(key))
    }

    /// Writes `instance`'s record: its node made (with its parents) when missing, or replaced
    /// when another session (a process gone, whose session has not expired yet) holds it.
    async fn write(&self, instance: &Instance, ttl: Duration) -> Result<(), RegistryError> {
        let record = Record {
            instance: instance.clone(),
            expires_ms: expiry(ttl),
        };
        let data = serde_json::to_vec(&record).map_err(|e| RegistryError::Corrupt {
            url: self.inner.url.clone(),
            key: instance.id.clone(),
            reason: e.to_string(),
        })?;
        let client = self.client().await?;
        let node = self.node(&instance.service, &instance.id);
        let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
        for _ in 0..3 {
            match client.check_stat(&node).await {
                Ok(Some(stat)) if stat.ephemeral_owner == client.session_id().0 => {
                    match client.set_data(&node, &data, None).await {
                        Ok(_) => return Ok(()),
                        Err(zk::Error::NoNode) => continue,
                        Err(e) => return Err(self.unavailable(e)),
                    }
                }
                Ok(Some(_)) => match client.delete(&node, None).await {
                    Ok(()) | Err(zk::Error::NoNode) => continue,
                    Err(e) => return Err(self.unavailable(e)),
                },
                Ok(None) => match client.create(&node, &data, &ephemeral).await {
                    Ok(_) => return Ok(()),
                    Err(zk::Error::NodeExists) => continue,
                    Err(zk::Error::NoNode) => {
                        client
                            .mkdir(&self.instances(&instance.service), &open())
                            .await
                            .map_err(|e| self.unavailable(e))?;
                        continue;
                    }
                    Err(e) => return Err(self.unavailable(e)),
                },
                Err(e) => return Err(self.unavailable(e)),
            }
        }
        Err(self.unavailable(zk::Error::UnexpectedError(format!(
            "{node} kept changing while it was written"
        ))))
    }

    /// The live record at `node`, or `None`: absent, unreadable (logged), or past its lease
    /// (then deleted, so that every watcher hears of it).
    async fn read(&self, client: &zk::Client, node: &str) -> Result<Option<Record>, zk::Error> {
        let (data, stat) = match client.get_data(node).await {
            Ok(found) => found,
            Err(zk::Error::NoNode) => return Ok(None),
            Err(e) => return Err(e),
        };
        let record = match serde_json::from_slice::<Record>(&data) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(target: "switchyard", %node, error = %e, "unreadable registry record ignored");
                return Ok(None);
            }
        };
        if live(record.expires_ms) {
            return Ok(Some(record));
        }
        // Only the version read: a renewal that came meanwhile is kept.
        let _ = client.delete(node, Some(stat.version)).await;
        Ok(None)
    }

    async fn children(&self, client: &zk::Client, path: &str) -> Result<Vec<String>, zk::Error> {
        match client.list_children(path).await {
            Ok(c) => Ok(c),
            Err(zk::Error::NoNode) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// The live records of `service` (or of all), each with its node.
    async fn records(&self, service: Option<&str>) -> Result<Vec<(String, Record)>, RegistryError> {
        let client = self.client().await?;
        let services = match service {
            Some(s) => vec![part(s)],
            None => self
                .children(&client, &self.services())
                .await
                .map_err(|e| self.unavailable(e))?,
        };
        let mut found = Vec::new();
        for service in services {
            let dir = format!("{}/{service}/instances", self.services());
            for id in self
                .children(&client, &dir)
                .await
                .map_err(|e| self.unavailable(e))?
            {
                let node = format!("{dir}/{id}");
                if let Some(record) = self
                    .read(&client, &node)
                    .await
                    .map_err(|e| self.unavailable(e))?
                {
                    found.push((node, record));
                }
            }
        }
        Ok(found)
    }
}

/// A watcher's ephemeral sequential node under its service's `subscribers`, removed when the
/// watch is dropped.
struct Subscriber {
    client: zk::Client,
    node: String,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let (client, node) = (self.client.clone(), std::mem::take(&mut self.node));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = client.delete(&node, None).await;
            });
        }
    }
}

/// What a watch has to read its events with.
struct Events {
    registry: ZkRegistry,
    client: zk::Client,
    watcher: zk::PersistentWatcher,
    _subscriber: Option<Subscriber>,
}

impl Events {
    /// The next event on a record.
    async fn next(&mut self) -> Result<Leased, RegistryError> {
        loop {
            let event = self.watcher.changed().await;
            match event.event_type {
                // Events may be lost over a reconnection (ZOOKEEPER-4698), and none come after
                // a terminal state: the caller lists again and watches anew.
                zk::EventType::Session
                    if event.session_state != zk::SessionState::SyncConnected =>
                {
                    return Err(self
                        .registry
                        .unavailable(zk::Error::UnexpectedError(format!(
                            "ZooKeeper session {:?}",
                            event.session_state
                        ))));
                }
                zk::EventType::NodeCreated | zk::EventType::NodeDataChanged
                    if is_instance(&event.path) =>
                {
                    let read = self.registry.read(&self.client, &event.path).await;
                    return Ok(match read.map_err(|e| self.registry.unavailable(e))? {
                        Some(record) => Leased::Put {
                            key: event.path,
                            instance: record.instance,
                            expires_ms: record.expires_ms,
                        },
                        // Gone, or past its lease, by the time it was read.
                        None => Leased::Removed { key: event.path },
                    });
                }
                zk::EventType::NodeDeleted if is_instance(&event.path) => {
                    return Ok(Leased::Removed { key: event.path });
                }
                _ => {}
            }
        }
    }
}

/// Whether `path` is an instance's record (`…/services/<s>/instances/<id>`).
fn is_instance(path: &str) -> bool {
    let mut parts = path.rsplit('/');
    let _id = parts.next();
    parts.next() == Some("instances")
}

impl Registry for ZkRegistry {
    fn register(
        &self,
        instance: &Instance,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), RegistryError>> {
        let instance = instance.clone();
        Box::pin(async move { self.write(&instance, ttl).await })
    }

    fn deregister(&self, service: &str, id: &str) -> BoxFuture<'_, Result<(), RegistryError>> {
        let node = self.node(service, id);
        Box::pin(async move {
            let client = self.client().await?;
            match client.delete(&node, None).await {
                Ok(()) | Err(zk::Error::NoNode) => Ok(()),
                Err(e) => Err(self.unavailable(e)),
            }
        })
    }

    fn list(&self, service: Option<&str>) -> BoxFuture<'_, Result<Vec<Instance>, RegistryError>> {
        let service = service.map(str::to_string);
        Box::pin(async move {
            let records = self.records(service.as_deref()).await?;
            Ok(in_order(
                records.into_iter().map(|(_, r)| r.instance).collect(),
            ))
        })
    }

    fn watch(&self, service: Option<&str>) -> BoxFuture<'_, Result<Changes, RegistryError>> {
        let service = service.map(str::to_string);
        let this = self.clone();
        Box::pin(async move {
            let client = this.client().await?;
            let path = match &service {
                Some(s) => format!("{}/{}", this.services(), part(s)),
                None => this.services(),
            };
            // The watch needs its node to exist.
            client
                .mkdir(&path, &open())
                .await
                .map_err(|e| this.unavailable(e))?;
            let watcher = client
                .watch(&path, zk::AddWatchMode::PersistentRecursive)
                .await
                .map_err(|e| this.unavailable(e))?;
            // What is there now, with its leases, so that a lease ending later is reported.
            let known = this
                .records(service.as_deref())
                .await?
                .into_iter()
                .map(|(node, r)| (node, r.instance, r.expires_ms))
                .collect();
            let subscriber = match &service {
                Some(s) => Some(this.subscribe(&client, s).await?),
                None => None,
            };
            let (reader, registry) = (client.clone(), this.clone());
            let events = Events {
                registry: this,
                client,
                watcher,
                _subscriber: subscriber,
            };
            let events = futures::stream::unfold(Some(events), |state| async move {
                let mut events = state?;
                match events.next().await {
                    Ok(event) => Some((Ok(event), Some(events))),
                    Err(e) => Some((Err(e), None)),
                }
            });
            let expired = move |node: String| -> BoxFuture<'static, Option<u64>> {
                let (client, registry) = (reader.clone(), registry.clone());
                // Read again: deleted there when past its lease.
                Box::pin(async move {
                    let record = registry.read(&client, &node).await.ok().flatten();
                    record.map(|r| r.expires_ms)
                })
            };
            Ok(leased(known, Box::pin(events), expired))
        })
    }

    fn url(&self) -> String {
        self.inner.url.clone()
    }

    fn config_get(&self, key: &str) -> BoxFuture<'_, Result<Option<Config>, RegistryError>> {
        let node = self.config_node(key);
        Box::pin(async move {
            let client = self.client().await?;
            self.config_read(&client, &node).await
        })
    }

    fn config_set(
        &self,
        key: &str,
        value: &str,
        expected: Option<u64>,
    ) -> BoxFuture<'_, Result<u64, RegistryError>> {
        let (name, node, value) = (key.to_string(), self.config_node(key), value.to_string());
        Box::pin(async move {
            let client = self.client().await?;
            let conflict = |found: Option<u64>| RegistryError::Conflict {
                key: name.clone(),
                found,
                expected,
            };
            match expected {
                None => loop {
                    match client.create(&node, value.as_bytes(), &open()).await {
                        Ok((stat, _)) => return Ok(revision(&stat)),
                        Err(zk::Error::NoNode) => client
                            .mkdir(&format!("{}/config", self.inner.root), &open())
                            .await
                            .map_err(|e| self.unavailable(e))?,
                        Err(zk::Error::NodeExists) => {
                            let now = self.config_read(&client, &node).await?;
                            return Err(conflict(now.map(|c| c.revision)));
                        }
                        Err(e) => return Err(self.unavailable(e)),
                    }
                },
                Some(revision_expected) => {
                    let version = i32::try_from(revision_expected.saturating_sub(1))
                        .map_err(|_| conflict(None))?;
                    match client
                        .set_data(&node, value.as_bytes(), Some(version))
                        .await
                    {
                        Ok(stat) => Ok(revision(&stat)),
                        Err(zk::Error::NoNode) => Err(conflict(None)),
                        Err(zk::Error::BadVersion) => {
                            let now = self.config_read(&client, &node).await?;
                            Err(conflict(now.map(|c| c.revision)))
                        }
                        Err(e) => Err(self.unavailable(e)),
                    }
                }
            }
        })
    }

    fn config_watch(&self, key: &str) -> BoxFuture<'_, Result<ConfigChanges, RegistryError>> {
        let node = self.config_node(key);
        let this = self.clone();
        Box::pin(async move {
            let client = this.client().await?;
            // Watched before it is read: no change between the two is missed.
            let watcher = client
                .watch(&node, zk::AddWatchMode::Persistent)
                .await
                .map_err(|e| this.unavailable(e))?;
            let now = this.config_read(&client, &node).await?;
            let state = (
                this,
                client,
                watcher,
                node,
                None::<Option<Config>>,
                Some(now),
            );
            let values = futures::stream::unfold(Some(state), |state| async move {
                let (this, client, mut watcher, node, last, first) = state?;
                if let Some(now) = first {
                    let last = Some(now.clone());
                    return Some((Ok(now), Some((this, client, watcher, node, last, None))));
                }
                loop {
                    let event = watcher.changed().await;
                    if event.event_type == zk::EventType::Session {
                        if event.session_state == zk::SessionState::SyncConnected {
                            continue;
                        }
                        let e = this.unavailable(zk::Error::UnexpectedError(format!(
                            "ZooKeeper session {:?}",
                            event.session_state
                        )));
                        return Some((Err(e), None));
                    }
                    match this.config_read(&client, &node).await {
                        Ok(now) if last.as_ref() == Some(&now) => continue,
                        Ok(now) => {
                            let next = Some(now.clone());
                            return Some((
                                Ok(now),
                                Some((this, client, watcher, node, next, None)),
                            ));
                        }
                        Err(e) => return Some((Err(e), None)),
                    }
                }
            });
            Ok(values.boxed())
        })
    }
}

impl ZkRegistry {
    async fn config_read(
        &self,
        client: &zk::Client,
        node: &str,
    ) -> Result<Option<Config>, RegistryError> {
        match client.get_data(node).await {
            Ok((data, stat)) => Ok(Some(Config {
                value: String::from_utf8_lossy(&data).into_owned(),
                revision: revision(&stat),
            })),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    /// Records a watcher of `service` as one of its subscribers.
    async fn subscribe(
        &self,
        client: &zk::Client,
        service: &str,
    ) -> Result<Subscriber, RegistryError> {
        let dir = format!("{}/{}/subscribers", self.services(), part(service));
        client
            .mkdir(&dir, &open())
            .await
            .map_err(|e| self.unavailable(e))?;
        let who = serde_json::json!({
            "pid": std::process::id(),
            "session": client.session_id().0.to_string(),
        })
        .to_string();
        let (_, sequence) = client
            .create(
                &format!("{dir}/sub-"),
                who.as_bytes(),
                &zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all()),
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(Subscriber {
            client: client.clone(),
            node: format!("{dir}/sub-{sequence}"),
        })
    }
}

/// A configuration node's revision: 1 when made, one more at each change.
fn revision(stat: &zk::Stat) -> u64 {
    u64::try_from(stat.version).unwrap_or(0) + 1
}
