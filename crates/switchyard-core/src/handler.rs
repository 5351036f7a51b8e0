//! Handlers: plain async functions with typed arguments, registered by route.
//!
//! Any `async fn` (or closure returning a future) whose arguments implement
//! `DeserializeOwned` and whose result implements [`IntoReply`] is a [`Handler`] (up to eight
//! arguments). Wrap it with [`rpc`] to register it positionally, add `.params([...])` so
//! callers can also pass arguments by keyword, and `.token(...)` to protect it.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::HandlerError;
use crate::values::{short_type_name, CallArgs, Held, HoldsValue, IntoReply, Reply, ValueSlot};

/// The future a handler returns once erased: the handler's own future in one box, which also
/// holds the value it returns, so that an in-process call's reply needs no box of its own
/// ([`Reply::Held`]).
pub struct ReplyFuture(Running);

enum Running {
    Handler(Pin<Box<dyn RunsHandler>>),
    Failed(HandlerError),
    Finished,
}

/// A handler's future that keeps its value (see [`ReplyFuture`]).
trait RunsHandler: HoldsValue {
    /// Polls the handler; ready with `Ok` once its value is kept.
    fn poll_handler(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>>;
}

pin_project_lite::pin_project! {
    struct Keeping<F, V> {
        #[pin]
        future: F,
        value: Option<V>,
    }
}

impl<F, V> HoldsValue for Keeping<F, V>
where
    F: Send,
    V: Serialize + Send + 'static,
{
    fn value(self: Pin<&mut Self>) -> &mut dyn ValueSlot {
        self.project().value
    }
}

impl<F, V> RunsHandler for Keeping<F, V>
where
    F: Future + Send,
    F::Output: IntoReply<Value = V>,
    V: Serialize + Send + 'static,
{
    fn poll_handler(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        let this = self.project();
        this.future.poll(cx).map(|outcome| {
            *this.value = Some(outcome.into_value()?);
            Ok(())
        })
    }
}

impl ReplyFuture {
    /// The reply of `future`, a handler's.
    pub fn new<F>(future: F) -> Self
    where
        F: Future + Send + 'static,
        F::Output: IntoReply,
    {
        Self(Running::Handler(Box::pin(Keeping {
            future,
            value: None,
        })))
    }

    /// A call that fails with `error` before its handler runs.
    pub fn failed(error: HandlerError) -> Self {
        Self(Running::Failed(error))
    }
}

impl Future for ReplyFuture {
    type Output = Result<Reply, HandlerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let state = &mut self.get_mut().0;
        if let Running::Handler(handler) = state {
            match handler.as_mut().poll_handler(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => *state = Running::Failed(e),
                Poll::Ready(Ok(())) => {}
            }
        }
        Poll::Ready(match std::mem::replace(state, Running::Finished) {
            Running::Handler(handler) => Ok(Reply::Held(Held::new(handler))),
            Running::Failed(e) => Err(e),
            Running::Finished => Err(HandlerError::internal(
                "a handler's reply was asked for again after it was given",
            )),
        })
    }
}

impl std::fmt::Debug for ReplyFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplyFuture")
    }
}

/// A handler with its types erased, as a service stores it.
pub trait ErasedHandler: Send + Sync + 'static {
    /// Runs the handler. `params` are the argument names (may be empty).
    fn call(&self, args: CallArgs<'_>, params: &[String]) -> ReplyFuture;
}

/// A function usable as an RPC handler. `T` is the tuple of its argument types; generally
/// you don't need to worry about it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a switchyard handler",
    note = "a handler is an async fn with up to 8 arguments that implement `serde::de::DeserializeOwned`, returning a type that implements `IntoReply`"
)]
pub trait Handler<T>: Clone + Send + Sync + Sized + 'static {
    /// Number of arguments.
    const ARITY: usize;
    /// Runs the handler.
    fn call(&self, args: CallArgs<'_>, params: &[String]) -> ReplyFuture;
}

/// Reads wire arguments one by one, positional first, then by keyword.
struct WireArgs<'a> {
    args: std::vec::IntoIter<Value>,
    kwargs: Map<String, Value>,
    names: &'a [String],
    index: usize,
}

