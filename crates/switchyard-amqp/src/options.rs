//! A RabbitMQ transport's options, typed, and read from an `amqp://` URL with the one grammar
//! of every transport (`switchyard_core::url_options`).

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_core::error::TransportError;
use switchyard_core::url_options::UrlOptions;

use crate::connection::*;
use crate::events::*;
use crate::AmqpTransport;

/// lapin's own connection options, passed on to it.
const LAPIN_OPTIONS: [&str; 4] = [
    "heartbeat",
    "connection_timeout",
    "channel_max",
    "frame_max",
];

/// What a RabbitMQ transport is made of: `amqp://USER:PASS@HOST:PORT/VHOST[?OPTIONS]`
/// (guest/guest and vhost `/` when absent) parsed ([`FromStr`]), or adjusted with the
/// setters.
///
/// ```
/// use switchyard_amqp::{AmqpOptions, AmqpTransport};
/// let options: AmqpOptions = "amqp://127.0.0.1:5672/%2f?ns=shop&heartbeat=10".parse().unwrap();
/// assert_eq!((options.namespace.as_str(), options.broker.as_str()), ("shop", "amqp://127.0.0.1:5672/%2f?heartbeat=10"));
/// let transport = AmqpTransport::new(options.max_message_bytes(64 * 1024));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AmqpOptions {
    /// The URL as given (its password is removed from every message that shows it).
    pub url: String,
    /// What lapin connects to: the URL without switchyard's options, with lapin's own
    /// (`heartbeat`, `connection_timeout`, `channel_max`, `frame_max`).
    pub broker: String,
    /// Calls and events of services in different namespaces never meet (`?ns=`; `default`).
    pub namespace: String,
    /// The largest message `publish` accepts (`?max_message_bytes=`; 1 MiB).
    pub max_message_bytes: usize,
    /// An unused group queue is deleted after this long (`?queue_expires_ms=`, at least 1 s;
    /// never).
    pub queue_expires: Option<Duration>,
}

impl FromStr for AmqpOptions {
    type Err = TransportError;

    fn from_str(url: &str) -> Result<Self, TransportError> {
        let parsed =
            url::Url::parse(url).map_err(|e| TransportError::invalid_url(url, e.to_string()))?;
        if parsed.scheme() != "amqp" {
            return Err(TransportError::invalid_url(
                url,
                "expected amqp://USER:PASS@HOST:PORT/VHOST[?ns=NAME]",
            ));
        }
        if parsed.host_str().is_none() {
            return Err(TransportError::invalid_url(url, "no host"));
        }
        let mut known = vec!["queue_expires_ms"];
        known.extend(LAPIN_OPTIONS);
        let options = UrlOptions::parse(url, &known)?;
        let passed_on = options.passed_on(&LAPIN_OPTIONS);
        let broker = match passed_on.as_str() {
            "" => options.base().to_string(),
            query => format!("{}?{query}", options.base()),
        };
        Ok(Self {
            url: url.to_string(),
            broker,
            namespace: options
                .namespace(&['*', '#'])?
                .unwrap_or_else(|| "default".into()),
            max_message_bytes: options.number("max_message_bytes")?.unwrap_or(MAX_MESSAGE),
            queue_expires: options
                .millis("queue_expires_ms")?
                .map(|d| d.max(Duration::from_secs(1))),
        })
    }
}

impl AmqpOptions {
    /// Sets the namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets the largest message `publish` accepts.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Deletes an unused group queue after `after`.
    pub fn queue_expires(mut self, after: Duration) -> Self {
        self.queue_expires = Some(after);
        self
    }
}

impl AmqpTransport {
    /// A transport for an `amqp://` URL (see [`AmqpOptions`]). The connection is made on
    /// first use; an unreachable broker is then an error naming the URL, its password
    /// removed.
    pub fn from_url(url: &str) -> Result<Self, TransportError> {
        Ok(Self::new(url.parse()?))
    }

    /// A transport with these options.
    pub fn new(options: AmqpOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                url: options.url,
                uri: options.broker,
                namespace: options.namespace,
                max_message: options.max_message_bytes,
                queue_expires: options.queue_expires,
                link: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                rpc: Mutex::new(None),
                rpc_connecting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The queue a service's calls wait on: `sy.rpc.<namespace>.<service>`.
    pub(crate) fn rpc_queue(&self, service: &str) -> String {
        format!("sy.rpc.{}.{service}", self.inner.namespace)
    }
}
