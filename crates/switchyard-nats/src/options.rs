//! `nats://` URLs into a transport: namespace, TLS, ack wait.

use std::collections::HashSet;
use std::time::Duration;

use switchyard_core::error::TransportError;
use tokio::sync::OnceCell;

use crate::binding::*;
use crate::NatsTransport;

impl NatsTransport {
    /// A transport for `nats://HOST:PORT[?ns=NAMESPACE]` (or `nats://HOST:PORT/NAMESPACE`;
    /// namespace `default` when absent). The
    /// connection is made on first use; an unreachable server is then an error naming the URL.
    pub fn from_url(url: &str) -> Result<Self, TransportError> {
        let parsed =
            url::Url::parse(url).map_err(|e| TransportError::invalid_url(url, e.to_string()))?;
        if parsed.scheme() != "nats" {
            return Err(TransportError::invalid_url(
                url,
                "expected nats://HOST:PORT[/NAMESPACE]",
            ));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| TransportError::invalid_url(url, "no host"))?;
        let port = parsed.port().unwrap_or(4222);
        // `?ns=NAME`, as on every transport; a path (`nats://HOST/NAME`) still names it too.
        let ns = parsed
            .query_pairs()
            .find(|(k, _)| k == "ns")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| parsed.path().trim_matches('/').replace('/', "."));
        let namespace = if ns.is_empty() {
            "default".to_string()
        } else {
            ns
        };
        check_subject("namespace", &namespace).map_err(|r| TransportError::invalid_url(url, r))?;
        // `?ack_wait_ms=N`: how long JetStream waits for an ack before it redelivers to another
        // consumer (default 30 s). It bounds how long a message of a consumer that died stays
        // stuck; a handler that runs longer gets its message redelivered meanwhile.
        let mut ack_wait = Duration::from_secs(30);
        // `?tls=true`: TLS required (the server's certificate checked against the system's
        // roots); `?tls_ca=PATH`: also trust the PEM certificates in PATH (implies TLS).
        let (mut tls, mut tls_ca) = (false, None);
        // `?max_message_bytes=N`: the largest message `publish` accepts, payload and headers
        // (default and at most: the server's `max_payload`).
        let mut max_message = usize::MAX;
        for (k, v) in parsed.query_pairs() {
            match k.as_ref() {
                "tls" => {
                    tls = v.parse().map_err(|_| {
                        TransportError::invalid_url(url, format!("tls={v} is not true or false"))
                    })?;
                }
                "tls_ca" => {
                    tls = true;
                    tls_ca = Some(std::path::PathBuf::from(v.as_ref()));
                }
                "ack_wait_ms" => {
                    let ms: u64 = v.parse().map_err(|_| {
                        TransportError::invalid_url(
                            url,
                            format!("ack_wait_ms={v} is not a number of milliseconds"),
                        )
                    })?;
                    ack_wait = Duration::from_millis(ms.max(100));
                }
                "max_message_bytes" => {
                    max_message = TransportError::url_number(url, &k, &v)?;
                }
                "ns" => {}
                other => {
                    return Err(TransportError::invalid_url(
                        url,
                        format!(
                            "unknown option {other:?} \
                             (known: ns, ack_wait_ms, max_message_bytes, tls, tls_ca)"
                        ),
                    ))
                }
            }
        }
        let auth = match (parsed.username(), parsed.password()) {
            ("", _) => String::new(),
            (u, Some(p)) => format!("{u}:{p}@"),
            (u, None) => format!("{u}@"),
        };
        Ok(Self {
            url: url.to_string(),
            server: format!("nats://{auth}{host}:{port}"),
            namespace,
            client: OnceCell::new(),
            control: OnceCell::new(),
            streams: std::sync::Mutex::new(HashSet::new()),
            js: OnceCell::new(),
            replies: OnceCell::new(),
            ack_wait,
            max_message,
            tls,
            tls_ca,
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
