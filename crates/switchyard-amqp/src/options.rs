//! `amqp://` URLs into a transport: namespace, retry delays.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_core::error::TransportError;

use crate::connection::*;
use crate::events::*;
use crate::AmqpTransport;

pub(crate) fn ms_option(url: &str, key: &str, value: &str) -> Result<u64, TransportError> {
    TransportError::url_number(url, key, value)
}

impl AmqpTransport {
    /// A transport for `amqp://USER:PASS@HOST:PORT/VHOST` (guest/guest and vhost `/` when
    /// absent). Options: `ns` (the RPC namespace, default `default`), `max_message_bytes`
    /// (default 1 MiB), `queue_expires_ms` (delete an unused group queue after that long).
    /// The connection is made on first use; an unreachable broker is then an error naming
    /// the URL, its password removed.
    pub fn from_url(url: &str) -> Result<Self, TransportError> {
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
        let mut namespace = "default".to_string();
        let mut max_message = MAX_MESSAGE;
        let mut queue_expires = None;
        let mut passthrough = Vec::new();
        for (k, v) in parsed.query_pairs() {
            match k.as_ref() {
                "ns" => {
                    if v.is_empty() || v.contains(['*', '#', ' ']) {
                        return Err(TransportError::invalid_url(url, format!("ns={v} is not a usable namespace")));
                    }
                    namespace = v.to_string();
                }
                "max_message_bytes" => {
                    max_message = ms_option(url, &k, &v)?.try_into().unwrap_or(usize::MAX);
                }
                "queue_expires_ms" => {
                    queue_expires = Some(Duration::from_millis(ms_option(url, &k, &v)?.max(1000)));
                }
                // lapin's own connection options.
                "heartbeat" | "connection_timeout" | "channel_max" | "frame_max" => {
                    passthrough.push(format!("{k}={v}"));
                }
                unknown => {
                    return Err(TransportError::invalid_url(
                        url,
                        format!(
                            "unknown option {unknown:?} (known: ns, max_message_bytes, \
                             queue_expires_ms, heartbeat, connection_timeout, channel_max, frame_max)"
                        ),
                    ))
                }
            }
        }
        let mut base = url.split('?').next().unwrap_or(url).to_string();
        if !passthrough.is_empty() {
            base = format!("{base}?{}", passthrough.join("&"));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                url: url.to_string(),
                uri: base,
                namespace,
                max_message,
                queue_expires,
                link: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                rpc: Mutex::new(None),
                rpc_connecting: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The queue a service's calls wait on: `sy.rpc.<namespace>.<service>`.
    pub(crate) fn rpc_queue(&self, service: &str) -> String {
        format!("sy.rpc.{}.{service}", self.inner.namespace)
    }
}
