//! One grammar for the options of every transport URL: `scheme://…?key=value&…`, percent
//! encoded; `ns` names the namespace and `max_message_bytes` bounds a message on every
//! transport; an option a transport does not know is an error listing those it knows, never
//! silently ignored; numbers are whole numbers, durations are `_ms` milliseconds, flags are
//! `true` or `false`. Each transport reads its typed options through [`UrlOptions`].

use std::str::FromStr;
use std::time::Duration;

use crate::error::TransportError;

/// Options every transport knows.
pub const COMMON: [&str; 2] = ["ns", "max_message_bytes"];

/// The options of one transport URL, checked against the keys the transport knows.
///
/// ```
/// use switchyard_core::url_options::UrlOptions;
/// let o = UrlOptions::parse("nats://h:4222?ns=shop&ack_wait_ms=500", &["ack_wait_ms"]).unwrap();
/// assert_eq!(o.namespace(&[' ']).unwrap().as_deref(), Some("shop"));
/// assert_eq!(o.millis("ack_wait_ms").unwrap(), Some(std::time::Duration::from_millis(500)));
/// let e = UrlOptions::parse("nats://h?acks=1", &["ack_wait_ms"]).unwrap_err();
/// assert!(e.to_string().contains("unknown option \"acks\" (known: ns, max_message_bytes, ack_wait_ms)"));
/// ```
#[derive(Debug, Clone)]
pub struct UrlOptions {
    url: String,
    pairs: Vec<(String, String)>,
}

impl UrlOptions {
    /// The options after the `?` of `url`; each key must be one of [`COMMON`] or `known`.
    pub fn parse(url: &str, known: &[&str]) -> Result<Self, TransportError> {
        let query = url.split_once('?').map_or("", |(_, query)| query);
        let mut pairs = Vec::new();
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            if !COMMON.contains(&key.as_ref()) && !known.contains(&key.as_ref()) {
                let all: Vec<&str> = COMMON.iter().chain(known).copied().collect();
                return Err(TransportError::invalid_url(
                    url,
                    format!("unknown option {key:?} (known: {})", all.join(", ")),
                ));
            }
            pairs.push((key.into_owned(), value.into_owned()));
        }
        Ok(Self {
            url: url.to_string(),
            pairs,
        })
    }

    /// The URL, as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL without its options.
    pub fn base(&self) -> &str {
        self.url.split('?').next().unwrap_or(&self.url)
    }

    /// The value of `key`, the last one when given twice.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// An [`TransportError::InvalidUrl`] for this URL.
    pub fn error(&self, reason: impl Into<String>) -> TransportError {
        TransportError::invalid_url(&self.url, reason)
    }

    /// `ns`, refused when empty or holding one of `forbidden` (the broker's wildcards and
    /// separators).
    pub fn namespace(&self, forbidden: &[char]) -> Result<Option<String>, TransportError> {
        match self.get("ns") {
            None => Ok(None),
            Some(ns) if ns.is_empty() || ns.contains(forbidden) || ns.contains(' ') => {
                Err(self.error(format!("ns={ns} is not a usable namespace")))
            }
            Some(ns) => Ok(Some(ns.to_string())),
        }
    }

    /// Refuses `ns` on a transport where a namespace means nothing, saying `why`.
    pub fn no_namespace(&self, why: &str) -> Result<(), TransportError> {
        match self.get("ns") {
            Some(_) => Err(self.error(format!("ns is not used {why}"))),
            None => Ok(()),
        }
    }

    /// The PEM certificates of `?tls_ca=PATH`, read: only on a TLS URL (`tls`), whose scheme
    /// is `tls_scheme`.
    pub fn tls_ca(&self, tls: bool, tls_scheme: &str) -> Result<Option<Vec<u8>>, TransportError> {
        match self.get("tls_ca") {
            None => Ok(None),
            Some(_) if !tls => Err(self.error(format!("tls_ca is for {tls_scheme}:// (TLS) URLs"))),
            Some(path) => std::fs::read(path)
                .map(Some)
                .map_err(|e| self.error(format!("tls_ca={path}: {e}"))),
        }
    }

    /// `key` as a whole number.
    pub fn number<T: FromStr>(&self, key: &str) -> Result<Option<T>, TransportError> {
        self.get(key)
            .map(|v| TransportError::url_number(&self.url, key, v))
            .transpose()
    }

    /// `key` as milliseconds.
    pub fn millis(&self, key: &str) -> Result<Option<Duration>, TransportError> {
        Ok(self.number::<u64>(key)?.map(Duration::from_millis))
    }

    /// `key` as `true` or `false`.
    pub fn flag(&self, key: &str) -> Result<Option<bool>, TransportError> {
        self.get(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| self.error(format!("{key}={v} is not true or false")))
            })
            .transpose()
    }

    /// The options among `keys`, as `key=value&…` (options passed on to a client library).
    pub fn passed_on(&self, keys: &[&str]) -> String {
        self.pairs
            .iter()
            .filter(|(k, _)| keys.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_grammar_for_every_option() {
        let o = UrlOptions::parse(
            "x://h?ns=a%20b&max_message_bytes=12&on=true&ns=shop",
            &["on"],
        )
        .unwrap();
        assert_eq!(o.get("ns"), Some("shop"), "the last value wins");
        assert_eq!(o.number::<usize>("max_message_bytes").unwrap(), Some(12));
        assert_eq!(o.flag("on").unwrap(), Some(true));
        assert_eq!(o.base(), "x://h");
        let bad = UrlOptions::parse("x://h?max_message_bytes=lots", &[]).unwrap();
        assert!(bad
            .number::<usize>("max_message_bytes")
            .unwrap_err()
            .to_string()
            .contains("max_message_bytes=lots is not a whole number"));
        let bad = UrlOptions::parse("x://h?ns=a.*", &[]).unwrap();
        assert!(bad.namespace(&['*']).is_err());
        let bad = UrlOptions::parse("x://h?on=yes", &["on"]).unwrap();
        assert!(bad.flag("on").is_err());
    }
}
