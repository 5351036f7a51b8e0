//! Redis transport for switchyard (`redis://HOST:PORT[/DB][?ns=NAME&claim_idle_ms=N]`). Not
//! for direct use; see the `switchyard` crate.
//!
//! - **Events** live in Redis Streams (`sy:s:<topic>`): a consumer group per switchyard group
//!   (`XREADGROUP`, `XACK` after the handler succeeded), messages left pending by a consumer
//!   that died are taken over with `XAUTOCLAIM` after `claim_idle_ms` (default 30 s), a nack
//!   re-adds the message with its attempt count raised (after the delay) and acks the old
//!   entry. Broadcast subscribers read the stream from its end (`XREAD $`).
//! - **RPC**: calls are pushed on the list `sy:rpc:<ns>` and taken by one serving instance
//!   (`BLPOP`); the reply is published on the caller's own channel. Serving instances keep a
//!   heartbeat in `sy:rpc:<ns>:alive`, so a call nobody serves fails at once.

mod transport;

pub use transport::RedisTransport;
