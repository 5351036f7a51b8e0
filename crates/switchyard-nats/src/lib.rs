//! NATS transport for switchyard (`nats://HOST:PORT[?ns=NAMESPACE]`). Not for direct use; see
//! the `switchyard` crate.
//!
//! - **RPC** uses core NATS request/reply on `sy.rpc.<namespace>.<service>.<route>` (route
//!   `/a/b` → `a.b`, a `.` inside a segment written `%2E`); every instance of a service joins
//!   the queue group named after the service, so calls are shared among its instances and
//!   never reach another service. A call nobody serves fails at once (NATS "no responders").
//! - **Events** go through JetStream: one stream per topic (`SY_<topic>`, file storage), a
//!   durable pull consumer per consumer group, an ephemeral one per broadcast subscriber.
//!   Publishing waits for the stream's acknowledgement; deliveries are acked after the
//!   handler succeeds, nacked with a delay for redelivery, and a delivery dropped unsettled is
//!   nacked at once.
//! - Headers travel as NATS headers; events carry CloudEvents attributes as `ce-*` headers
//!   (the CloudEvents NATS binding, binary mode).

mod transport;

pub use transport::NatsTransport;
