//! HTTP and WebSocket transport for switchyard (`http://HOST:PORT`).
//!
//! Not for direct use; see the `switchyard` crate.
//!
//! # Wire format
//! RPC is the format of microservices_connector 0.3.7, so its Python clients and servers
//! interoperate: `POST <route>` with `Content-Type: application/json` and body
//! `{"args": [...], "kwargs": {...}, "token": null}`; the reply is `200` with
//! `Content-Type: application/json` and a JSON array holding one element per returned value.
//! The token may also come as `Authorization: Bearer <token>`. Errors are
//! `{"error": {"code": "...", "message": "..."}}` with the matching status. A body in
//! `application/msgpack` gets a MessagePack reply.
//!
//! Events follow the CloudEvents HTTP binding (binary and structured modes): `POST /<topic>`.
//! WebSocket routes share the port: `ws://HOST:PORT/<route>`.

mod client;
pub mod listen;
mod options;
mod server;
mod ws;

/// Header names read or written on every request, made once: a name given as `&str` is
/// parsed (and hashed into a lookup form) at each use.
mod names {
    use axum::http::HeaderName;
    pub(crate) const DEADLINE_MS: HeaderName =
        HeaderName::from_static(switchyard_core::message::header::DEADLINE_MS);
    pub(crate) const CE_SPECVERSION: HeaderName = HeaderName::from_static("ce-specversion");
}

pub use client::HttpTransport;
pub use listen::ServerLimits;
pub use options::HttpOptions;
pub use server::router;
