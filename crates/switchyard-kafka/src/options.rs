//! `kafka://` URLs into a transport: brokers, retry delays.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use switchyard_core::error::TransportError;
use tokio::sync::OnceCell;

use crate::connection::*;
use crate::events::*;
use crate::KafkaTransport;

impl KafkaTransport {
    /// A transport for `kafka://HOST:PORT[,HOST:PORT…]`. Options: `partitions` (of the
    /// topics it creates, default 4), `max_message_bytes` (default 1 MiB). Connections are made
    /// on first use.
    pub fn from_url(url: &str) -> Result<Self, TransportError> {
        let rest = url.strip_prefix("kafka://").ok_or_else(|| {
            TransportError::invalid_url(url, "expected kafka://HOST:PORT[,HOST:PORT]")
        })?;
        let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
        let brokers = hosts.trim_end_matches('/').to_string();
        if brokers.is_empty() {
            return Err(TransportError::invalid_url(url, "no broker address"));
        }
        let mut partitions = 4;
        let mut max_message = MAX_MESSAGE;
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "partitions" => {
                    partitions = v.parse::<i32>().ok().filter(|p| *p > 0).ok_or_else(|| {
                        TransportError::invalid_url(
                            url,
                            format!("partitions={v} is not a positive number"),
                        )
                    })?;
                }
                "max_message_bytes" => {
                    max_message = TransportError::url_number(url, &k, &v)?;
                }
                unknown => {
                    return Err(TransportError::invalid_url(
                        url,
                        format!(
                            "unknown option {unknown:?} (known: partitions, max_message_bytes)"
                        ),
                    ))
                }
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                url: url.to_string(),
                brokers,
                partitions,
                max_message,
                producer: OnceCell::new(),
                admin: OnceCell::new(),
                topics: Mutex::new(HashSet::new()),
            }),
        })
    }
}
