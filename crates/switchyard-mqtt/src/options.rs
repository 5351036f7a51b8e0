//! An MQTT transport's options, typed, and read from an `mqtt://` or `mqtts://` URL with the
//! one grammar of every transport (`switchyard_core::url_options`).

use std::str::FromStr;
use std::sync::{Arc, Mutex};

use rumqttc::TlsConfiguration;
use switchyard_core::error::TransportError;
use switchyard_core::url_options::UrlOptions;
use tokio::sync::OnceCell;

use crate::connection::*;
use crate::events::*;
use crate::MqttTransport;

/// What an MQTT transport is made of: `mqtt://[USER:PASS@]HOST[:PORT][?OPTIONS]` (port 1883),
/// or `mqtts://…` for TLS (port 8883), parsed ([`FromStr`]), or adjusted with the setters.
///
/// ```
/// use switchyard_mqtt::{MqttOptions, MqttTransport};
/// let options: MqttOptions = "mqtt://127.0.0.1?ns=shop".parse().unwrap();
/// assert_eq!((options.namespace.as_str(), options.port), ("shop", 1883));
/// let transport = MqttTransport::new(options.max_message_bytes(64 * 1024)).unwrap();
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MqttOptions {
    /// The URL as given (its password is removed from every message that shows it).
    pub url: String,
    /// The broker's host.
    pub host: String,
    /// The broker's port.
    pub port: u16,
    /// TLS (`mqtts://`).
    pub tls: bool,
    /// For `mqtts://`: trust only the PEM certificates in this file (`?tls_ca=PATH`) instead
    /// of the system's roots.
    pub tls_ca: Option<Vec<u8>>,
    /// User name and password, if the URL has them.
    pub credentials: Option<(String, String)>,
    /// Calls and events of services in different namespaces never meet (`?ns=`; `default`).
    pub namespace: String,
    /// The largest message `publish` accepts (`?max_message_bytes=`; 1 MiB).
    pub max_message_bytes: usize,
}

impl FromStr for MqttOptions {
    type Err = TransportError;

    fn from_str(url: &str) -> Result<Self, TransportError> {
        let parsed =
            url::Url::parse(url).map_err(|e| TransportError::invalid_url(url, e.to_string()))?;
        let tls = match parsed.scheme() {
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
        let options = UrlOptions::parse(url, &["tls_ca"])?;
        let tls_ca = options.tls_ca(tls, "mqtts")?;
        Ok(Self {
            url: url.to_string(),
            host,
            port: parsed.port().unwrap_or(if tls { 8883 } else { 1883 }),
            tls,
            tls_ca,
            credentials: match parsed.username() {
                "" => None,
                u => Some((u.to_string(), parsed.password().unwrap_or("").to_string())),
            },
            namespace: options
                .namespace(&['+', '#', '/'])?
                .unwrap_or_else(|| "default".into()),
            max_message_bytes: options.number("max_message_bytes")?.unwrap_or(MAX_MESSAGE),
        })
    }
}

impl MqttOptions {
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
}

impl MqttTransport {
    /// A transport for an `mqtt://` or `mqtts://` URL (see [`MqttOptions`]). Connections are
    /// made on first use; an unreachable broker is then an error naming the URL.
    pub fn from_url(url: &str) -> Result<Self, TransportError> {
        Self::new(url.parse()?)
    }

    /// A transport with these options; TLS without `tls_ca` and without any usable system
    /// root certificate is an error.
    pub fn new(options: MqttOptions) -> Result<Self, TransportError> {
        // TLS: the server's certificate checked against `tls_ca` only, when given, else
        // against the system's roots.
        let tls = match (options.tls, options.tls_ca) {
            (false, _) => None,
            (true, Some(ca)) => Some(TlsConfiguration::Simple {
                ca,
                alpn: None,
                client_auth: None,
            }),
            (true, None) => Some(system_roots(&options.url)?),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                url: options.url,
                host: options.host,
                port: options.port,
                tls,
                credentials: options.credentials,
                namespace: options.namespace,
                max_message: options.max_message_bytes,
                lane: Mutex::new(None),
                opening: tokio::sync::Mutex::new(()),
                replies: OnceCell::new(),
                links: Default::default(),
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
