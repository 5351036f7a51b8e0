//! A NATS transport's options, typed, and read from a `nats://` URL with the one grammar of
//! every transport (`switchyard_core::url_options`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use switchyard_core::error::TransportError;
use switchyard_core::url_options::UrlOptions;
use tokio::sync::OnceCell;

use crate::binding::*;
use crate::NatsTransport;

/// What a NATS transport is made of: `nats://[USER[:PASS]@]HOST[:PORT][?OPTIONS]` parsed
/// ([`FromStr`]), or built and adjusted with the setters.
///
/// ```
/// use std::time::Duration;
/// use switchyard_nats::{NatsOptions, NatsTransport};
/// let options: NatsOptions = "nats://127.0.0.1:4222?ns=shop&ack_wait_ms=5000".parse().unwrap();
/// assert_eq!((options.namespace.as_str(), options.ack_wait), ("shop", Duration::from_secs(5)));
/// let transport = NatsTransport::new(options.max_message_bytes(64 * 1024)).unwrap();
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NatsOptions {
    /// The URL as given (its password is removed from every message that shows it).
    pub url: String,
    /// The server: `nats://[USER[:PASS]@]HOST:PORT` (port 4222 when absent).
    pub server: String,
    /// Calls and events of services in different namespaces never meet (`?ns=`, or the
    /// URL's path; `default`).
    pub namespace: String,
    /// How long JetStream waits for an ack before it redelivers to another consumer
    /// (`?ack_wait_ms=`, at least 100 ms; 30 s). It bounds how long a message of a consumer
    /// that died stays stuck; a live consumer renews what it holds (`+WPI`) every third of
    /// it, so a handler that runs longer keeps its message.
    pub ack_wait: Duration,
    /// The largest message `publish` accepts, payload and headers (`?max_message_bytes=`;
    /// default and at most: the server's `max_payload`).
    pub max_message_bytes: usize,
    /// TLS required, the server's certificate checked against the system's roots
    /// (`?tls=true`).
    pub tls: bool,
    /// Also trust the PEM certificates in this file (`?tls_ca=PATH`; implies TLS).
    pub tls_ca: Option<PathBuf>,
}

impl FromStr for NatsOptions {
    type Err = TransportError;

    fn from_str(url: &str) -> Result<Self, TransportError> {
        let parsed =
            url::Url::parse(url).map_err(|e| TransportError::invalid_url(url, e.to_string()))?;
        if parsed.scheme() != "nats" {
            return Err(TransportError::invalid_url(
                url,
                "expected nats://HOST:PORT[?ns=NAMESPACE]",
            ));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| TransportError::invalid_url(url, "no host"))?;
        let port = parsed.port().unwrap_or(4222);
        let auth = match (parsed.username(), parsed.password()) {
            ("", _) => String::new(),
            (u, Some(p)) => format!("{u}:{p}@"),
            (u, None) => format!("{u}@"),
        };
        let options = UrlOptions::parse(url, &["ack_wait_ms", "tls", "tls_ca"])?;
        // `?ns=NAME`, as on every transport; a path (`nats://HOST/NAME`) still names it too.
        let path = parsed.path().trim_matches('/').replace('/', ".");
        let namespace = match options.namespace(&['*', '>'])? {
            Some(ns) => ns,
            None if path.is_empty() => "default".to_string(),
            None => path,
        };
        let tls_ca = options.get("tls_ca").map(PathBuf::from);
        Ok(Self {
            url: url.to_string(),
            server: format!("nats://{auth}{host}:{port}"),
            namespace,
            ack_wait: options
                .millis("ack_wait_ms")?
                .map_or(Duration::from_secs(30), |d| {
                    d.max(Duration::from_millis(100))
                }),
            max_message_bytes: options.number("max_message_bytes")?.unwrap_or(usize::MAX),
            tls: options.flag("tls")?.unwrap_or(false) || tls_ca.is_some(),
            tls_ca,
        })
    }
}

impl NatsOptions {
    /// Sets the namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets how long JetStream waits for an ack before redelivering.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }

    /// Sets the largest message `publish` accepts.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Requires TLS, trusting also the PEM certificates in `path`.
    pub fn tls_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls = true;
        self.tls_ca = Some(path.into());
        self
    }
}

impl NatsTransport {
    /// A transport for a `nats://` URL (see [`NatsOptions`]). The connection is made on
    /// first use; an unreachable server is then an error naming the URL.
    pub fn from_url(url: &str) -> Result<Self, TransportError> {
        Self::new(url.parse()?)
    }

    /// A transport with these options; an unusable namespace is an error.
    pub fn new(options: NatsOptions) -> Result<Self, TransportError> {
        check_subject("namespace", &options.namespace)
            .map_err(|r| TransportError::invalid_url(&options.url, r))?;
        Ok(Self {
            url: options.url,
            server: options.server,
            namespace: options.namespace,
            client: OnceCell::new(),
            control: OnceCell::new(),
            streams: std::sync::Mutex::new(HashSet::new()),
            js: OnceCell::new(),
            replies: OnceCell::new(),
            ack_wait: options.ack_wait,
            max_message: options.max_message_bytes,
            tls: options.tls,
            tls_ca: options.tls_ca,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::NatsTransport;

    #[test]
    fn the_namespace_comes_from_ns_or_the_path() {
        for (url, ns) in [
            ("nats://127.0.0.1:4222?ns=shop", "shop"),
            ("nats://127.0.0.1:4222/shop", "shop"),
            ("nats://127.0.0.1:4222", "default"),
        ] {
            assert_eq!(NatsTransport::from_url(url).unwrap().namespace, ns, "{url}");
        }
        assert!(NatsTransport::from_url("nats://127.0.0.1:4222?ns=a b").is_err());
    }
}
