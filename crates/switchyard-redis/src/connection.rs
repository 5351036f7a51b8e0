//! The connections, made on first use: a shared one, dedicated ones for blocking reads, and
//! the reply channel calls wait on.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
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

    pub(crate) async fn con(&self) -> Result<ConnectionManager, TransportError> {
        get_or_init_boxed(&self.con, || async {
            // redis-rs's defaults retry a refused connection for minutes (6 tries, the
            // waits growing a hundredfold up to 60 s): a broker that is not there must
            // show at once, and start-up retries are the caller's (`ConnectRetry`).
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Duration::from_secs(5))
                .set_number_of_retries(1)
                .set_factor(2)
                .set_max_delay(500);
            ConnectionManager::new_with_config(self.client.clone(), config)
                .await
                .map_err(|e| self.unreachable(e))
        })
        .await
        .cloned()
    }

    /// A connection of its own, for blocking reads.
    pub(crate) async fn dedicated(&self) -> Result<MultiplexedConnection, TransportError> {
        self.client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| self.unreachable(e))
    }

    pub(crate) async fn replies(&self) -> Result<Arc<Replies>, TransportError> {
        get_or_init_boxed(&self.replies, || async {
            let replies = Arc::new(Replies {
                channel: format!("sy:reply:{}", switchyard_core::message::new_id()),
                waiting: PendingReplies::default(),
            });
            let mut pubsub = self
                .client
                .get_async_pubsub()
                .await
                .map_err(|e| self.unreachable(e))?;
            pubsub
                .subscribe(&replies.channel)
                .await
                .map_err(TransportError::other)?;
            let r = replies.clone();
            tokio::spawn(async move {
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
            });
            Ok(replies)
        })
        .await
        .cloned()
    }
}
