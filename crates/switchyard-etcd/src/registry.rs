//! A service registry in etcd (`etcd://HOST:PORT[/NS]`): one key per instance,
//! `/switchyard/<ns>/instances/<service>/<id>`, holding its record as JSON and attached to a
//! lease of its own, so that an instance that stops renewing disappears when etcd ends the
//! lease (etcd's shortest lease is about 2 s whatever is asked). Watches are etcd's own, pushed:
//! a change costs one event to each watcher, whatever the number of instances. Configuration
//! lives under `/switchyard/<ns>/config/<key>`; a key's etcd version (1 at its first put, one
//! more at each) is its revision, and compare-and-set is a transaction on that version.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use switchyard_core::error::redact_url;
use switchyard_core::registry::{
    in_order, key_part, Change, Changes, Config, ConfigChanges, Instance, Registry, RegistryError,
};
use switchyard_core::url_options::UrlOptions;

use crate::gateway::{prefix_end, Event, Gateway, GatewayError, KeyValue};

/// A registry in etcd. See the module's notes.
#[derive(Debug, Clone)]
pub struct EtcdRegistry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    url: String,
    namespace: String,
    gateway: Gateway,
    /// The lease holding each instance registered through this handle.
    leases: Mutex<HashMap<(String, String), u64>>,
}

/// A name as one part of a key: letters, digits, `-`, `_` and `.` kept, anything else `%XX`,
/// so that no name holds the `/` separating the parts.
fn part(name: &str) -> String {
    key_part(name, b"-_.", '%')
}

impl EtcdRegistry {
    /// The registry at `etcd://HOST:PORT[/NS]` (`?ns=NS` also names the namespace, which keeps
    /// registries apart; `default` when none is given).
    pub fn from_url(url: &str) -> Result<Self, RegistryError> {
        let invalid = |reason: String| RegistryError::InvalidUrl {
            url: redact_url(url),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        if parsed.scheme() != "etcd" {
            return Err(invalid("an etcd registry's URL is etcd://HOST:PORT".into()));
        }
        let host = parsed.host_str().ok_or_else(|| invalid("no host".into()))?;
        let port = parsed.port().unwrap_or(2379);
        let options = UrlOptions::parse(url, &[]).map_err(|e| invalid(e.to_string()))?;
        let path = parsed.path().trim_matches('/').to_string();
        let namespace = match options
            .namespace(&['/'])
            .map_err(|e| invalid(e.to_string()))?
        {
            Some(ns) => ns,
            None if path.is_empty() => "default".to_string(),
            None => path,
        };
        let gateway =
            Gateway::new(format!("http://{host}:{port}")).map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                url: redact_url(url),
                namespace,
                gateway,
                leases: Mutex::new(HashMap::new()),
            }),
        })
    }

    fn unavailable(&self, e: GatewayError) -> RegistryError {
        RegistryError::Unavailable {
            url: self.inner.url.clone(),
            source: Box::new(e),
        }
    }

    fn instances(&self) -> String {
        format!("/switchyard/{}/instances/", part(&self.inner.namespace))
    }

    fn prefix(&self, service: Option<&str>) -> Vec<u8> {
        match service {
            Some(s) => format!("{}{}/", self.instances(), part(s)).into_bytes(),
            None => self.instances().into_bytes(),
        }
    }

    fn key(&self, service: &str, id: &str) -> Vec<u8> {
        format!("{}{}/{}", self.instances(), part(service), part(id)).into_bytes()
    }

    fn config_key(&self, key: &str) -> Vec<u8> {
        format!(
            "/switchyard/{}/config/{}",
            part(&self.inner.namespace),
            part(key)
        )
        .into_bytes()
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), u64>> {
        self.inner.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The instance a record holds, or `None` (logged) when it cannot be read.
    fn record(kv: &KeyValue) -> Option<Instance> {
        match serde_json::from_slice::<Instance>(&kv.value) {
            Ok(i) => Some(i),
            Err(e) => {
                let key = String::from_utf8_lossy(&kv.key);
                tracing::warn!(target: "switchyard", %key, error = %e, "unreadable registry record ignored");
                None
            }
        }
    }

    /// What a watch event says of the instances.
    fn change(event: Event) -> Option<Change> {
        if event.is_delete() {
            // The record removed says whose it was; a key alone could not be decoded back
            // unambiguously after escaping.
            let gone = event.prev_kv.as_ref().and_then(Self::record)?;
            Some(Change::Down {
                service: gone.service,
                id: gone.id,
            })
        } else {
            Self::record(&event.kv).map(Change::Up)
        }
    }
}

impl Registry for EtcdRegistry {
    fn register(
        &self,
        instance: &Instance,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), RegistryError>> {
        let key = self.key(&instance.service, &instance.id);
        let who = (instance.service.clone(), instance.id.clone());
        let json = serde_json::to_vec(instance);
        Box::pin(async move {
            let json = json.map_err(|e| RegistryError::Corrupt {
                url: self.url(),
                key: String::from_utf8_lossy(&key).into_owned(),
                reason: e.to_string(),
            })?;
            let gateway = &self.inner.gateway;
            let lease = gateway.grant(ttl).await.map_err(|e| self.unavailable(e))?;
            gateway
                .put(&key, &json, lease)
                .await
                .map_err(|e| self.unavailable(e))?;
            // The record is on its new lease: ending the old one removes nothing else.
            let old = self.leases().insert(who, lease);
            if let Some(old) = old {
                if let Err(e) = gateway.revoke(old).await {
                    tracing::debug!(target: "switchyard", error = %e, "an old lease not revoked; it runs out by itself");
                }
            }
            Ok(())
        })
    }

