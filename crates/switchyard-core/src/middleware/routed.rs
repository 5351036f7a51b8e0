//! The serving side of one call, once its route is found: the framework's fixed policies as
//! tower layers over a [`Routed`] call, composed into one concrete [`CallStack`] (token check,
//! deadline, panic recovery, then the handler in its context). Nothing here is boxed: the
//! stack is a few zero-sized values built per call, and its future is the handler's boxed one
//! wrapped in concrete types, so the in-process fast path pays no more than the handler.

use std::task::{Context as TaskContext, Poll};

use tower::Layer;

use super::trace::{Trace, TraceLayer};
use super::{auth::AuthLayer, deadline::DeadlineLayer, recover::RecoverLayer};
use super::{Auth, Deadline, Recover};
use crate::context::{self, Context};
use crate::error::HandlerError;
use crate::handler::{ReplyFuture, Route};
use crate::values::{CallArgs, Reply};

/// A call whose route was found, with what the layers below need of it.
pub(crate) struct Routed<'a, 'c> {
    /// The name of the service answering, for its span.
    pub(crate) service: &'a str,
    /// The route's path, for errors.
    pub(crate) path: &'a str,
    /// The route: its handler, argument names and token.
    pub(crate) route: &'a Route,
    /// The arguments, lent by a caller in the same task or owned.
    pub(crate) args: CallArgs<'c>,
    /// The token the caller gave apart from the headers, if any: borrowed from the caller
    /// for the token check only, so that the call's future borrows nothing of it.
    pub(crate) token: Option<&'c str>,
    /// What the handler will see as [`context::current`]: deadline and headers.
    pub(crate) context: Context,
    /// Whether the deadline is enforced here; `false` when the caller runs this call inside
    /// its own future and bounds it by its own timeout (an in-process call).
    pub(crate) enforce_deadline: bool,
}

/// What a layer of the call stack wraps.
pub(crate) trait CallInner<'a, 'c>:
    tower::Service<Routed<'a, 'c>, Response = Reply, Error = HandlerError>
{
}

impl<'a, 'c, S> CallInner<'a, 'c> for S where
    S: tower::Service<Routed<'a, 'c>, Response = Reply, Error = HandlerError>
{
}

/// The serving side's fixed policies around a routed call, outermost first: token check
/// ([`auth`](super::auth)), deadline ([`deadline`](super::deadline)), panic recovery
/// ([`recover`](super::recover)), and the handler ([`Run`]). When spans are on, the server
/// span ([`trace`](super::trace)) goes around it all ([`TracedStack`]); chosen per call
/// rather than always in the stack, where it cost every call 90 instructions while off.
pub(crate) type CallStack = Auth<Deadline<Recover<Run>>>;

/// [`CallStack`] inside the server span.
pub(crate) type TracedStack = Trace<CallStack>;

/// [`CallStack`] for a call answered in its caller's task (in process), which bounds it by its
/// own timeout: no deadline layer (its timer would never be the first to fire), one future
/// fewer to build, poll and drop on every such call.
pub(crate) type InPlaceStack = Auth<Recover<Run>>;

/// The call stack (see [`CallStack`]).
pub(crate) fn call_stack() -> CallStack {
    (AuthLayer, DeadlineLayer, RecoverLayer).layer(Run)
}

/// The call stack of a call answered in its caller's task (see [`InPlaceStack`]).
pub(crate) fn in_place_stack() -> InPlaceStack {
    (AuthLayer, RecoverLayer).layer(Run)
}

/// The call stack inside the server span (see [`TracedStack`]).
pub(crate) fn traced_stack() -> TracedStack {
    TraceLayer.layer(call_stack())
}

/// The innermost service: the route's handler, run with the call's context as
/// [`context::current`] (what its own calls take their trace and deadline from).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Run;

impl<'a, 'c> tower::Service<Routed<'a, 'c>> for Run {
    type Response = Reply;
    type Error = HandlerError;
    type Future = context::Scoped<ReplyFuture>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Routed<'a, 'c>) -> Self::Future {
        let Routed {
            route,
            args,
            context,
            ..
        } = call;
        context::scope(context, route.handler.call(args, &route.params))
    }
}

/// `poll_ready` of a call layer: each is always ready.
macro_rules! call_ready {
    () => {
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), crate::error::HandlerError>> {
            std::task::Poll::Ready(Ok(()))
        }
    };
}
pub(crate) use call_ready;
