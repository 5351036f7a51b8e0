//! Deadline on the calling side: a call waits for its reply at most the client's timeout and
//! never past the deadline of the handler it is made from; the deadline travels with the call
//! (as time remaining on the wire) and the server gives up when it passes
//! ([`deadline`](super::deadline)).

use std::time::{Duration, Instant};

use crate::context::Context;
use crate::error::{CallError, ErrorCode, RemoteError};

/// When a call started at `now` with `timeout` stops waiting, inside `parent` if any.
pub(crate) fn deadline_of(now: Instant, timeout: Duration, parent: Option<&Context>) -> Instant {
    let own = now + timeout;
    match parent.and_then(|p| p.deadline) {
        Some(theirs) => own.min(theirs),
        None => own,
    }
}

/// The error of a call of `route` that waited `wait` in vain.
pub(crate) fn timed_out(route: &str, wait: Duration) -> CallError {
    CallError::Timeout {
        route: route.to_string(),
        after: wait,
    }
}

/// The error of a call the server answered with `error`: a server that gave up on the
/// deadline a moment before the caller did is the same outcome as the caller's timeout.
pub(crate) fn remote(route: &str, wait: Duration, error: RemoteError) -> CallError {
    match error.code {
        ErrorCode::DeadlineExceeded => timed_out(route, wait),
        _ => CallError::Remote {
            route: route.to_string(),
            error,
        },
    }
}
