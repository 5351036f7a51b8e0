//! Core of switchyard: the message model, codecs, handler and service model, the client, the
//! transport traits, and the in-process transport.
//!
//! Transport authors depend on this crate; applications depend on `switchyard`, which
//! re-exports it. Until 1.0 this crate follows the version of `switchyard` exactly (the
//! workspace pins it with `=`), so a transport crate and the facade always agree.
//!
//! How a message flows: a [`client::Client`] turns a call into a [`call::CallRequest`] naming
//! a service, passes it through the client's [`layer`]s and hands it to a
//! [`transport::Requester`]. On the serving side, [`server::serve`] (written once for every
//! transport) takes each [`transport::IncomingCall`] from the transport's
//! [`transport::Responder`], passes it through the service's layers to
//! [`service::Service::dispatch`], which finds the [`handler::Route`], checks its token, and
//! runs the handler within the caller's deadline. Events go through a
//! [`transport::Publisher`] and come back from a [`transport::Subscriber`] as
//! [`transport::Delivery`]s, which [`consumer::run`] feeds through the service's event layers
//! to its event handlers.

pub(crate) mod backoff;
pub mod call;
pub mod client;
pub(crate) mod clock;
pub mod codec;
pub mod consumer;
pub mod context;
pub mod dead_letters;
pub mod error;
pub mod event_log;
pub mod handler;
pub mod inbox;
pub mod layer;
pub mod mem;
pub mod message;
pub mod middleware;
pub mod observe;
pub mod policy;
pub mod pool;
pub mod push;
pub mod registry;
pub mod relay;
pub mod served;
pub mod server;
pub mod service;
pub mod shards;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod transport;
pub mod url_options;
pub mod values;
pub mod wire;

pub use client::Client;
pub use codec::Codec;
pub use error::{CallError, ErrorCode, HandlerError, RemoteError, TransportError};
pub use handler::{json, rpc};
pub use message::{Envelope, Headers};
pub use server::serve;
pub use service::Service;
pub use transport::{Capabilities, Transport};
pub use values::Json;
