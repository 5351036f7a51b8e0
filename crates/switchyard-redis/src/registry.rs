//! A service registry in Redis (`redis://HOST:PORT?ns=NS`): one key per instance,
//! `sy:reg:<ns>:<service>:<id>`, holding its record as JSON with the lease as the key's own
//! expiry (`SET … PX`), so an instance that stops renewing disappears without anyone
//! removing it. Listing scans the namespace's keys; watching looks again every
//! `registry::POLL_EVERY` (keyspace notifications are off on a default Redis).

use std::time::Duration;

use futures::future::BoxFuture;
use redis::AsyncCommands;
use switchyard_core::error::TransportError;
use switchyard_core::registry::{
    in_order, key_part, watch_by_listing, watch_config_by_reading, Changes, Config, ConfigChanges,
    Instance, Registry, RegistryError,
};

use crate::RedisTransport;

/// A registry in Redis. See the module's notes.
#[derive(Debug, Clone)]
pub struct RedisRegistry {
    transport: std::sync::Arc<RedisTransport>,
}

/// A name as a key part: anything but letters, digits, `-`, `_` and `.` percent-encoded, so
/// that no name holds the key's `:` separator or a `SCAN` pattern's special characters.
fn part(name: &str) -> String {
    key_part(name, b"-_.", '%')
}

impl RedisRegistry {
    /// The registry at a `redis://` or `rediss://` URL (`?ns=` keeps registries apart).
    pub fn from_url(url: &str) -> Result<Self, RegistryError> {
        let transport = RedisTransport::from_url(url).map_err(|e| RegistryError::InvalidUrl {
            url: switchyard_core::error::redact_url(url),
            reason: e.to_string(),
        })?;
        Ok(Self {
            transport: std::sync::Arc::new(transport),
        })
    }

    fn unavailable(&self, e: impl std::error::Error + Send + Sync + 'static) -> RegistryError {
        RegistryError::Unavailable {
            url: self.url(),
            source: Box::new(e),
        }
    }

    fn prefix(&self) -> String {
        format!("sy:reg:{}:", part(&self.transport.namespace))
    }

    fn config_key(&self, key: &str) -> String {
        format!("sy:cfg:{}:{}", part(&self.transport.namespace), part(key))
    }

    fn key(&self, service: &str, id: &str) -> String {
        format!("{}{}:{}", self.prefix(), part(service), part(id))
    }

    async fn con(&self) -> Result<redis::aio::ConnectionManager, RegistryError> {
        self.transport
            .con()
            .await
            .map_err(|e: TransportError| self.unavailable(e))
    }

    async fn read(&self, service: Option<&str>) -> Result<Vec<Instance>, RegistryError> {
        let mut con = self.con().await?;
        let pattern = match service {
            Some(s) => format!("{}{}:*", self.prefix(), part(s)),
            None => format!("{}*", self.prefix()),
        };
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut con)
                .await
                .map_err(|e| self.unavailable(e))?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            // A key whose lease ran out between the scan and the read comes back empty.
            let values: Vec<Option<String>> = redis::cmd("MGET")
                .arg(chunk)
                .query_async(&mut con)
                .await
                .map_err(|e| self.unavailable(e))?;
            for (key, value) in chunk.iter().zip(values) {
                let Some(json) = value else { continue };
                match serde_json::from_str::<Instance>(&json) {
                    Ok(i) => found.push(i),
                    Err(e) => {
                        tracing::warn!(target: "switchyard", %key, error = %e, "unreadable registry record ignored")
                    }
                }
            }
        }
        Ok(in_order(found))
    }
}

impl Registry for RedisRegistry {
    fn register(
        &self,
        instance: &Instance,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), RegistryError>> {
        let key = self.key(&instance.service, &instance.id);
        let json = serde_json::to_string(instance);
        Box::pin(async move {
            let json = json.map_err(|e| self.unavailable(e))?;
            let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let mut con = self.con().await?;
            con.pset_ex::<_, _, ()>(&key, json, ms)
                .await
                .map_err(|e| self.unavailable(e))
        })
    }

    fn deregister(&self, service: &str, id: &str) -> BoxFuture<'_, Result<(), RegistryError>> {
        let key = self.key(service, id);
        Box::pin(async move {
            let mut con = self.con().await?;
            con.del::<_, ()>(&key)
                .await
                .map_err(|e| self.unavailable(e))
        })
    }

    fn list(&self, service: Option<&str>) -> BoxFuture<'_, Result<Vec<Instance>, RegistryError>> {
        let service = service.map(str::to_string);
        Box::pin(async move { self.read(service.as_deref()).await })
    }

    fn watch(&self, service: Option<&str>) -> BoxFuture<'_, Result<Changes, RegistryError>> {
        watch_by_listing(self, service)
    }

    fn url(&self) -> String {
        switchyard_core::transport::Transport::url(self.transport.as_ref())
    }

    fn config_get(&self, key: &str) -> BoxFuture<'_, Result<Option<Config>, RegistryError>> {
        let key = self.config_key(key);
        Box::pin(async move {
            let mut con = self.con().await?;
            let (value, revision): (Option<String>, Option<u64>) = redis::cmd("HMGET")
                .arg(&key)
                .arg("value")
                .arg("revision")
                .query_async(&mut con)
                .await
                .map_err(|e| self.unavailable(e))?;
            Ok(value
                .zip(revision)
                .map(|(value, revision)| Config { value, revision }))
        })
    }

    fn config_set(
        &self,
        key: &str,
        value: &str,
        expected: Option<u64>,
    ) -> BoxFuture<'_, Result<u64, RegistryError>> {
        let (name, redis_key, value) = (key.to_string(), self.config_key(key), value.to_string());
        Box::pin(async move {
            // One script: the comparison and the write cannot be split by another writer.
            let script = redis::Script::new(
                r"local found = redis.call('HGET', KEYS[1], 'revision')
                  if (found == false and ARGV[2] == '') or found == ARGV[2] then
                    local next = (tonumber(found) or 0) + 1
                    redis.call('HSET', KEYS[1], 'value', ARGV[1], 'revision', next)
                    return {1, next}
                  end
                  return {0, tonumber(found) or -1}",
            );
            let mut con = self.con().await?;
            let expected_arg = expected.map(|r| r.to_string()).unwrap_or_default();
            let (done, revision): (i64, i64) = script
                .key(&redis_key)
                .arg(&value)
                .arg(expected_arg)
                .invoke_async(&mut con)
                .await
                .map_err(|e| self.unavailable(e))?;
            if done == 1 {
                Ok(u64::try_from(revision).unwrap_or(0))
            } else {
                Err(RegistryError::Conflict {
                    key: name,
                    found: u64::try_from(revision).ok(),
                    expected,
                })
            }
        })
    }

    fn config_watch(&self, key: &str) -> BoxFuture<'_, Result<ConfigChanges, RegistryError>> {
        watch_config_by_reading(self, key)
    }
}
