//! `mqtt://` and `mqtts://` URLs into a transport: namespace, message size, TLS.

use std::sync::{Arc, Mutex};

use rumqttc::TlsConfiguration;

use switchyard_core::error::TransportError;

use tokio::sync::OnceCell;

use crate::connection::*;

use crate::events::*;
use crate::MqttTransport;

impl MqttTransport {
    /// A transport for `mqtt://[USER:PASS@]HOST:PORT` (port 1883 when absent). Options: `ns`
    /// (the RPC namespace, default `default`), `max_message_bytes` (default 1 MiB). Connections
    /// are made on first use; an unreachable broker is then an error naming the URL.
    pub fn from_url(url: &str) -> Result<Self, TransportError> {
        let parsed =
            url::Url::parse(url).map_err(|e| TransportError::invalid_url(url, e.to_string()))?;
        let secure = match parsed.scheme() {
            "mqtt" => false,
            "mqtts" => true,
            _ => {
                return Err(TransportError::invalid_url(
                    url,
                    "expected mqtt://HOST:PORT[?ns=NAME] or mqtts://… (TLS)",
                ))
            }
        };
        let host = parsed
            .host_str()
            .ok_or_else(|| TransportError::invalid_url(url, "no host"))?
            .to_string();
        let port = parsed.port().unwrap_or(if secure { 8883 } else { 1883 });
        let mut tls_ca = None;
        let mut namespace = "default".to_string();
        let mut max_message = MAX_MESSAGE;
        for (k, v) in parsed.query_pairs() {
            match k.as_ref() {
                "ns" => {
                    if v.is_empty() || v.contains(['+', '#', '/', ' ']) {
                        return Err(TransportError::invalid_url(
                            url,
                            format!("ns={v} is not a usable namespace"),
                        ));
                    }
                    namespace = v.to_string();
                }
                "max_message_bytes" => {
                    max_message = TransportError::url_number(url, &k, &v)?;
                }
                "tls_ca" if secure => {
                    tls_ca = Some(std::fs::read(v.as_ref()).map_err(|e| {
                        TransportError::invalid_url(url, format!("tls_ca={v}: {e}"))
                    })?);
                }
                "tls_ca" => {
                    return Err(TransportError::invalid_url(
                        url,
                        "tls_ca is for mqtts:// (TLS) URLs",
                    ))
                }
                unknown => {
                    return Err(TransportError::invalid_url(
                        url,
                        format!(
                            "unknown option {unknown:?} (known: ns, max_message_bytes, tls_ca)"
                        ),
                    ))
                }
            }
        }
        let credentials = match parsed.username() {
            "" => None,
            u => Some((u.to_string(), parsed.password().unwrap_or("").to_string())),
        };
        // TLS: the server's certificate checked against `tls_ca` only, when given, else
        // against the system's roots.
        let tls = match (secure, tls_ca) {
            (false, _) => None,
            (true, Some(ca)) => Some(TlsConfiguration::Simple {
                ca,
                alpn: None,
                client_auth: None,
            }),
            (true, None) => Some(system_roots(url)?),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                url: url.to_string(),
                host,
                port,
                tls,
                credentials,
                namespace,
                max_message,
                lane: Mutex::new(None),
                opening: tokio::sync::Mutex::new(()),
                replies: OnceCell::new(),
            }),
        })
    }
}

/// TLS trusting the system's root certificates. Built here rather than with rumqttc's
/// `TlsConfiguration::default()`, which panics when any system certificate fails to load:
/// an unreadable certificate is skipped, and having none at all is an error naming the URL.
pub(crate) fn system_roots(url: &str) -> Result<TlsConfiguration, TransportError> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        return Err(TransportError::invalid_url(
            url,
            format!(
                "no system root certificate could be loaded ({:?}); give one with tls_ca=PATH",
                loaded.errors
            ),
        ));
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}
