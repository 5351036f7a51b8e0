//! The hook around every call and every event, on both sides: tower [`Layer`]s.
//!
//! A service takes layers around the calls it answers ([`Service::layer`]) and the events it
//! handles ([`Service::event_layer`]); a client takes layers around the calls it makes
//! ([`Client::layer`]) and the events it publishes ([`Client::publish_layer`]). Layers are
//! composed once, when a service is served or a layer is added to a client, so a call still
//! costs one boxed future per layer and none when there is no layer.
//!
//! [`Service::layer`]: crate::service::Service::layer
//! [`Service::event_layer`]: crate::service::Service::event_layer
//! [`Client::layer`]: crate::client::Client::layer
//! [`Client::publish_layer`]: crate::client::Client::publish_layer

use std::sync::Arc;

use tower::util::BoxCloneSyncService;
use tower::{Layer, Service};

use crate::call::CallRequest;
use crate::error::{CallError, HandlerError, TransportError};
use crate::message::Envelope;
use crate::values::Reply;

/// What a service layer wraps on the serving side: a call in, the handler's reply out.
pub type CallService = BoxCloneSyncService<CallRequest, Reply, HandlerError>;
/// What an event layer wraps on the serving side: one delivery attempt of an event.
pub type EventService = BoxCloneSyncService<Envelope, (), HandlerError>;
/// What a client layer wraps: a call out, its reply back.
pub type ClientService = BoxCloneSyncService<CallRequest, Reply, CallError>;
/// What a publish layer wraps: an event out, the transport's confirmation back.
pub type PublishService = BoxCloneSyncService<Envelope, (), TransportError>;

/// A layer with its types erased, kept until the stack is built.
pub(crate) type LayerFn<Req, Res, E> =
    Arc<dyn Fn(BoxCloneSyncService<Req, Res, E>) -> BoxCloneSyncService<Req, Res, E> + Send + Sync>;
pub(crate) type CallLayerFn = LayerFn<CallRequest, Reply, HandlerError>;
pub(crate) type EventLayerFn = LayerFn<Envelope, (), HandlerError>;

/// A tower layer usable around `Req → Res, E`: any [`Layer`] over the boxed service whose
/// service is cloneable, shareable and sendable. Implemented for every such layer; it only
/// names the bounds once for [`Service::layer`](crate::service::Service::layer),
/// [`Service::event_layer`](crate::service::Service::event_layer),
/// [`Client::layer`](crate::client::Client::layer) and
/// [`Client::publish_layer`](crate::client::Client::publish_layer).
pub trait LayerFor<Req, Res, E>: Send + Sync + 'static {
    /// This layer with its types erased.
    fn erased(self) -> ErasedLayer<Req, Res, E>;
}

/// A layer with its types erased (see [`LayerFor`]).
pub struct ErasedLayer<Req, Res, E>(pub(crate) LayerFn<Req, Res, E>);

impl<L, Req, Res, E> LayerFor<Req, Res, E> for L
where
    L: Layer<BoxCloneSyncService<Req, Res, E>> + Send + Sync + 'static,
    L::Service: Service<Req, Response = Res, Error = E> + Clone + Send + Sync + 'static,
    <L::Service as Service<Req>>::Future: Send + 'static,
    Req: 'static,
    Res: 'static,
    E: 'static,
{
    fn erased(self) -> ErasedLayer<Req, Res, E> {
        ErasedLayer(Arc::new(move |inner| {
            BoxCloneSyncService::new(self.layer(inner))
        }))
    }
}

/// `innermost` wrapped in `layers`, the first of them outermost.
pub(crate) fn stack<Req, Res, E>(
    layers: &[LayerFn<Req, Res, E>],
    innermost: BoxCloneSyncService<Req, Res, E>,
) -> BoxCloneSyncService<Req, Res, E> {
    layers
        .iter()
        .rev()
        .fold(innermost, |inner, layer| layer(inner))
}
