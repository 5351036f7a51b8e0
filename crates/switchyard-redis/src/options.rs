//! `redis://` and `rediss://` URLs into a transport: namespace, claim idle time, TLS.

use std::time::Duration;

use switchyard_core::error::TransportError;
use tokio::sync::OnceCell;

use crate::RedisTransport;

impl RedisTransport {
    /// A transport for `redis://HOST:PORT[/DB][?ns=NAME&claim_idle_ms=N&max_message_bytes=N]`, or `rediss://…` for
    /// TLS (the server's certificate checked against the system's roots, or only against the
    /// PEM certificates in `tls_ca=PATH`). Connects on first use.
    pub fn from_url(url: &str) -> Result<Self, TransportError> {
        let mut parsed =
            url::Url::parse(url).map_err(|e| TransportError::invalid_url(url, e.to_string()))?;
        if !matches!(parsed.scheme(), "redis" | "rediss") {
            return Err(TransportError::invalid_url(
                url,
                "expected redis://HOST:PORT[/DB] or rediss://… (TLS)",
            ));
        }
        let mut namespace = "default".to_string();
        let mut claim_idle = Duration::from_secs(30);
        let mut tls_ca = None;
        let mut max_message = crate::events::MAX_MESSAGE;
        for (k, v) in parsed.query_pairs() {
            match k.as_ref() {
                "ns" => namespace = v.to_string(),
                "tls_ca" if parsed.scheme() == "rediss" => {
                    let pem = std::fs::read(v.as_ref()).map_err(|e| {
                        TransportError::invalid_url(url, format!("tls_ca={v}: {e}"))
                    })?;
                    tls_ca = Some(pem);
                }
                "tls_ca" => {
                    return Err(TransportError::invalid_url(
                        url,
                        "tls_ca is for rediss:// (TLS) URLs",
                    ))
                }
                "claim_idle_ms" => {
                    let ms: u64 = v.parse().map_err(|_| {
                        TransportError::invalid_url(
                            url,
                            format!("claim_idle_ms={v} is not a number"),
                        )
                    })?;
                    claim_idle = Duration::from_millis(ms.max(50));
                }
                "max_message_bytes" => {
                    max_message = TransportError::url_number(url, &k, &v)?;
                }
                other => {
                    return Err(TransportError::invalid_url(
                        url,
                        format!(
                            "unknown option {other:?} \
                             (known: ns, claim_idle_ms, max_message_bytes, tls_ca)"
                        ),
                    ))
                }
            }
        }
        parsed.set_query(None);
        let client = match tls_ca {
            None => redis::Client::open(parsed.as_str()),
            Some(root_cert) => redis::Client::build_with_tls(
                parsed.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            ),
        }
        .map_err(|e| TransportError::invalid_url(url, e.to_string()))?;
        Ok(Self {
            url: url.to_string(),
            client,
            namespace,
            claim_idle,
            max_message,
            con: OnceCell::new(),
            replies: OnceCell::new(),
            seen_alive_ms: std::sync::Mutex::default(),
        })
    }
}
