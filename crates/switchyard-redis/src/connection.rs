//! The connections, made on first use: a shared one, dedicated ones for blocking reads, and
//! the reply channel calls wait on.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use switchyard_core::error::{redact_url, TransportError};
use switchyard_core::transport::{get_or_init_boxed, PendingReplies};

use crate::rpc::*;
use crate::RedisTransport;

impl RedisTransport {
    pub(crate) fn unreachable(&self, e: redis::RedisError) -> TransportError {
        TransportError::Unreachable {
            url: redact_url(&self.url),
            source: Box::new(e),
        }
    }

    /// The shared connection (publishing, acknowledging, heartbeats), made on first use.
    pub(crate) async fn con(&self) -> Result<ConnectionManager, TransportError> {
        get_or_init_boxed(&self.con, || self.connect())
            .await
            .cloned()
    }

    /// A new connection: the shared one, or one of its own for a reader that blocks (a
    /// consumer, an RPC queue). It connects again by itself when lost: a plain multiplexed
    /// connection stays broken after the server restarts.
    pub(crate) async fn connect(&self) -> Result<ConnectionManager, TransportError> {
        // redis-rs's defaults retry a refused connection for minutes (6 tries, the waits
        // growing a hundredfold up to 60 s): a broker that is not there must show at once,
        // and start-up retries are the caller's (`ConnectRetry`).
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(5))
            .set_number_of_retries(1)
            .set_factor(2)
            .set_max_delay(500);
        ConnectionManager::new_with_config(self.client.clone(), config)
            .await
            .map_err(|e| self.unreachable(e))
    }

    pub(crate) async fn replies(&self) -> Result<Arc<Replies>, TransportError> {
        get_or_init_boxed(&self.replies, || async {
            let replies = Arc::new(Replies {
                channel: format!("sy:reply:{}", switchyard_core::message::new_id()),
                waiting: PendingReplies::default(),
            });
            let mut pubsub = reply_subscription(&self.client, &replies.channel)
                .await
                .map_err(|e| self.unreachable(e))?;
            let (r, client) = (replies.clone(), self.client.clone());
            tokio::spawn(async move {
                loop {
                    let mut messages = pubsub.into_on_message();
                    while let Some(msg) = messages.next().await {
                        let Ok(payload) = msg.get_payload::<Vec<u8>>() else {
                            continue;
                        };
                        let Ok(mut reply) = serde_json::from_slice::<RpcReply>(&payload) else {
                            continue;
                        };
                        // A reply nobody waits for any more (its caller timed out) is dropped.
                        let cid = std::mem::take(&mut reply.cid);
                        r.waiting.complete(&cid, reply);
                    }
                    drop(messages);
                    // The connection is gone (the server went away): subscribe again, until
                    // it is back or the transport is dropped. Calls meanwhile time out.
                    pubsub = loop {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        if Arc::strong_count(&r) == 1 {
                            return;
                        }
                        if let Ok(p) = reply_subscription(&client, &r.channel).await {
                            break p;
                        }
                    };
                }
            });
            Ok(replies)
        })
        .await
        .cloned()
    }
}

/// A pub/sub connection subscribed to `channel`.
async fn reply_subscription(
    client: &redis::Client,
    channel: &str,
) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

/// Whether `e` says the connection itself failed (lost, refused, timed out), not the command.
pub(crate) fn connection_failed(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

/// Reports a read's outcome on `link`: down on a connection failure, up on success.
pub(crate) fn report<T>(link: &mut switchyard_core::transport::Link, r: &redis::RedisResult<T>) {
    match r {
        Ok(_) => link.up(),
        Err(e) if connection_failed(e) => link.down(),
        Err(_) => {}
    }
}
