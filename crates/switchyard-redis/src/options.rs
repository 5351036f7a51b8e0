//! A Redis transport's options, typed, and read from a `redis://` or `rediss://` URL with the
//! one grammar of every transport (`switchyard_core::url_options`).

use std::str::FromStr;
use std::time::Duration;

use switchyard_core::error::TransportError;
use switchyard_core::url_options::UrlOptions;
use tokio::sync::OnceCell;

use crate::RedisTransport;

/// What a Redis transport is made of: `redis://HOST:PORT[/DB][?OPTIONS]`, or `rediss://…`
/// for TLS, parsed ([`FromStr`]), or adjusted with the setters.
///
/// ```
/// use switchyard_redis::{RedisOptions, RedisTransport};
/// let options: RedisOptions = "redis://127.0.0.1:6379?ns=shop".parse().unwrap();
/// assert_eq!(options.namespace, "shop");
/// let transport = RedisTransport::new(options.max_message_bytes(64 * 1024)).unwrap();
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisOptions {
    /// The URL as given (its password is removed from every message that shows it).
    pub url: String,
    /// The server, without the options: `redis://[USER:PASS@]HOST:PORT[/DB]`.
    pub server: String,
    /// Calls and events of services in different namespaces never meet (`?ns=`; `default`).
    pub namespace: String,
    /// How long an event stays with a consumer that took it, did not acknowledge it and
    /// stopped renewing it (it died) before another consumer of its group claims it
    /// (`?claim_idle_ms=`, at least 50 ms; 30 s). A live consumer renews what it holds every
    /// third of this, so a slow handler keeps its event.
    pub claim_idle: Duration,
    /// The largest payload `publish` accepts (`?max_message_bytes=`; 1 MiB).
    pub max_message_bytes: usize,
    /// Entries a topic's stream holds at most (`?max_len=`; a million). A stream that reaches
    /// it is trimmed of what every consumer group has settled; while what is left is still
    /// that long, `publish` refuses, rather than trimming entries a group has not read.
    pub max_len: u64,
    /// For `rediss://`: trust only the PEM certificates in this file (`?tls_ca=PATH`)
    /// instead of the system's roots.
    pub tls_ca: Option<Vec<u8>>,
}

impl FromStr for RedisOptions {
    type Err = TransportError;

    fn from_str(url: &str) -> Result<Self, TransportError> {
        let parsed =
            url::Url::parse(url).map_err(|e| TransportError::invalid_url(url, e.to_string()))?;
        let tls = match parsed.scheme() {
            "redis" => false,
            "rediss" => true,
            _ => {
                return Err(TransportError::invalid_url(
                    url,
                    "expected redis://HOST:PORT[/DB] or rediss://… (TLS)",
                ))
            }
        };
        let options = UrlOptions::parse(url, &["claim_idle_ms", "tls_ca", "max_len"])?;
        let tls_ca = options.tls_ca(tls, "rediss")?;
        Ok(Self {
            url: url.to_string(),
            server: options.base().to_string(),
            namespace: options
                .namespace(&['*', ':'])?
                .unwrap_or_else(|| "default".into()),
            claim_idle: options
                .millis("claim_idle_ms")?
                .map_or(Duration::from_secs(30), |d| {
                    d.max(Duration::from_millis(50))
                }),
            max_message_bytes: options
                .number("max_message_bytes")?
                .unwrap_or(crate::events::MAX_MESSAGE),
            max_len: options
                .number("max_len")?
                .map_or(crate::events::MAX_LEN, |n: u64| n.max(1)),
            tls_ca,
        })
    }
}

impl RedisOptions {
    /// Sets the namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets how long an unacknowledged event waits before another consumer claims it.
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle;
        self
    }

    /// Sets how many entries a topic's stream holds at most (see [`RedisOptions::max_len`]).
    pub fn max_len(mut self, entries: u64) -> Self {
        self.max_len = entries.max(1);
        self
    }

    /// Sets the largest payload `publish` accepts.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }
}

impl RedisTransport {
    /// A transport for a `redis://` or `rediss://` URL (see [`RedisOptions`]). Connects on
    /// first use.
    pub fn from_url(url: &str) -> Result<Self, TransportError> {
        Self::new(url.parse()?)
    }

    /// A transport with these options.
    pub fn new(options: RedisOptions) -> Result<Self, TransportError> {
        let client = match options.tls_ca {
            None => redis::Client::open(options.server.as_str()),
            Some(root_cert) => redis::Client::build_with_tls(
                options.server.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            ),
        }
        .map_err(|e| TransportError::invalid_url(&options.url, e.to_string()))?;
        Ok(Self {
            url: options.url,
            client,
            namespace: options.namespace,
            claim_idle: options.claim_idle,
            max_message: options.max_message_bytes,
            max_len: options.max_len,
            room: std::sync::Mutex::default(),
            con: OnceCell::new(),
            replies: OnceCell::new(),
            seen_alive_ms: std::sync::Mutex::default(),
            links: Default::default(),
        })
    }
}
