//! `mem://NAME`: a registry in this process, shared by every `connect` of the same name (tests,
//! several services in one process).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;

use super::{
    expiry, in_order, live, watch_by_listing, watch_config_by_reading, Changes, Config,
    ConfigChanges, Instance, Registry, RegistryError,
};

type Records = Arc<Mutex<HashMap<(String, String), (Instance, u64)>>>;
type Configs = Arc<Mutex<HashMap<String, Config>>>;

/// A registry in this process. See the module's notes.
#[derive(Debug, Clone)]
pub struct MemoryRegistry {
    name: String,
    records: Records,
    configs: Configs,
}

impl MemoryRegistry {
    /// The registry of this process named `name`.
    pub fn named(name: &str) -> Self {
        static NAMED: OnceLock<Mutex<HashMap<String, (Records, Configs)>>> = OnceLock::new();
        let mut all = NAMED
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (records, configs) = all.entry(name.to_string()).or_default().clone();
        Self {
            name: name.to_string(),
            records,
            configs,
        }
    }

    fn snapshot(records: &Records, service: Option<&str>) -> Vec<Instance> {
        let mut records = records.lock().unwrap_or_else(|p| p.into_inner());
        records.retain(|_, (_, expires)| live(*expires));
        let out: Vec<Instance> = records
            .values()
            .filter(|(i, _)| service.is_none_or(|s| i.service == s))
            .map(|(i, _)| i.clone())
            .collect();
        in_order(out)
    }
}

impl Registry for MemoryRegistry {
    fn register(
        &self,
        instance: &Instance,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), RegistryError>> {
        let key = (instance.service.clone(), instance.id.clone());
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (instance.clone(), expiry(ttl)));
        Box::pin(async { Ok(()) })
    }

    fn deregister(&self, service: &str, id: &str) -> BoxFuture<'_, Result<(), RegistryError>> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(service.to_string(), id.to_string()));
        Box::pin(async { Ok(()) })
    }

    fn list(&self, service: Option<&str>) -> BoxFuture<'_, Result<Vec<Instance>, RegistryError>> {
        let found = Self::snapshot(&self.records, service);
        Box::pin(async move { Ok(found) })
    }

    fn watch(&self, service: Option<&str>) -> BoxFuture<'_, Result<Changes, RegistryError>> {
        watch_by_listing(self, service)
    }

    fn url(&self) -> String {
        format!("mem://{}", self.name)
    }

    fn config_get(&self, key: &str) -> BoxFuture<'_, Result<Option<Config>, RegistryError>> {
        let found = self
            .configs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned();
        Box::pin(async move { Ok(found) })
    }

    fn config_set(
        &self,
        key: &str,
        value: &str,
        expected: Option<u64>,
    ) -> BoxFuture<'_, Result<u64, RegistryError>> {
        let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        let found = configs.get(key).map(|c| c.revision);
        let outcome = if found == expected {
            let revision = found.unwrap_or(0) + 1;
            configs.insert(
                key.to_string(),
                Config {
                    value: value.to_string(),
                    revision,
                },
            );
            Ok(revision)
        } else {
            Err(RegistryError::Conflict {
                key: key.to_string(),
                found,
                expected,
            })
        };
        Box::pin(async move { outcome })
    }

    fn config_watch(&self, key: &str) -> BoxFuture<'_, Result<ConfigChanges, RegistryError>> {
        watch_config_by_reading(self, key)
    }
}