impl<'a> WireArgs<'a> {
    fn new(
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        names: &'a [String],
        arity: usize,
    ) -> Result<Self, HandlerError> {
        if args.len() > arity {
            return Err(HandlerError::bad_request(format!(
                "takes {arity} argument(s) but {} were given",
                args.len()
            )));
        }
        for key in kwargs.keys() {
            match names.iter().position(|n| n == key) {
                Some(i) if i < args.len() => {
                    return Err(HandlerError::bad_request(format!(
                        "got multiple values for argument '{key}'"
                    )))
                }
                Some(_) => {}
                None => {
                    return Err(HandlerError::bad_request(format!(
                        "unexpected keyword argument '{key}'"
                    )))
                }
            }
        }
        Ok(Self {
            args: args.into_iter(),
            kwargs,
            names,
            index: 0,
        })
    }

    fn next<T: DeserializeOwned>(&mut self) -> Result<T, HandlerError> {
        let i = self.index;
        self.index += 1;
        let name = self.names.get(i);
        let (value, present) = match self.args.next() {
            Some(v) => (v, true),
            None => match name.and_then(|n| self.kwargs.remove(n)) {
                Some(v) => (v, true),
                None => (Value::Null, false),
            },
        };
        serde_json::from_value::<T>(value).map_err(|e| {
            let label = match name {
                Some(n) => format!("argument '{n}' (position {})", i + 1),
                None => format!("argument {}", i + 1),
            };
            if present {
                HandlerError::bad_request(format!(
                    "{label}: expected {}: {e}",
                    short_type_name::<T>()
                ))
            } else {
                HandlerError::bad_request(format!(
                    "missing {label}: expected {}",
                    short_type_name::<T>()
                ))
            }
        })
    }
}

macro_rules! impl_handler {
    ($arity:expr; $($A:ident),*) => {
        #[allow(non_snake_case, unused_mut, unused_variables)]
        impl<F, Fut, R, $($A,)*> Handler<($($A,)*)> for F
        where
            F: Fn($($A),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: IntoReply,
            $($A: DeserializeOwned + Send + 'static,)*
        {
            const ARITY: usize = $arity;

            fn call(&self, mut args: CallArgs<'_>, params: &[String]) -> ReplyFuture {
                // Same process, same types: no serialization at all. A lone value first,
                // as callers of a one-argument route pass it.
                let local = match <($($A,)*)>::take_single(&mut args) {
                    Some(tuple) => Some(tuple),
                    None => args.take::<($($A,)*)>(),
                };
                let extracted: Result<($($A,)*), HandlerError> = match local {
                    Some(tuple) => Ok(tuple),
                    None => (|| {
                        let (args, kwargs) = args
                            .into_wire()
                            .map_err(|e| HandlerError::bad_request(format!("arguments do not encode: {e}")))?;
                        let mut wire = WireArgs::new(args, kwargs, params, $arity)?;
                        $(let $A = wire.next::<$A>()?;)*
                        Ok(($($A,)*))
                    })(),
                };
                match extracted {
                    Ok(($($A,)*)) => ReplyFuture::new(self($($A),*)),
                    Err(e) => ReplyFuture::failed(e),
                }
            }
        }
    };
}

/// Tuples for which a caller's lone value may stand: `client.call("/r", "x".to_string())`
/// reaches `fn(String)` without serialization. Only one-tuples take one.
trait SingleTuple: Sized {
    fn take_single(_: &mut CallArgs<'_>) -> Option<Self> {
        None
    }
}

impl<A: 'static> SingleTuple for (A,) {
    fn take_single(args: &mut CallArgs<'_>) -> Option<Self> {
        args.take::<A>().map(|a| (a,))
    }
}
impl SingleTuple for () {}
macro_rules! no_single {
    ($(($($A:ident),*);)*) => {$(impl<$($A),*> SingleTuple for ($($A,)*) {})*};
}
no_single! {
    (A, B); (A, B, C); (A, B, C, D); (A, B, C, D, E); (A, B, C, D, E, F); (A, B, C, D, E, F, G);
    (A, B, C, D, E, F, G, H);
}

impl_handler!(0;);
impl_handler!(1; A1);
impl_handler!(2; A1, A2);
impl_handler!(3; A1, A2, A3);
impl_handler!(4; A1, A2, A3, A4);
impl_handler!(5; A1, A2, A3, A4, A5);
impl_handler!(6; A1, A2, A3, A4, A5, A6);
impl_handler!(7; A1, A2, A3, A4, A5, A6, A7);
impl_handler!(8; A1, A2, A3, A4, A5, A6, A7, A8);

struct Positional<H, T> {
    handler: H,
    _types: PhantomData<fn() -> T>,
}

impl<H: Handler<T>, T: 'static> ErasedHandler for Positional<H, T> {
    fn call(&self, args: CallArgs<'_>, params: &[String]) -> ReplyFuture {
        self.handler.call(args, params)
    }
}

