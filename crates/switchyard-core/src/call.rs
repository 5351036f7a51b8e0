//! One call as it travels: what a client sends and what a served service receives.

use std::sync::Arc;
use std::time::Instant;

use crate::message::Headers;
use crate::values::{Args, CallArgs};

/// One call to a route of a named service.
#[derive(Debug)]
pub struct CallRequest {
    /// The service called, by name. Broker and in-process transports deliver the call to an
    /// instance of that service; over HTTP the URL already is one service and this is not
    /// needed. `None` when the caller named none.
    pub service: Option<Arc<str>>,
    /// The route, e.g. `/helloworld`.
    pub route: String,
    /// The arguments.
    pub args: Args,
    /// The token the caller sent, if any.
    pub token: Option<String>,
    /// The call's headers (trace context, version…).
    pub headers: Headers,
    /// When the caller stops waiting. Wire transports send it as the relative
    /// `x-deadline-ms` header; in process it stays an `Instant`.
    pub deadline: Option<Instant>,
    /// Whether the caller runs this call in its own task and bounds the whole of it, layers
    /// included, by its own timeout (a client calling a service in process): the serving side
    /// then arms no timer of its own for the deadline, which would never be the first to fire.
    /// Set only by the framework; a request made elsewhere is bounded where it is served.
    pub(crate) bounded_by_caller: bool,
}

impl CallRequest {
    /// A call of `route` with `args`, naming no service, with no token or headers.
    pub fn new(route: impl Into<String>, args: Args) -> Self {
        Self {
            service: None,
            route: route.into(),
            args,
            token: None,
            headers: Headers::new(),
            deadline: None,
            bounded_by_caller: false,
        }
    }

    /// The same call addressed to `service`.
    pub fn to_service(mut self, service: impl Into<Arc<str>>) -> Self {
        self.service = Some(service.into());
        self
    }
}

/// A call with its route and token borrowed from the caller (the in-process fast path).
pub(crate) struct CallParts<'a> {
    pub(crate) route: &'a str,
    pub(crate) args: CallArgs<'a>,
    pub(crate) token: Option<&'a str>,
    pub(crate) headers: Headers,
    pub(crate) deadline: Option<Instant>,
}
