//! # switchyard
//!
//! Typed RPC and events between services. A service answers named routes with plain async
//! functions; a caller gets typed values back. The transport — in-process, HTTP/WebSocket,
//! NATS/JetStream, Redis, RabbitMQ, MQTT, Kafka — is chosen by a URL, in code, in a config
//! file or in the environment, with no change to service code. A call names the service it is
//! for, so several services share one broker.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use switchyard::{rpc, Client, Service};
//!
//! async fn helloworld(name: String) -> String {
//!     format!("Welcome {name}")
//! }
//!
//! // The listener (app1 in microservices_connector's tutorial)…
//! let transport = switchyard::connect("mem://quickstart")?;
//! let service = Service::new("app1").route("/helloworld", rpc(helloworld));
//! let _server = switchyard::serve(&transport, service).await?;
//!
//! // …and the sender (app2). Change the URL to http://127.0.0.1:5000 and nothing else changes.
//! let message: String = Client::new(transport).service("app1").call("/helloworld", "Mr. Developer".to_string()).await?;
//! assert_eq!(message, "Welcome Mr. Developer");
//! # Ok(()) }
//! ```
//!
//! ## Typed contracts
//! One trait serves both sides:
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! #[switchyard::service]
//! pub trait Calculator {
//!     async fn add(&self, a: i64, b: i64) -> i64;
//!     async fn div(&self, a: i64, b: i64) -> Result<i64, switchyard::HandlerError>;
//! }
//!
//! struct Calc;
//! impl Calculator for Calc {
//!     async fn add(&self, a: i64, b: i64) -> i64 { a + b }
//!     async fn div(&self, a: i64, b: i64) -> Result<i64, switchyard::HandlerError> {
//!         a.checked_div(b).ok_or_else(|| switchyard::HandlerError::bad_request("division by zero"))
//!     }
//! }
//!
//! let transport = switchyard::connect("mem://calc-doc")?;
//! let _server = switchyard::serve(&transport, Calc.into_service("calc")).await?;
//! let calc = CalculatorClient::new(switchyard::Client::new(transport).service("calc"));
//! assert_eq!(calc.add(2, 3).await?, 5);
//! assert_eq!(calc.div(1, 0).await.unwrap_err().remote_code(), Some(switchyard::ErrorCode::BadRequest));
//! # Ok(()) }
//! ```
//!
//! ## Features
//! | feature | what it adds | default |
//! |---|---|---|
//! | `http` | `http://` and `ws://`: RPC in microservices_connector's wire format, JSON endpoints, CloudEvents over HTTP, WebSocket routes | yes |
//! | `redis` | `redis://`: Streams with consumer groups (XAUTOCLAIM for dead consumers) for events, list + reply channel for RPC | yes |
//! | `amqp` | `amqp://`: RabbitMQ topic exchange with durable group queues and publisher confirms for events, direct reply-to for RPC | yes |
//! | `kafka` | `kafka://`: Kafka topics, the ordering key as message key, consumer groups that commit only settled offsets (no request/reply) | yes |
//! | `mqtt` | `mqtt://`: MQTT 5 QoS 1 events, shared subscriptions for groups, response topic + correlation data for RPC | yes |
//! | `nats` | `nats://`: core NATS request/reply, JetStream streams and durable consumers for events | yes |
//! | `etcd` | `etcd://`: a service registry and configuration in etcd (leases, pushed watches) | no |
//! | `zookeeper` | `zk://`: a service registry and configuration in ZooKeeper (ephemeral nodes, persistent watches) | no |
//! | `store` | inbox stores (Redis, PostgreSQL) and the PostgreSQL transactional outbox (`store`) | no |
//! | `macros` | `#[switchyard::service]` | yes |
//! | `otlp` | OpenTelemetry spans exported with OTLP over HTTP from the standard `OTEL_*` variables (`otlp`) | no |
//! | `testkit` | the conformance suite every transport passes | no |

use std::sync::Arc;

