//! `file://DIR`: a registry in a folder that several processes on one machine share, with no
//! server: one JSON file per instance (`DIR/_<service>/_<id>.json`, names percent-encoded),
//! written whole and renamed into place so that a reader never sees half of one; a record whose
//! lease ran out is ignored and removed by the next reader.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{
    expiry, in_order, live, watch_by_listing, watch_config_by_reading, Changes, Config,
    ConfigChanges, Instance, Registry, RegistryError,
};

/// A registry in a folder. See the module's notes.
#[derive(Debug, Clone)]
pub struct FileRegistry {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Record {
    instance: Instance,
    expires_ms: u64,
}

/// A name as one safe path component: percent-encoded (no `/`), and prefixed so that no name
/// can be `.` or `..`.
fn component(name: &str) -> String {
    let encoded: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
    format!("_{encoded}")
}

impl FileRegistry {
    /// The registry kept in `dir` (made when first written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Runs `work` (file system calls) on the blocking pool.
    async fn off_thread<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, RegistryError> {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| RegistryError::Unavailable {
                url: self.url(),
                source: Box::new(e),
            })
    }

    fn unavailable(&self, e: std::io::Error) -> RegistryError {
        RegistryError::Unavailable {
            url: self.url(),
            source: Box::new(e),
        }
    }

    fn path(&self, service: &str, id: &str) -> PathBuf {
        self.dir
            .join(component(service))
            .join(format!("{}.json", component(id)))
    }

    fn write(&self, instance: &Instance, ttl: Duration) -> Result<(), RegistryError> {
        let path = self.path(&instance.service, &instance.id);
        let folder = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(folder).map_err(|e| self.unavailable(e))?;
        let record = Record {
            instance: instance.clone(),
            expires_ms: expiry(ttl),
        };
        let json = serde_json::to_vec(&record).map_err(|e| RegistryError::Corrupt {
            url: self.url(),
            key: path.display().to_string(),
            reason: e.to_string(),
        })?;
        // Written aside, then renamed: a reader sees the old record or the new one, whole.
        let aside = folder.join(format!(
            ".{}.{}",
            component(&instance.id),
            crate::message::new_id()
        ));
        std::fs::write(&aside, json).map_err(|e| self.unavailable(e))?;
        std::fs::rename(&aside, &path).map_err(|e| {
            let _ = std::fs::remove_file(&aside);
            self.unavailable(e)
        })
    }

    /// The live records under `dir`, of `service` or of all; expired ones removed.
    fn read(dir: &Path, service: Option<&str>) -> Result<Vec<Instance>, std::io::Error> {
        let mut found = Vec::new();
        let services = match std::fs::read_dir(dir) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(e),
        };
        let wanted = service.map(component);
        for folder in services.flatten() {
            let name = folder.file_name().to_string_lossy().into_owned();
            if !name.starts_with('_') || wanted.as_ref().is_some_and(|w| *w != name) {
                continue;
            }
            let Ok(files) = std::fs::read_dir(folder.path()) else {
                continue;
            };
            for file in files.flatten() {
                let path = file.path();
                let is_record = path.extension().is_some_and(|e| e == "json")
                    && file.file_name().to_string_lossy().starts_with('_');
                if !is_record {
                    continue;
                }
                // A record removed between listing and reading is simply gone.
                let Ok(bytes) = std::fs::read(&path) else {
                    continue;
                };
                match serde_json::from_slice::<Record>(&bytes) {
                    Ok(r) if live(r.expires_ms) => found.push(r.instance),
                    Ok(_) => {
                        let _ = std::fs::remove_file(&path);
                    }
                    Err(e) => {
                        tracing::warn!(target: "switchyard", path = %path.display(), error = %e, "unreadable registry record ignored")
                    }
                }
            }
        }
        Ok(in_order(found))
    }
}

