//! Which transport to use, from code, a config file or the environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Environment variable naming the transport URL; it overrides the config file.
pub const URL_ENV: &str = "SWITCHYARD_URL";
/// Environment variable naming the config file (default `switchyard.toml` if it exists).
pub const CONFIG_ENV: &str = "SWITCHYARD_CONFIG";

/// A config file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Reading failed.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not valid TOML or has unknown keys.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        message: String,
    },
}

/// One named queue whose producer and consumer may use different transports (
/// mixed pairs: an HTTP producer feeding a broker-backed queue).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Topic name (defaults to the key of the table).
    pub name: Option<String>,
    /// Where producers publish.
    pub producer: Option<String>,
    /// Where consumers subscribe.
    pub consumer: Option<String>,
}

/// switchyard's configuration.
///
/// ```
/// let cfg = switchyard::Config::from_toml_str(r#"
///     url = "mem://orders"
///     [queues.orders]
///     producer = "http://127.0.0.1:9000"
///     consumer = "mem://orders"
/// "#).unwrap();
/// assert_eq!(cfg.url.as_deref(), Some("mem://orders"));
/// assert_eq!(cfg.queue_producer("orders"), Some("http://127.0.0.1:9000"));
/// assert_eq!(cfg.queue_consumer("unknown"), Some("mem://orders"), "falls back to `url`");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The default transport URL.
    pub url: Option<String>,
    /// Call timeout in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Codec name: `json` or `msgpack`.
    pub codec: Option<String>,
    /// Named queues.
    #[serde(default)]
    pub queues: BTreeMap<String, QueueConfig>,
}

impl Config {
    /// Parses TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<string>"),
            message: e.to_string(),
        })
    }

    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// The configuration in effect: the file named by `SWITCHYARD_CONFIG` (or
    /// `./switchyard.toml` if present), then `SWITCHYARD_URL` over its `url`.
    pub fn load() -> Result<Self, ConfigError> {
        let mut cfg = match std::env::var_os(CONFIG_ENV) {
            Some(p) => Self::from_file(Path::new(&p))?,
            None if Path::new("switchyard.toml").exists() => {
                Self::from_file(Path::new("switchyard.toml"))?
            }
            None => Self::default(),
        };
        if let Ok(url) = std::env::var(URL_ENV) {
            if !url.is_empty() {
                cfg.url = Some(url);
            }
        }
        Ok(cfg)
    }

    /// The transport URL, or `default` when none is configured.
    pub fn url_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.url.as_deref().unwrap_or(default)
    }

    /// Where `queue` is produced to (its own producer, else `url`).
    pub fn queue_producer(&self, queue: &str) -> Option<&str> {
        self.queues
            .get(queue)
            .and_then(|q| q.producer.as_deref())
            .or(self.url.as_deref())
    }

    /// Where `queue` is consumed from (its own consumer, else `url`).
    pub fn queue_consumer(&self, queue: &str) -> Option<&str> {
        self.queues
            .get(queue)
            .and_then(|q| q.consumer.as_deref())
            .or(self.url.as_deref())
    }
}
