//! Errors. Every failure a caller can act on differently has its own variant; broker-specific
//! errors stay reachable through `source()`.

use std::any::Any;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A boxed error from a transport library.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a call failed on the serving side. Maps one-to-one onto HTTP status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// Malformed body, wrong argument count or type (400).
    BadRequest,
    /// Missing or wrong token (401).
    Unauthorized,
    /// No such route (404).
    NotFound,
    /// The route exists but not for this method (405).
    MethodNotAllowed,
    /// Body over the size limit (413).
    PayloadTooLarge,
    /// The handler failed or panicked (500).
    Internal,
    /// The service cannot take the call now (503).
    Unavailable,
    /// The caller's deadline passed before the handler finished (504).
    DeadlineExceeded,
}

impl ErrorCode {
    /// The HTTP status for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
            ErrorCode::DeadlineExceeded => 504,
        }
    }

    /// The code for an HTTP status (anything unknown ≥ 500 is `Internal`, < 500 `BadRequest`).
    pub fn from_http_status(status: u16) -> ErrorCode {
        match status {
            400 => ErrorCode::BadRequest,
            401 | 403 => ErrorCode::Unauthorized,
            404 => ErrorCode::NotFound,
            405 => ErrorCode::MethodNotAllowed,
            413 => ErrorCode::PayloadTooLarge,
            503 => ErrorCode::Unavailable,
            504 => ErrorCode::DeadlineExceeded,
            s if s >= 500 => ErrorCode::Internal,
            _ => ErrorCode::BadRequest,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
        };
        f.write_str(s)
    }
}

/// An error as it travels on the wire: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RemoteError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// A message for people, naming the problem.
    pub message: String,
}

