//! A service registry in NATS KV (`nats://HOST:PORT/NS`): one key per instance,
//! `<service>.<id>`, in the bucket `sy_registry_<ns>`, holding its record and when its lease
//! ends (readers skip and remove records past it); configuration in `sy_config_<ns>`, each
//! key's KV revision its revision, compare-and-set by `create`/`update` at a revision.
//! Watches are KV watches, pushed: a record written reaches each watcher of its service as it
//! is written, and a watcher reports a record gone when its lease ends unrenewed. Each
//! renewal rewrites the record, so each watcher of a service receives its instances'
//! renewals (a third of a lease apart); NATS 2.11's per-key TTL would spare them, but the
//! server here (2.9) has none.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::future::BoxFuture;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use switchyard_core::error::TransportError;
use switchyard_core::registry::{
    expiry, in_order, key_part, leased, live, watch_config_by_reading, Changes, Config,
    ConfigChanges, Instance, Leased, Registry, RegistryError,
};
use tokio::sync::OnceCell;

use crate::binding::jetstream_name;
use crate::NatsTransport;

/// A registry in NATS KV. See the module's notes.
#[derive(Debug, Clone)]
pub struct NatsRegistry {
    inner: std::sync::Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    transport: NatsTransport,
    records: OnceCell<kv::Store>,
    configs: OnceCell<kv::Store>,
}

#[derive(Serialize, Deserialize)]
struct Record {
    instance: Instance,
    expires_ms: u64,
}

/// A name as one KV key token: letters, digits, `-` and `_` kept, anything else `=XX` (NATS
/// keys allow `=`; `.` separates tokens).
fn token(name: &str) -> String {
    key_part(name, b"-_", '=')
}

impl NatsRegistry {
    /// The registry at a `nats://` URL (its namespace keeps registries apart).
    pub fn from_url(url: &str) -> Result<Self, RegistryError> {
        let transport = NatsTransport::from_url(url).map_err(|e| RegistryError::InvalidUrl {
            url: switchyard_core::error::redact_url(url),
            reason: e.to_string(),
        })?;
        Ok(Self {
            inner: std::sync::Arc::new(Inner {
                transport,
                records: OnceCell::new(),
                configs: OnceCell::new(),
            }),
        })
    }

    fn unavailable(&self, e: impl std::error::Error + Send + Sync + 'static) -> RegistryError {
        RegistryError::Unavailable {
            url: self.url(),
            source: Box::new(e),
        }
    }

    async fn bucket(&self, configs: bool) -> Result<&kv::Store, RegistryError> {
        let (cell, kind) = if configs {
            (&self.inner.configs, "config")
        } else {
            (&self.inner.records, "registry")
        };
        cell.get_or_try_init(|| async {
            let js = self
                .inner
                .transport
                .js()
                .await
                .map_err(|e: TransportError| self.unavailable(e))?;
            let bucket = format!(
                "sy_{kind}_{}",
                jetstream_name(&self.inner.transport.namespace)
            );
            // The bucket's stream made here, as NATS KV lays it out: async-nats'
            // `create_key_value` cannot read NATS 2.9's answer to it (Debian's server).
            js.get_or_create_stream(jetstream::stream::Config {
                name: format!("KV_{bucket}"),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: jetstream::stream::DiscardPolicy::New,
                // Records past their lease are removed by readers; an abandoned one goes
                // with the hour.
                max_age: if configs {
                    Duration::ZERO
                } else {
                    Duration::from_secs(3_600)
                },
                ..Default::default()
            })
            .await
            .map_err(|e| self.unavailable(e))?;
            js.get_key_value(bucket)
                .await
                .map_err(|e| self.unavailable(e))
        })
        .await
    }

    async fn read(&self, service: Option<&str>) -> Result<Vec<Instance>, RegistryError> {
        let records = self.records(service).await?;
        Ok(in_order(
            records.into_iter().map(|(_, r)| r.instance).collect(),
        ))
    }

    /// The live records of `service` (or of all), with their keys; those past their lease are
    /// deleted (see [`live_record`]).
    ///
    /// The keys come from the stream's subjects, one snapshot of the server's index, not from
    /// `Store::keys`: that lists through a consumer that ends at its first message with
    /// nothing pending, and NATS 2.9 says so while a key renewed during the listing is still
    /// to come (a thousand instances renewed every second, listed under load: one key was
    /// missing about one run in eight).
    async fn records(&self, service: Option<&str>) -> Result<Vec<(String, Record)>, RegistryError> {
        use futures::TryStreamExt;
        let store = self.bucket(false).await?;
        let filter = match service {
            Some(s) => format!("{}{}.*", store.prefix, token(s)),
            None => format!("{}>", store.prefix),
        };
        let mut subjects = store
            .stream
            .info_with_subjects(filter)
            .await
            .map_err(|e| self.unavailable(e))?;
        let mut found = Vec::new();
        while let Some((subject, _)) = subjects.try_next().await.map_err(|e| self.unavailable(e))? {
            let Some(key) = subject.strip_prefix(store.prefix.as_str()) else {
                continue;
            };
            if let Some(record) = live_record(store, key)
                .await
                .map_err(|e| self.unavailable(e))?
            {
                found.push((key.to_string(), record));
            }
        }
        Ok(found)
    }
}