/// How a route takes its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// Positional and keyword arguments (`{"args": [...], "kwargs": {...}}`).
    Rpc,
    /// A JSON endpoint: the body is one object of keyword arguments, on any method.
    Json,
}

/// A handler ready to be registered, with its argument names and token.
pub struct Route {
    pub(crate) handler: Arc<dyn ErasedHandler>,
    pub(crate) params: Vec<String>,
    pub(crate) token: Option<String>,
    pub(crate) arity: Option<usize>,
    pub(crate) kind: RouteKind,
    /// The route's metric handles, once it is served with metrics on: found with the route,
    /// no second lookup by path a call.
    pub(crate) metrics: std::sync::OnceLock<Arc<crate::observe::RouteMetrics>>,
}

impl Clone for Route {
    /// A copy to register anew: without the metric handles of the service it was served in.
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            params: self.params.clone(),
            token: self.token.clone(),
            arity: self.arity,
            kind: self.kind,
            metrics: std::sync::OnceLock::new(),
        }
    }
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("params", &self.params)
            .field("protected", &self.token.is_some())
            .field("kind", &self.kind)
            .finish()
    }
}

impl Route {
    /// Names the arguments, in order, so callers may pass them by keyword.
    pub fn params<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.params = names.into_iter().map(Into::into).collect();
        self
    }

    /// Requires this token on every call (microservices_connector's `typing(rule, token=...)`). Compared in
    /// constant time.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// How this route takes its arguments.
    pub fn kind(&self) -> RouteKind {
        self.kind
    }

    /// The argument names.
    pub fn param_names(&self) -> &[String] {
        &self.params
    }

    /// Whether a token is required.
    pub fn is_protected(&self) -> bool {
        self.token.is_some()
    }
}

/// An RPC route from a plain async function.
///
/// ```
/// use switchyard_core::{handler::rpc, service::Service};
/// async fn add(a: i64, key: i64) -> i64 { a + key }
/// let svc = Service::new("calc").route("/int", rpc(add).params(["a", "key"]));
/// assert!(svc.has_route("/int"));
/// ```
pub fn rpc<H: Handler<T>, T: 'static>(handler: H) -> Route {
    Route {
        handler: Arc::new(Positional {
            handler,
            _types: PhantomData,
        }),
        params: Vec::new(),
        token: None,
        arity: Some(H::ARITY),
        kind: RouteKind::Rpc,
        metrics: std::sync::OnceLock::new(),
    }
}

struct KeywordOnly<F, T> {
    f: F,
    _t: PhantomData<fn() -> T>,
}