impl RemoteError {
    /// A remote error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The error a handler returns. Any `std::error::Error` converts into it (as `Internal`), so
/// handlers can use `?`; use the constructors to pick another code.
///
/// ```
/// use switchyard_core::error::{HandlerError, ErrorCode};
/// fn parse(s: &str) -> Result<u32, HandlerError> {
///     s.parse::<u32>().map_err(|e| HandlerError::bad_request(format!("not a number: {e}")))
/// }
/// assert_eq!(parse("x").unwrap_err().code(), ErrorCode::BadRequest);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError(RemoteError);

impl HandlerError {
    /// An error with any code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(RemoteError::new(code, message))
    }
    /// 400: the request was wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    /// 500: the handler failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
    /// 503: try again later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
    /// The code.
    pub fn code(&self) -> ErrorCode {
        self.0.code
    }
    /// The message.
    pub fn message(&self) -> &str {
        &self.0.message
    }
    /// The wire form.
    pub fn into_remote(self) -> RemoteError {
        self.0
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(e: E) -> Self {
        // A remote error passed on with `?` keeps its code, so a failure deep in a call chain
        // reaches the first caller unchanged.
        let any: &dyn Any = &e;
        if let Some(remote) = any.downcast_ref::<RemoteError>() {
            return HandlerError(remote.clone());
        }
        match any.downcast_ref::<CallError>() {
            Some(CallError::Remote { error, .. }) => return HandlerError(error.clone()),
            // A call made by a handler that ran out of time, or could not reach its
            // destination, says so to the handler's own caller: a timeout (504) and an
            // unavailable dependency (503), not a fault of the handler (500).
            Some(CallError::Timeout { .. }) => {
                return HandlerError::new(ErrorCode::DeadlineExceeded, e.to_string())
            }
            Some(
                CallError::Unreachable { .. }
                | CallError::CircuitOpen { .. }
                | CallError::Limited { .. }
                | CallError::NoInstance { .. }
                | CallError::NoVersion { .. },
            ) => return HandlerError::unavailable(e.to_string()),
            _ => {}
        }
        HandlerError::internal(e.to_string())
    }
}

/// Why a call from a client failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No reply before the deadline.
    #[error("call to {route} timed out after {after:?}")]
    Timeout {
        /// The route called.
        route: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// The service could not be reached at all (nothing listening, connection refused, no
    /// responders). Fails fast rather than waiting for the deadline.
    #[error("service at {target} is unreachable: {source}")]
    Unreachable {
        /// The address tried, with credentials removed.
        target: String,
        /// The transport's error.
        #[source]
        source: BoxError,
    },
    /// The service answered with an error.
    #[error("{route} failed remotely: {error}")]
    Remote {
        /// The route called.
        route: String,
        /// What the service said.
        error: RemoteError,
    },
    /// The reply did not decode into the expected type.
    #[error("reply from {route} did not decode as {expected}: {reason}")]
    Decode {
        /// The route called.
        route: String,
        /// The Rust type asked for.
        expected: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// The arguments could not be encoded.
    #[error("arguments for {route} could not be encoded: {reason}")]
    Encode {
        /// The route called.
        route: String,
        /// What went wrong.
        reason: String,
    },
    /// The call names no service, and the transport delivers calls by service name (every
    /// transport but HTTP, whose URL is one service).
    #[error("the call to {route} names no service: over {transport}, name it with Client::service(NAME)")]
    NoService {
        /// The route called.
        route: String,
        /// The transport's URL, credentials removed.
        transport: String,
    },
    /// Refused without being sent: the destination failed repeatedly and the client's circuit
    /// breaker is open (see [`CallPolicy`](crate::policy::CallPolicy)).
    #[error("call to {route} refused: the circuit breaker is open after repeated failures (a probe in {retry_in:?})")]
    CircuitOpen {
        /// The route called.
        route: String,
        /// How long until a probe call is let through.
        retry_in: Duration,
    },
    /// Refused without being sent: the client's bulkhead (calls at once) or rate limit
    /// (calls a second) for the destination is reached (see
    /// [`CallPolicy`](crate::policy::CallPolicy)).
    #[error("call to {route} refused: {limit}")]
    Limited {
        /// The route called.
        route: String,
        /// Which limit, and its value.
        limit: String,
    },
    /// The registry knows no live instance of the service called.
    #[error("no instance of service {service} is registered in {registry}")]
    NoInstance {
        /// The service called.
        service: String,
        /// The registry asked (credentials removed).
        registry: String,
    },
    /// Instances of the service are registered, but none of a version the call asked for.
    #[error("no instance of service {service} has a version meeting {requirement}: {}", if available.is_empty() { "none states its version".to_string() } else { format!("versions registered: {}", available.join(", ")) })]
    NoVersion {
        /// The service called.
        service: String,
        /// The requirement asked for.
        requirement: String,
        /// The versions its instances state.
        available: Vec<String>,
    },
    /// The transport failed in another way.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl CallError {
    /// The remote error code, when the service answered with an error.
    pub fn remote_code(&self) -> Option<ErrorCode> {
        match self {
            CallError::Remote { error, .. } => Some(error.code),
            _ => None,
        }
    }
}

/// Why a transport operation (connect, publish, subscribe, serve) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The URL does not parse or lacks a part the transport needs.
    #[error("invalid transport URL {url}: {reason}")]
    InvalidUrl {
        /// The URL, credentials removed.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No transport is compiled in for this scheme.
    #[error("no transport for scheme {scheme:?} (compiled in: {available})")]
    UnsupportedScheme {
        /// The scheme asked for.
        scheme: String,
        /// The schemes that are available.
        available: String,
    },
    /// The server or broker could not be reached.
    #[error("cannot reach {url}: {source}")]
    Unreachable {
        /// The URL, credentials removed.
        url: String,
        /// The library's error.
        #[source]
        source: BoxError,
    },
    /// The message is larger than the transport accepts.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Size of the encoded message.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The transport cannot do this (see its capabilities).
    #[error("{transport} does not support {operation}")]
    Unsupported {
        /// Transport name.
        transport: &'static str,
        /// What was asked.
        operation: &'static str,
    },
    /// The transport was shut down.
    #[error("transport is closed")]
    Closed,
    /// The receiving side rejected the message.
    #[error("rejected by the receiver: {0}")]
    Rejected(RemoteError),
    /// The service cannot be served as it was put together.
    #[error("the service cannot be served: {0}")]
    InvalidService(#[from] ServiceError),
    /// A start hook of the service failed: it was not served.
    #[error("service {service} not started: start hook {hook} failed: {reason}")]
    StartFailed {
        /// The service.
        service: String,
        /// The hook's name.
        hook: String,
        /// What it said.
        reason: String,
    },
    /// A name (topic, route, service) the transport cannot carry.
    #[error("{what} {name:?} cannot be used on this transport: {reason}")]
    InvalidName {
        /// What kind of name: `topic`, `route`, `service`.
        what: &'static str,
        /// The name.
        name: String,
        /// Why not.
        reason: String,
    },
    /// Any other failure of the underlying library.
    #[error("transport failure: {0}")]
    Other(#[source] BoxError),
}

impl TransportError {
    /// [`TransportError::InvalidUrl`] for `url` (its password removed).
    pub fn invalid_url(url: &str, reason: impl Into<String>) -> Self {
        Self::InvalidUrl {
            url: redact_url(url),
            reason: reason.into(),
        }
    }

    /// A URL option's value as a whole number, or [`TransportError::InvalidUrl`] naming the
    /// option: one grammar for every transport's numeric options.
    pub fn url_number<T: std::str::FromStr>(url: &str, key: &str, value: &str) -> Result<T, Self> {
        value
            .parse()
            .map_err(|_| Self::invalid_url(url, format!("{key}={value} is not a whole number")))
    }

    /// [`TransportError::Other`] wrapping a client library's error.
    pub fn other(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Other(Box::new(e))
    }
}

/// Removes the password from a URL for error messages and logs.
///
/// ```
/// use switchyard_core::error::redact_url;
/// assert_eq!(redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
/// assert_eq!(redact_url("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
/// ```
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_errors_keep_their_code_through_question_mark() {
        fn inner() -> Result<(), CallError> {
            Err(CallError::Remote {
                route: "/x".into(),
                error: RemoteError::new(ErrorCode::Unauthorized, "bad token"),
            })
        }
        fn outer() -> Result<(), HandlerError> {
            inner()?;
            Ok(())
        }
        let e = outer().unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unauthorized);
        assert_eq!(e.message(), "bad token");
    }

    #[test]
    fn a_nested_call_that_timed_out_or_found_nobody_is_not_the_handlers_fault() {
        let timed_out: HandlerError = CallError::Timeout {
            route: "/x".into(),
            after: Duration::from_millis(5),
        }
        .into();
        assert_eq!(timed_out.code(), ErrorCode::DeadlineExceeded);
        let refused: HandlerError = CallError::CircuitOpen {
            route: "/x".into(),
            retry_in: Duration::from_secs(1),
        }
        .into();
        assert_eq!(refused.code(), ErrorCode::Unavailable);
    }

    #[test]
    fn other_errors_become_internal() {
        let e: HandlerError = "x".parse::<i32>().unwrap_err().into();
        assert_eq!(e.code(), ErrorCode::Internal);
    }

    #[test]
    fn status_codes_round_trip() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::Unauthorized,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::PayloadTooLarge,
            ErrorCode::Internal,
            ErrorCode::Unavailable,
            ErrorCode::DeadlineExceeded,
        ] {
            assert_eq!(ErrorCode::from_http_status(code.http_status()), code);
        }
    }
}

/// A mistake in how a service was put together, reported when it is served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// Two handlers for one route.
    #[error("route {0} is registered twice")]
    DuplicateRoute(String),
    /// Two handlers for one topic.
    #[error("topic {0} has two event handlers")]
    DuplicateTopic(String),
    /// `.params([...])` names a different number of arguments than the handler takes.
    #[error("route {route} names {named} parameters but its handler takes {arity}")]
    ParamCount {
        /// The route.
        route: String,
        /// Names given.
        named: usize,
        /// Arguments the handler takes.
        arity: usize,
    },
    /// A route must start with `/`.
    #[error("route {0:?} must start with '/'")]
    BadRoute(String),
}