impl FileRegistry {
    fn config_path(&self, key: &str) -> PathBuf {
        self.dir
            .join(".config")
            .join(format!("{}.json", component(key)))
    }

    fn config_read(path: &Path) -> Result<Option<Config>, std::io::Error> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Compare-and-set under a lock file (made with `create_new`, so one process at a time
    /// holds it; one left by a process that died holding it is broken after 5 s).
    fn config_write(
        &self,
        key: &str,
        value: &str,
        expected: Option<u64>,
    ) -> Result<u64, RegistryError> {
        let path = self.config_path(key);
        let folder = path.parent().unwrap_or(&self.dir).to_path_buf();
        std::fs::create_dir_all(&folder).map_err(|e| self.unavailable(e))?;
        let lock = folder.join(format!("{}.lock", component(key)));
        let started = std::time::Instant::now();
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock)
            {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = std::fs::metadata(&lock)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > Duration::from_secs(5));
                    if stale || started.elapsed() > Duration::from_secs(10) {
                        let _ = std::fs::remove_file(&lock);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(self.unavailable(e)),
            }
        }
        let outcome = (|| {
            let found = Self::config_read(&path)
                .map_err(|e| self.unavailable(e))?
                .map(|c| c.revision);
            if found != expected {
                return Err(RegistryError::Conflict {
                    key: key.to_string(),
                    found,
                    expected,
                });
            }
            let config = Config {
                value: value.to_string(),
                revision: found.unwrap_or(0) + 1,
            };
            let json = serde_json::to_vec(&config).map_err(|e| self.unavailable(e.into()))?;
            let aside = folder.join(format!(".{}.{}", component(key), crate::message::new_id()));
            std::fs::write(&aside, json).map_err(|e| self.unavailable(e))?;
            std::fs::rename(&aside, &path).map_err(|e| self.unavailable(e))?;
            Ok(config.revision)
        })();
        let _ = std::fs::remove_file(&lock);
        outcome
    }
}

impl Registry for FileRegistry {
    fn register(
        &self,
        instance: &Instance,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), RegistryError>> {
        let (this, instance) = (self.clone(), instance.clone());
        Box::pin(async move { self.off_thread(move || this.write(&instance, ttl)).await? })
    }

    fn deregister(&self, service: &str, id: &str) -> BoxFuture<'_, Result<(), RegistryError>> {
        let path = self.path(service, id);
        Box::pin(async move {
            let removed = self.off_thread(move || std::fs::remove_file(path)).await?;
            match removed {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.unavailable(e)),
                _ => Ok(()),
            }
        })
    }

    fn list(&self, service: Option<&str>) -> BoxFuture<'_, Result<Vec<Instance>, RegistryError>> {
        let (dir, service) = (self.dir.clone(), service.map(str::to_string));
        Box::pin(async move {
            self.off_thread(move || Self::read(&dir, service.as_deref()))
                .await?
                .map_err(|e| self.unavailable(e))
        })
    }

    fn watch(&self, service: Option<&str>) -> BoxFuture<'_, Result<Changes, RegistryError>> {
        watch_by_listing(self, service)
    }

    fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    fn config_get(&self, key: &str) -> BoxFuture<'_, Result<Option<Config>, RegistryError>> {
        let path = self.config_path(key);
        Box::pin(async move {
            self.off_thread(move || Self::config_read(&path))
                .await?
                .map_err(|e| self.unavailable(e))
        })
    }

    fn config_set(
        &self,
        key: &str,
        value: &str,
        expected: Option<u64>,
    ) -> BoxFuture<'_, Result<u64, RegistryError>> {
        let (this, key, value) = (self.clone(), key.to_string(), value.to_string());
        Box::pin(async move {
            self.off_thread(move || this.config_write(&key, &value, expected))
                .await?
        })
    }

    fn config_watch(&self, key: &str) -> BoxFuture<'_, Result<ConfigChanges, RegistryError>> {
        watch_config_by_reading(self, key)
    }
}
