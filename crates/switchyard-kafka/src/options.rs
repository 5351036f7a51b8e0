//! A Kafka transport's options, typed, and read from a `kafka://` URL with the one grammar of
//! every transport (`switchyard_core::url_options`).

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_core::error::TransportError;
use switchyard_core::url_options::UrlOptions;
use tokio::sync::OnceCell;

use crate::connection::*;
use crate::events::*;
use crate::KafkaTransport;

/// What a Kafka transport is made of: `kafka://HOST:PORT[,HOST:PORT…][?OPTIONS]` parsed
/// ([`FromStr`]), or adjusted with the setters.
///
/// ```
/// use switchyard_kafka::{KafkaOptions, KafkaTransport};
/// let options: KafkaOptions = "kafka://127.0.0.1:9092?partitions=8".parse().unwrap();
/// assert_eq!((options.brokers.as_str(), options.partitions), ("127.0.0.1:9092", 8));
/// let transport = KafkaTransport::new(options.max_message_bytes(64 * 1024));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KafkaOptions {
    /// The URL as given.
    pub url: String,
    /// The bootstrap brokers, `HOST:PORT,…`.
    pub brokers: String,
    /// Partitions of the topics the transport creates (`?partitions=`; 4).
    pub partitions: i32,
    /// The largest message `publish` accepts (`?max_message_bytes=`; 1 MiB).
    pub max_message_bytes: usize,
    /// How long a group member may go without polling before it leaves its group (Kafka's
    /// `max.poll.interval.ms`; 5 min). A subscription polls on its own, even while its
    /// handlers hold every message it may have, so only a blocked runtime reaches it.
    pub max_poll_interval: Duration,
}

impl FromStr for KafkaOptions {
    type Err = TransportError;

    fn from_str(url: &str) -> Result<Self, TransportError> {
        let rest = url.strip_prefix("kafka://").ok_or_else(|| {
            TransportError::invalid_url(url, "expected kafka://HOST:PORT[,HOST:PORT]")
        })?;
        let hosts = rest.split('?').next().unwrap_or(rest);
        let brokers = hosts.trim_end_matches('/').to_string();
        if brokers.is_empty() {
            return Err(TransportError::invalid_url(url, "no broker address"));
        }
        // Kafka has no namespace of its own: topics are the service's names.
        let options = UrlOptions::parse(url, &["partitions"])?;
        options.no_namespace("on Kafka: topics are named by the services")?;
        let partitions = match options.number::<i32>("partitions")? {
            None => 4,
            Some(p) if p > 0 => p,
            Some(p) => {
                return Err(options.error(format!("partitions={p} is not a positive number")))
            }
        };
        Ok(Self {
            url: url.to_string(),
            brokers,
            partitions,
            max_message_bytes: options.number("max_message_bytes")?.unwrap_or(MAX_MESSAGE),
            max_poll_interval: MAX_POLL_INTERVAL,
        })
    }
}

impl KafkaOptions {
    /// Sets the partitions of the topics the transport creates.
    pub fn partitions(mut self, partitions: i32) -> Self {
        self.partitions = partitions.max(1);
        self
    }

    /// Sets how long a group member may go without polling before it leaves its group; at
    /// least the group's session timeout (6 s), as the client requires.
    pub fn max_poll_interval(mut self, interval: Duration) -> Self {
        self.max_poll_interval = interval.max(SESSION_TIMEOUT);
        self
    }

    /// Sets the largest message `publish` accepts.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }
}

impl KafkaTransport {
    /// A transport for a `kafka://` URL (see [`KafkaOptions`]). Connections are made on
    /// first use.
    pub fn from_url(url: &str) -> Result<Self, TransportError> {
        Ok(Self::new(url.parse()?))
    }

    /// A transport with these options.
    pub fn new(options: KafkaOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                url: options.url,
                brokers: options.brokers,
                partitions: options.partitions,
                max_message: options.max_message_bytes,
                max_poll_interval: options.max_poll_interval,
                producer: OnceCell::new(),
                admin: OnceCell::new(),
                topics: Mutex::new(HashSet::new()),
                links: Default::default(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_poll_interval_is_at_least_the_session_timeout() {
        let options: KafkaOptions = "kafka://127.0.0.1:9092".parse().expect("url");
        assert_eq!(options.max_poll_interval, MAX_POLL_INTERVAL);
        let short = options.clone().max_poll_interval(Duration::from_secs(1));
        assert_eq!(short.max_poll_interval, SESSION_TIMEOUT);
        let long = options.max_poll_interval(Duration::from_secs(60));
        assert_eq!(long.max_poll_interval, Duration::from_secs(60));
    }
}