#[cfg(feature = "testkit")]
pub use switchyard_core::testkit;
pub use switchyard_core::{
    call, client, codec, consumer, context, dead_letters, error, event_log, handler, inbox, layer,
    mem, message, middleware, observe, policy, pool, push, relay, server, service, shards,
    transport, url_options, values, wire,
};
pub use switchyard_core::{
    json, rpc, CallError, Capabilities, Client, Codec, Envelope, ErrorCode, HandlerError, Headers,
    Json, RemoteError, Service, Transport, TransportError,
};

#[cfg(feature = "http")]
pub use switchyard_http as http;

#[cfg(feature = "amqp")]
pub use switchyard_amqp as amqp;

#[cfg(feature = "kafka")]
pub use switchyard_kafka as kafka;

#[cfg(feature = "mqtt")]
pub use switchyard_mqtt as mqtt;

#[cfg(feature = "nats")]
pub use switchyard_nats as nats;

#[cfg(feature = "redis")]
pub use switchyard_redis as redis;

#[cfg(feature = "etcd")]
pub use switchyard_etcd as etcd;

#[cfg(feature = "zookeeper")]
pub use switchyard_zookeeper as zookeeper;

#[cfg(feature = "store")]
pub use switchyard_store as store;

#[cfg(feature = "otlp")]
pub mod otlp;

/// Service discovery (`switchyard_core::registry`), with [`registry::connect`] knowing every
/// backend this build has.
pub mod registry {
    use std::sync::Arc;

    pub use switchyard_core::registry::*;

    /// The registry named by `url`: `mem://NAME`, `file://DIR`, and with their features
    /// `etcd://HOST:PORT/NS`, `zk://HOST:PORT/NS`, `redis://HOST:PORT?ns=NS` and
    /// `nats://HOST:PORT/NS` (NATS KV).
    pub fn connect(url: &str) -> Result<Arc<dyn Registry>, RegistryError> {
        let scheme = url.split_once("://").map_or("", |(s, _)| s);
        match scheme {
            #[cfg(feature = "redis")]
            "redis" | "rediss" => Ok(Arc::new(crate::redis::RedisRegistry::from_url(url)?)),
            #[cfg(feature = "nats")]
            "nats" => Ok(Arc::new(crate::nats::NatsRegistry::from_url(url)?)),
            #[cfg(feature = "etcd")]
            "etcd" => Ok(Arc::new(crate::etcd::EtcdRegistry::from_url(url)?)),
            #[cfg(feature = "zookeeper")]
            "zk" => Ok(Arc::new(crate::zookeeper::ZkRegistry::from_url(url)?)),
            "mem" | "file" => switchyard_core::registry::connect(url),
            _ => Err(RegistryError::InvalidUrl {
                url: crate::error::redact_url(url),
                reason: format!("known registries: {}", known().join(", ")),
            }),
        }
    }

    fn known() -> Vec<&'static str> {
        let mut known = vec!["mem://NAME", "file://DIR"];
        if cfg!(feature = "etcd") {
            known.push("etcd://HOST:PORT/NS");
        }
        if cfg!(feature = "zookeeper") {
            known.push("zk://HOST:PORT/NS");
        }
        if cfg!(feature = "redis") {
            known.push("redis://HOST:PORT?ns=NS");
        }
        if cfg!(feature = "nats") {
            known.push("nats://HOST:PORT/NS (KV)");
        }
        known
    }
}

#[cfg(feature = "macros")]
pub use switchyard_macros::service;

mod config;
pub use config::{Config, ConfigError, QueueConfig, CONFIG_ENV, URL_ENV};
pub mod queues;
pub use queues::{QueueError, Queues};

use switchyard_core::transport::ServeHandle;

/// The URL schemes compiled into this build.
pub fn schemes() -> &'static [&'static str] {
    &[
        "mem",
        #[cfg(feature = "http")]
        "http",
        #[cfg(feature = "http")]
        "ws",
        #[cfg(feature = "amqp")]
        "amqp",
        #[cfg(feature = "kafka")]
        "kafka",
        #[cfg(feature = "mqtt")]
        "mqtt",
        #[cfg(feature = "mqtt")]
        "mqtts",
        #[cfg(feature = "nats")]
        "nats",
        #[cfg(feature = "redis")]
        "redis",
        #[cfg(feature = "redis")]
        "rediss",
    ]
}