impl<F, Fut, T, R> ErasedHandler for KeywordOnly<F, T>
where
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoReply,
    T: DeserializeOwned + Send + 'static,
{
    fn call(&self, mut args: CallArgs<'_>, _params: &[String]) -> ReplyFuture {
        let input = match args.take::<T>() {
            Some(t) => Ok(t),
            None => args
                .into_wire()
                .map_err(|e| HandlerError::bad_request(e.to_string()))
                .and_then(|(args, kwargs)| {
                    let object = match (args.len(), kwargs.is_empty()) {
                        (0, _) => Value::Object(kwargs),
                        // A local caller passing one struct or map.
                        (1, true) => args.into_iter().next().unwrap_or(Value::Null),
                        _ => {
                            return Err(HandlerError::bad_request(
                                "a JSON endpoint takes keyword arguments only",
                            ))
                        }
                    };
                    serde_json::from_value::<T>(object).map_err(|e| {
                        HandlerError::bad_request(format!(
                            "body does not match {}: {e}",
                            short_type_name::<T>()
                        ))
                    })
                }),
        };
        match input {
            Ok(t) => ReplyFuture::new((self.f)(t)),
            Err(e) => ReplyFuture::failed(e),
        }
    }
}

/// A JSON endpoint (microservices_connector's `@Micro.json`): the request body is one object of keyword
/// arguments, deserialized into `T`; the reply uses the same array form as RPC. Served on
/// GET, POST, PUT and DELETE.
pub fn json<F, Fut, T, R>(f: F) -> Route
where
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoReply,
    T: DeserializeOwned + Send + 'static,
{
    Route {
        handler: Arc::new(KeywordOnly { f, _t: PhantomData }),
        params: Vec::new(),
        token: None,
        arity: None,
        kind: RouteKind::Json,
        metrics: std::sync::OnceLock::new(),
    }
}

struct Untyped<F>(F);