    fn renew(
        &self,
        instance: &Instance,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), RegistryError>> {
        let lease = self
            .leases()
            .get(&(instance.service.clone(), instance.id.clone()))
            .copied();
        let instance = instance.clone();
        Box::pin(async move {
            if let Some(lease) = lease {
                let kept = self
                    .inner
                    .gateway
                    .keep_alive(lease)
                    .await
                    .map_err(|e| self.unavailable(e))?;
                if kept {
                    return Ok(());
                }
                tracing::info!(target: "switchyard", service = %instance.service, id = %instance.id, "lease lost (etcd restarted, or the process was paused): registering again");
            }
            self.register(&instance, ttl).await
        })
    }

    fn deregister(&self, service: &str, id: &str) -> BoxFuture<'_, Result<(), RegistryError>> {
        let key = self.key(service, id);
        let lease = self.leases().remove(&(service.to_string(), id.to_string()));
        Box::pin(async move {
            let gateway = &self.inner.gateway;
            gateway
                .delete(&key)
                .await
                .map_err(|e| self.unavailable(e))?;
            if let Some(lease) = lease {
                if let Err(e) = gateway.revoke(lease).await {
                    tracing::debug!(target: "switchyard", error = %e, "a lease not revoked; it runs out by itself");
                }
            }
            Ok(())
        })
    }

    fn list(&self, service: Option<&str>) -> BoxFuture<'_, Result<Vec<Instance>, RegistryError>> {
        let prefix = self.prefix(service);
        Box::pin(async move {
            let found = self
                .inner
                .gateway
                .range(&prefix, Some(&prefix_end(&prefix)))
                .await
                .map_err(|e| self.unavailable(e))?;
            Ok(in_order(
                found.kvs.iter().filter_map(Self::record).collect(),
            ))
        })
    }

    fn watch(&self, service: Option<&str>) -> BoxFuture<'_, Result<Changes, RegistryError>> {
        let prefix = self.prefix(service);
        let this = self.clone();
        Box::pin(async move {
            let watch = this
                .inner
                .gateway
                .watch(&prefix, Some(&prefix_end(&prefix)), 0)
                .await
                .map_err(|e| this.unavailable(e))?;
            // Ends after its first error: the caller lists again and watches anew.
            let changes = futures::stream::unfold(Some((watch, this)), |state| async move {
                let (mut watch, this) = state?;
                loop {
                    match watch.next().await {
                        Ok(event) => {
                            if let Some(change) = Self::change(event) {
                                return Some((Ok(change), Some((watch, this))));
                            }
                        }
                        Err(e) => return Some((Err(this.unavailable(e)), None)),
                    }
                }
            });
            Ok(changes.boxed())
        })
    }

    fn url(&self) -> String {
        self.inner.url.clone()
    }

    fn config_get(&self, key: &str) -> BoxFuture<'_, Result<Option<Config>, RegistryError>> {
        let key = self.config_key(key);
        Box::pin(async move {
            let found = self
                .inner
                .gateway
                .range(&key, None)
                .await
                .map_err(|e| self.unavailable(e))?;
            Ok(found.kvs.first().map(config))
        })
    }

    fn config_set(
        &self,
        key: &str,
        value: &str,
        expected: Option<u64>,
    ) -> BoxFuture<'_, Result<u64, RegistryError>> {
        let (name, etcd_key, value) = (key.to_string(), self.config_key(key), value.to_string());
        Box::pin(async move {
            let version = expected.unwrap_or(0);
            match self
                .inner
                .gateway
                .put_if_version(&etcd_key, value.as_bytes(), version)
                .await
                .map_err(|e| self.unavailable(e))?
            {
                // One put on the version compared: the next version, exactly.
                Ok(()) => Ok(version + 1),
                Err(found) => Err(RegistryError::Conflict {
                    key: name,
                    found: (found > 0).then_some(found),
                    expected,
                }),
            }
        })
    }

    fn config_watch(&self, key: &str) -> BoxFuture<'_, Result<ConfigChanges, RegistryError>> {
        let key = self.config_key(key);
        let this = self.clone();
        Box::pin(async move {
            let gateway = &this.inner.gateway;
            let now = gateway
                .range(&key, None)
                .await
                .map_err(|e| this.unavailable(e))?;
            // From the revision read on: no change between the read and the watch is missed.
            let watch = gateway
                .watch(&key, None, now.header.revision + 1)
                .await
                .map_err(|e| this.unavailable(e))?;
            let first = futures::stream::iter([Ok(now.kvs.first().map(config))]);
            let changes = futures::stream::unfold(Some((watch, this)), |state| async move {
                let (mut watch, this) = state?;
                match watch.next().await {
                    Ok(event) if event.is_delete() => Some((Ok(None), Some((watch, this)))),
                    Ok(event) => Some((Ok(Some(config(&event.kv))), Some((watch, this)))),
                    Err(e) => Some((Err(this.unavailable(e)), None)),
                }
            });
            Ok(first.chain(changes).boxed())
        })
    }
}

fn config(kv: &KeyValue) -> Config {
    Config {
        value: String::from_utf8_lossy(&kv.value).into_owned(),
        revision: kv.version,
    }
}
