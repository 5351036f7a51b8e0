//! Spans exported with OTLP over HTTP (protobuf), configured the way every OpenTelemetry SDK
//! is: by `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`),
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SDK_DISABLED`. Without an endpoint nothing is
//! installed and no span is made.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Keep the guard while the process serves: dropping it flushes what is left.
//! let _tracing = switchyard::otlp::init_from_env("checkout")?;
//! # Ok(()) }
//! ```

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

/// Why OTLP export could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtlpError {
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` names a protocol this build does not speak.
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL={0:?} is not supported: use http/protobuf")]
    Protocol(String),
    /// The exporter could not be built from the environment.
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

/// The installed exporter. Dropping it flushes the spans not yet sent and stops exporting.
#[derive(Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Sends every span ended so far, waiting at most the exporter's timeout.
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        switchyard_core::middleware::trace::disable();
        let _ = self.provider.shutdown();
    }
}

fn set(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Installs OTLP/HTTP export of every hop's span when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the
/// traces-only variable) is set and the SDK is not disabled; `Ok(None)` otherwise.
/// `service_name` names the process unless `OTEL_SERVICE_NAME` does.
pub fn init_from_env(service_name: &str) -> Result<Option<Tracing>, OtlpError> {
    let endpoint =
        set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let disabled = set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if endpoint.is_none() || disabled {
        return Ok(None);
    }
    let protocol = set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".into());
    if protocol != "http/protobuf" {
        return Err(OtlpError::Protocol(protocol));
    }
    // The endpoint, headers and timeout are read from the environment by the builder.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(BlockingClient {
            client: OnceLock::new(),
            timeout: set("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
                .or_else(|| set("OTEL_EXPORTER_OTLP_TIMEOUT"))
                .and_then(|ms| ms.parse().ok())
                .map_or(EXPORT_TIMEOUT, Duration::from_millis),
        })
        .build()
        .map_err(|e| OtlpError::Exporter(e.to_string()))?;
    let mut resource = Resource::builder();
    if set("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service_name.to_string());
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    switchyard_core::observe::enable_tracing();
    Ok(Some(Tracing { provider }))
}

/// The exporter's HTTP client: reqwest's blocking client, which the workspace builds already.
/// opentelemetry-otlp's own reqwest client is of another major version (a second reqwest in
/// every build), and its batch processor exports on a thread of its own, outside any runtime,
/// where a blocking client belongs. Made on that thread, at its first export.
#[derive(Debug)]
struct BlockingClient {
    client: OnceLock<reqwest::blocking::Client>,
    timeout: Duration,
}

/// How long one export may take when `OTEL_EXPORTER_OTLP_TIMEOUT` says nothing (its default).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

#[async_trait::async_trait]
impl HttpClient for BlockingClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.get_or_init(reqwest::blocking::Client::new);
        let (parts, body) = request.into_parts();
        let response = client
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body.to_vec())
            .timeout(self.timeout)
            .send()?;
        let mut answer = Response::builder().status(response.status());
        for (name, value) in response.headers() {
            answer = answer.header(name, value);
        }
        Ok(answer.body(response.bytes()?)?)
    }
}
