//! An HTTP transport's options, typed, and read from an `http://` URL with the one grammar of
//! every transport (`switchyard_core::url_options`).

use std::str::FromStr;

use switchyard_core::codec::Codec;
use switchyard_core::error::TransportError;
use switchyard_core::service::DEFAULT_MAX_BODY;
use switchyard_core::url_options::UrlOptions;

use crate::ServerLimits;

/// What an HTTP transport is made of: `http://HOST:PORT[/PREFIX][?OPTIONS]` (also `ws://`,
/// the same server; `https://`, `wss://`) parsed ([`FromStr`]), or adjusted with the setters.
///
/// ```
/// use std::time::Duration;
/// use switchyard_http::{HttpOptions, HttpTransport};
/// let options: HttpOptions = "http://127.0.0.1:5000/api?codec=msgpack&idle_timeout_ms=5000".parse().unwrap();
/// assert_eq!(options.base, "http://127.0.0.1:5000/api");
/// let transport = HttpTransport::new(options.max_message_bytes(64 * 1024)).unwrap();
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HttpOptions {
    /// The service's address: `SCHEME://HOST:PORT[/PREFIX]`. An HTTP URL is one service, so
    /// there is no namespace (`ns` is refused).
    pub base: String,
    /// The codec of this client's calls (`?codec=json|msgpack`; JSON).
    pub codec: Codec,
    /// The largest event payload `publish` sends (`?max_message_bytes=`; 1 MiB).
    pub max_message_bytes: usize,
    /// The serving side's bounds on connections (`?max_connections=`,
    /// `header_timeout_ms`, `body_timeout_ms`, `idle_timeout_ms`, `max_in_flight`).
    pub limits: ServerLimits,
}

impl FromStr for HttpOptions {
    type Err = TransportError;

    fn from_str(url: &str) -> Result<Self, TransportError> {
        let parsed =
            url::Url::parse(url).map_err(|e| TransportError::invalid_url(url, e.to_string()))?;
        let scheme = match parsed.scheme() {
            "http" | "ws" => "http",
            "https" | "wss" => "https",
            other => {
                return Err(TransportError::invalid_url(
                    url,
                    format!("scheme {other:?} is not HTTP"),
                ))
            }
        };
        let host = parsed
            .host_str()
            .ok_or_else(|| TransportError::invalid_url(url, "no host"))?;
        let port = parsed.port_or_known_default().unwrap_or(80);
        let prefix = parsed.path().trim_end_matches('/');
        let options = UrlOptions::parse(
            url,
            &[
                "codec",
                "max_connections",
                "header_timeout_ms",
                "body_timeout_ms",
                "idle_timeout_ms",
                "max_in_flight",
            ],
        )?;
        options.no_namespace("over HTTP: the URL is the service")?;
        let codec = match options.get("codec") {
            None => Codec::Json,
            Some(name) => Codec::from_name(name).ok_or_else(|| {
                options.error(format!("unknown codec {name:?}: use json or msgpack"))
            })?,
        };
        let mut limits = ServerLimits::default();
        if let Some(n) = options.number("max_connections")? {
            limits = limits.max_connections(n);
        }
        if let Some(d) = options.millis("header_timeout_ms")? {
            limits = limits.header_read(d);
        }
        if let Some(d) = options.millis("body_timeout_ms")? {
            limits = limits.body_read(d);
        }
        if let Some(d) = options.millis("idle_timeout_ms")? {
            limits = limits.idle(d);
        }
        if let Some(n) = options.number("max_in_flight")? {
            limits = limits.max_in_flight(n);
        }
        Ok(Self {
            base: format!("{scheme}://{host}:{port}{prefix}"),
            codec,
            max_message_bytes: options
                .number("max_message_bytes")?
                .unwrap_or(DEFAULT_MAX_BODY),
            limits,
        })
    }
}

impl HttpOptions {
    /// Sets the codec of this client's calls.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Sets the largest event payload `publish` sends.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Sets the serving side's bounds on connections.
    pub fn limits(mut self, limits: ServerLimits) -> Self {
        self.limits = limits;
        self
    }
}