/// The record at `key` if it is live. One past its lease is deleted at the revision read, so
/// that every watcher hears of it and a renewal landing meanwhile is kept.
async fn live_record(store: &kv::Store, key: &str) -> Result<Option<Record>, kv::EntryError> {
    let Some(entry) = store.entry(key).await? else {
        return Ok(None);
    };
    if entry.operation != kv::Operation::Put {
        return Ok(None);
    }
    match serde_json::from_slice::<Record>(&entry.value) {
        Ok(r) if live(r.expires_ms) => Ok(Some(r)),
        Ok(_) => {
            let _ = store
                .delete_expect_revision(key, Some(entry.revision))
                .await;
            Ok(None)
        }
        Err(e) => {
            tracing::warn!(target: "switchyard", %key, error = %e, "unreadable registry record ignored");
            Ok(None)
        }
    }
}

impl Registry for NatsRegistry {
    fn register(
        &self,
        instance: &Instance,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), RegistryError>> {
        let key = format!("{}.{}", token(&instance.service), token(&instance.id));
        let record = Record {
            instance: instance.clone(),
            expires_ms: expiry(ttl),
        };
        Box::pin(async move {
            let json = serde_json::to_vec(&record).map_err(|e| self.unavailable(e))?;
            let store = self.bucket(false).await?;
            store
                .put(&key, json.into())
                .await
                .map(drop)
                .map_err(|e| self.unavailable(e))
        })
    }

    fn deregister(&self, service: &str, id: &str) -> BoxFuture<'_, Result<(), RegistryError>> {
        let key = format!("{}.{}", token(service), token(id));
        Box::pin(async move {
            let store = self.bucket(false).await?;
            store.delete(&key).await.map_err(|e| self.unavailable(e))
        })
    }

    fn list(&self, service: Option<&str>) -> BoxFuture<'_, Result<Vec<Instance>, RegistryError>> {
        let service = service.map(str::to_string);
        Box::pin(async move { self.read(service.as_deref()).await })
    }

    fn watch(&self, service: Option<&str>) -> BoxFuture<'_, Result<Changes, RegistryError>> {
        let service = service.map(str::to_string);
        let this = self.clone();
        Box::pin(async move {
            let store = this.bucket(false).await?.clone();
            // Watched before the records are read: nothing written in between is missed.
            let watch = match &service {
                Some(s) => store.watch(format!("{}.*", token(s))).await,
                None => store.watch_all().await,
            }
            .map_err(|e| this.unavailable(e))?;
            let known = this
                .records(service.as_deref())
                .await?
                .into_iter()
                .map(|(key, r)| (key, r.instance, r.expires_ms))
                .collect();
            let reader = this.clone();
            let events = watch.filter_map(move |entry| {
                let reader = reader.clone();
                async move {
                    let entry = match entry {
                        Ok(entry) => entry,
                        Err(e) => return Some(Err(reader.unavailable(e))),
                    };
                    if entry.operation != kv::Operation::Put {
                        return Some(Ok(Leased::Removed { key: entry.key }));
                    }
                    match serde_json::from_slice::<Record>(&entry.value) {
                        Ok(r) => Some(Ok(Leased::Put {
                            key: entry.key,
                            instance: r.instance,
                            expires_ms: r.expires_ms,
                        })),
                        Err(e) => {
                            tracing::warn!(target: "switchyard", key = %entry.key, error = %e, "unreadable registry record ignored");
                            None
                        }
                    }
                }
            });
            let expired = move |key: String| -> BoxFuture<'static, Option<u64>> {
                let store = store.clone();
                Box::pin(async move {
                    live_record(&store, &key)
                        .await
                        .ok()
                        .flatten()
                        .map(|r| r.expires_ms)
                })
            };
            Ok(leased(known, Box::pin(events), expired))
        })
    }

    fn url(&self) -> String {
        switchyard_core::transport::Transport::url(&self.inner.transport)
    }

    fn config_get(&self, key: &str) -> BoxFuture<'_, Result<Option<Config>, RegistryError>> {
        let key = token(key);
        Box::pin(async move {
            let store = self.bucket(true).await?;
            let entry = store.entry(key).await.map_err(|e| self.unavailable(e))?;
            Ok(entry
                .filter(|e| e.operation == kv::Operation::Put)
                .map(|e| Config {
                    value: String::from_utf8_lossy(&e.value).into_owned(),
                    revision: e.revision,
                }))
        })
    }

    fn config_set(
        &self,
        key: &str,
        value: &str,
        expected: Option<u64>,
    ) -> BoxFuture<'_, Result<u64, RegistryError>> {
        let (name, key, value) = (key.to_string(), token(key), value.to_string());
        Box::pin(async move {
            let store = self.bucket(true).await?;
            let written = match expected {
                None => store
                    .create(&key, value.into_bytes().into())
                    .await
                    .map_err(|e| e.to_string()),
                Some(revision) => store
                    .update(&key, value.into_bytes().into(), revision)
                    .await
                    .map_err(|e| e.to_string()),
            };
            match written {
                Ok(revision) => Ok(revision),
                Err(why) => {
                    // Lost the race, or the store failed: which one, the revision now tells.
                    let found = self.config_get(&name).await?.map(|c| c.revision);
                    if found != expected {
                        Err(RegistryError::Conflict {
                            key: name,
                            found,
                            expected,
                        })
                    } else {
                        Err(self.unavailable(std::io::Error::other(why)))
                    }
                }
            }
        })
    }

    fn config_watch(&self, key: &str) -> BoxFuture<'_, Result<ConfigChanges, RegistryError>> {
        watch_config_by_reading(self, key)
    }
}
