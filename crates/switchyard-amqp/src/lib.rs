//! RabbitMQ transport for switchyard (`amqp://USER:PASS@HOST:PORT/VHOST[?ns=NAME]`). Not for
//! direct use; see the `switchyard` crate.
//!
//! - **Events** are published, persistent and with publisher confirms, to the durable topic
//!   exchange `sy.events` with the topic as routing key. A consumer group is the durable
//!   queue `<topic>:<group>` bound to it (its members compete for its messages); a broadcast
//!   subscriber gets an exclusive, auto-deleted queue of its own. Deliveries are acked after
//!   the handler succeeds; prefetch (`basic.qos`) bounds what is in flight; a nack re-publishes
//!   the message to its queue after the delay with `x-attempt` raised, then acks the original;
//!   a delivery dropped unsettled is requeued at once.
//! - **RPC** goes to the queue `sy.rpc.<ns>`, declared auto-delete by the serving instances,
//!   which share it. Calls are published `mandatory` with a correlation id and RabbitMQ's
//!   direct reply-to, so a call that no instance serves comes back at once (`Unreachable`)
//!   instead of waiting out its timeout; a call's remaining time becomes its `expiration`, so
//!   a call nobody took in time is dropped by the broker rather than run late.
//! - Headers travel as AMQP headers; events carry CloudEvents attributes as
//!   `cloudEvents:<attr>` headers, `message_id` and `content_type`, as the CloudEvents AMQP
//!   binding lays them out, so a plain client (pika) reads and writes them.
//! - The connection is re-opened when it breaks; subscriptions re-attach by themselves.
//!   Messages a broken channel held unacked are redelivered by the broker.

mod transport;

pub use transport::AmqpTransport;