impl<F, Fut, R> ErasedHandler for Untyped<F>
where
    F: Fn(Vec<Value>, Map<String, Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoReply,
{
    fn call(&self, args: CallArgs<'_>, _params: &[String]) -> ReplyFuture {
        match args.into_wire() {
            Ok((args, kwargs)) => ReplyFuture::new((self.0)(args, kwargs)),
            Err(e) => ReplyFuture::failed(HandlerError::bad_request(format!(
                "arguments are not JSON values: {e}"
            ))),
        }
    }
}

/// An RPC route whose handler takes the call's arguments as they came, untyped: the
/// positional ones and the keyword ones, as JSON values (for proxies, echo services and
/// tools that do not know the arguments' types).
///
/// ```
/// use switchyard_core::{handler::untyped, service::Service};
/// let s = Service::new("echo").route("/echo", untyped(|args, _kwargs| async move { args }));
/// assert!(s.has_route("/echo"));
/// ```
pub fn untyped<F, Fut, R>(f: F) -> Route
where
    F: Fn(Vec<Value>, Map<String, Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoReply,
{
    Route {
        handler: Arc::new(Untyped(f)),
        params: Vec::new(),
        token: None,
        arity: None,
        kind: RouteKind::Rpc,
        metrics: std::sync::OnceLock::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::values::Args;

    fn wire(args: Value, kwargs: Value) -> CallArgs<'static> {
        CallArgs::Owned(Args::Wire {
            args: serde_json::from_value(args).unwrap(),
            kwargs: serde_json::from_value(kwargs).unwrap(),
        })
    }

    async fn string1(a: String, key: String) -> String {
        format!("{a}-{key}")
    }

    #[tokio::test]
    async fn positional_and_keyword_arguments_bind_by_name() {
        let route = rpc(string1).params(["a", "key"]);
        let r = route
            .handler
            .call(wire(json!(["x"]), json!({"key": "y"})), &route.params)
            .await
            .unwrap();
        assert_eq!(r.decode::<String>().unwrap(), "x-y");
    }

    #[tokio::test]
    async fn wrong_arguments_are_bad_requests_naming_the_argument() {
        let route = rpc(string1).params(["a", "key"]);
        let call = |args, kwargs| route.handler.call(wire(args, kwargs), &route.params);
        let e = call(json!(["x", 5]), json!({})).await.unwrap_err();
        assert_eq!(e.code(), crate::error::ErrorCode::BadRequest);
        assert!(
            e.message().contains("'key'") && e.message().contains("String"),
            "{e}"
        );
        let e = call(json!(["x"]), json!({})).await.unwrap_err();
        assert!(e.message().starts_with("missing argument 'key'"), "{e}");
        let e = call(json!(["x", "y", "z"]), json!({})).await.unwrap_err();
        assert!(e.message().contains("takes 2 argument(s) but 3"), "{e}");
        let e = call(json!(["x"]), json!({"other": 1})).await.unwrap_err();
        assert!(
            e.message().contains("unexpected keyword argument 'other'"),
            "{e}"
        );
        let e = call(json!(["x", "y"]), json!({"key": "z"}))
            .await
            .unwrap_err();
        assert!(
            e.message().contains("multiple values for argument 'key'"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn local_arguments_skip_serialization_and_fall_back_when_types_differ() {
        let route = rpc(string1);
        let r = route
            .handler
            .call(Args::local(("a".to_string(), "b".to_string())).into(), &[])
            .await
            .unwrap();
        assert!(matches!(r, Reply::Held(_)));
        assert_eq!(r.decode::<String>().unwrap(), "a-b");
        // &str instead of String: converted through JSON, still works.
        let r = route
            .handler
            .call(Args::local(("a", "b")).into(), &[])
            .await
            .unwrap();
        assert_eq!(r.decode::<String>().unwrap(), "a-b");
        // Lent rather than boxed: taken when the types match, read as JSON when not.
        let mut lent = Some(("a".to_string(), "b".to_string()));
        let r = route.handler.call(CallArgs::Lent(&mut lent), &[]).await;
        assert_eq!(r.unwrap().decode::<String>().unwrap(), "a-b");
        assert!(lent.is_none(), "taken, not copied");
        let mut lent = Some(("a", 5));
        let e = route.handler.call(CallArgs::Lent(&mut lent), &[]).await;
        assert!(e.unwrap_err().message().contains("argument 2"));
        assert!(lent.is_some(), "read, not taken");
        let mut lent = Some(("a", "b"));
        let r = route.handler.call(CallArgs::Lent(&mut lent), &[]).await;
        assert_eq!(r.unwrap().decode::<String>().unwrap(), "a-b");
        assert!(lent.is_some(), "read, not taken");
    }

    #[tokio::test]
    async fn a_held_reply_decodes_to_another_type_and_encodes() {
        async fn pair() -> (String, u64) {
            ("a".to_string(), 5)
        }
        let route = rpc(pair);
        let call = || route.handler.call(Args::local(()).into(), &[]);
        let (a, b): (Value, f64) = call().await.unwrap().decode().unwrap();
        assert_eq!((a, b), (json!("a"), 5.0));
        let values = call().await.unwrap().into_values().unwrap();
        assert_eq!(values, vec![json!("a"), json!(5)]);
        let bytes = call()
            .await
            .unwrap()
            .encode(crate::codec::Codec::Json)
            .unwrap();
        assert_eq!(&bytes[..], br#"["a",5]"#);
        assert!(call().await.unwrap().decode::<u32>().is_err());
    }

    #[tokio::test]
    async fn single_argument_needs_no_tuple() {
        async fn hello(name: String) -> String {
            format!("Welcome {name}")
        }
        let route = rpc(hello);
        let r = route
            .handler
            .call(Args::local("Mr. Developer".to_string()).into(), &[])
            .await
            .unwrap();
        assert_eq!(r.decode::<String>().unwrap(), "Welcome Mr. Developer");
    }

    #[tokio::test]
    async fn json_routes_take_a_keyword_object() {
        #[derive(serde::Deserialize)]
        struct In {
            #[serde(default = "one")]
            a: i64,
            b: String,
        }
        fn one() -> i64 {
            1
        }
        let route = json(|i: In| async move { json!({"1": i.a, "2": i.b}) });
        let r = route
            .handler
            .call(wire(json!([]), json!({"b": "t"})), &[])
            .await
            .unwrap();
        assert_eq!(r.into_values().unwrap(), vec![json!({"1": 1, "2": "t"})]);
        let e = route
            .handler
            .call(wire(json!([]), json!({"a": 2})), &[])
            .await
            .unwrap_err();
        assert!(e.message().contains("missing field `b`"), "{e}");
    }
}