/// A transport for `url`, chosen by its scheme; `discover+REGISTRY_URL` finds services by
/// name in that registry ([`discover`]): `discover+file:///tmp/registry`.
///
/// ```
/// let t = switchyard::connect("mem://example").unwrap();
/// assert_eq!(t.name(), "mem");
/// let d = switchyard::connect("discover+mem://example-registry").unwrap();
/// assert_eq!(d.name(), "discover");
/// assert!(switchyard::connect("discover+nowhere://x").is_err());
/// let err = switchyard::connect("carrier-pigeon://coop").unwrap_err();
/// assert!(err.to_string().contains("carrier-pigeon"));
/// ```
pub fn connect(url: &str) -> Result<Arc<dyn Transport>, TransportError> {
    // `discover+REGISTRY_URL`: services found by name in that registry (`discover`).
    if let Some(registry_url) = url.strip_prefix("discover+") {
        let registry = registry::connect(registry_url).map_err(|e| TransportError::InvalidUrl {
            url: error::redact_url(url),
            reason: e.to_string(),
        })?;
        return Ok(discover(registry));
    }
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    match scheme {
        "mem" => Ok(Arc::new(mem::MemTransport::from_url(url)?)),
        #[cfg(feature = "http")]
        "http" | "https" | "ws" | "wss" => Ok(Arc::new(http::HttpTransport::from_url(url)?)),
        #[cfg(feature = "amqp")]
        "amqp" => Ok(Arc::new(amqp::AmqpTransport::from_url(url)?)),
        #[cfg(feature = "kafka")]
        "kafka" => Ok(Arc::new(kafka::KafkaTransport::from_url(url)?)),
        #[cfg(feature = "mqtt")]
        "mqtt" | "mqtts" => Ok(Arc::new(mqtt::MqttTransport::from_url(url)?)),
        #[cfg(feature = "nats")]
        "nats" => Ok(Arc::new(nats::NatsTransport::from_url(url)?)),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => Ok(Arc::new(redis::RedisTransport::from_url(url)?)),
        "" => Err(TransportError::InvalidUrl {
            url: error::redact_url(url),
            reason: "expected SCHEME://…".into(),
        }),
        other => Err(TransportError::UnsupportedScheme {
            scheme: other.to_string(),
            available: schemes().join(", "),
        }),
    }
}

/// A transport that calls services by name on the instances `registry` knows, reaching each
/// through the transport of its address ([`connect`]): `Client::new(switchyard::discover(r))
/// .service("books")`. See [`registry::Discovery`].
pub fn discover(registry: Arc<dyn registry::Registry>) -> Arc<dyn Transport> {
    Arc::new(registry::Discovery::new(
        registry,
        Arc::new(|url: &str| connect(url)),
    ))
}

/// [`connect`], then waits until the transport's broker answers, retrying an unreachable one
/// as `retry` says (each failed try is logged). Fails with
/// [`TransportError::Unreachable`] naming the URL, credentials removed, once the tries are
/// spent.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use switchyard::transport::ConnectRetry;
///
/// let t = switchyard::connect_ready("mem://x", &ConnectRetry::once()).await.unwrap();
/// assert_eq!(t.name(), "mem");
/// # }
/// ```
pub async fn connect_ready(
    url: &str,
    retry: &transport::ConnectRetry,
) -> Result<Arc<dyn Transport>, TransportError> {
    let t = connect(url)?;
    transport::wait_ready(t.as_ref(), retry).await?;
    Ok(t)
}

/// Serves `service` on `transport` until the handle is shut down or dropped: its routes,
/// answered under its name, and its event handlers (see [`server::serve`]).
pub async fn serve(
    transport: &Arc<dyn Transport>,
    service: Service,
) -> Result<ServeHandle, TransportError> {
    switchyard_core::server::serve(transport.clone(), service).await
}
