//! Token check: a call of a route that requires a token is answered `401` unless it brings
//! that token (as the call's token or the `x-token` header), before its handler runs.

use futures::future::{ready, Either, Ready};
use subtle::ConstantTimeEq;
use tower::Layer;

use super::routed::{call_ready, CallInner, Routed};
use crate::error::{ErrorCode, HandlerError};
use crate::message::header;
use crate::values::Reply;

/// Refuses a call without its route's token.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Auth<S> {
    inner: S,
}

/// Layer of [`Auth`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AuthLayer;

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth { inner }
    }
}

impl<'a, 'c, S: CallInner<'a, 'c>> tower::Service<Routed<'a, 'c>> for Auth<S> {
    type Response = Reply;
    type Error = HandlerError;
    type Future = Either<Ready<Result<Reply, HandlerError>>, S::Future>;

    call_ready!();

    fn call(&mut self, call: Routed<'a, 'c>) -> Self::Future {
        if let Some(expected) = &call.route.token {
            let given = call.token.or(call.context.headers.get(header::TOKEN));
            if !token_matches(expected, given) {
                let what = if given.is_some() {
                    "invalid"
                } else {
                    "missing"
                };
                return Either::Left(ready(Err(HandlerError::new(
                    ErrorCode::Unauthorized,
                    format!("{what} token for {}", call.path),
                ))));
            }
        }
        Either::Right(self.inner.call(call))
    }
}

/// Whether `given` is the `expected` token, compared in constant time (no timing tells how
/// much of a guess was right). WebSocket routes use it too.
pub(crate) fn token_matches(expected: &str, given: Option<&str>) -> bool {
    given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(expected.as_bytes())))
}
