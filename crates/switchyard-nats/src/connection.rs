//! The connection, made on first use: the client, its JetStream context, topic streams, and
//! the one inbox subscription calls wait on.

use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use switchyard_core::error::{redact_url, TransportError};
use switchyard_core::transport::{get_or_init_boxed, PendingReplies, ReplyWait};

use crate::binding::*;
use crate::NatsTransport;

/// Calls waiting for their reply, on one inbox subscription (`<inbox>.<n>`) per transport.
///
/// Written here rather than using async-nats' `send_request`: that future is 1,088 bytes, so
/// every call's boxed future was past the allocator's small-size cache (about 1 KB), and it
/// formats a fresh inbox name per call; a publish with a reply subject is half the size.
pub(crate) struct Replies {
    prefix: String,
    next: AtomicU64,
    pending: Arc<PendingReplies<u64, async_nats::Message>>,
    reader: tokio::task::AbortHandle,
}

impl Drop for Replies {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Replies {
    pub(crate) async fn start(client: &async_nats::Client) -> Result<Self, TransportError> {
        let prefix = format!("{}.", client.new_inbox());
        let mut inbox = client
            .subscribe(format!("{prefix}*"))
            .await
            .map_err(TransportError::other)?;
        let pending: Arc<PendingReplies<u64, async_nats::Message>> = Arc::default();
        let (p, skip) = (pending.clone(), prefix.len());
        let reader = tokio::spawn(async move {
            while let Some(m) = inbox.next().await {
                // A reply nobody waits for any more (its caller timed out) is dropped.
                if let Some(id) = m.subject.get(skip..).and_then(|n| n.parse::<u64>().ok()) {
                    p.complete(&id, m);
                }
            }
            // The connection is closed for good: the callers still waiting fail now rather
            // than at their deadline.
            p.clear();
        })
        .abort_handle();
        Ok(Self {
            prefix,
            next: AtomicU64::new(0),
            pending,
            reader,
        })
    }

    /// A reply subject and the wait for the reply sent to it.
    pub(crate) fn wait(&self) -> (String, ReplyWait<'_, u64, async_nats::Message>) {
        let id = self.next.fetch_add(1, AtomicOrdering::Relaxed);
        let mut subject = String::with_capacity(self.prefix.len() + 20);
        subject.push_str(&self.prefix);
        {
            use std::fmt::Write;
            let _ = write!(subject, "{id}");
        }
        (subject, self.pending.wait(id))
    }
}

impl NatsTransport {
    /// The JetStream context, made once (publishing made one per message).
    pub(crate) async fn js(&self) -> Result<&jetstream::Context, TransportError> {
        get_or_init_boxed(&self.js, || async {
            Ok(jetstream::new(self.client().await?.clone()))
        })
        .await
    }

    pub(crate) async fn replies(&self) -> Result<&Replies, TransportError> {
        get_or_init_boxed(&self.replies, || async {
            Replies::start(self.client().await?).await
        })
        .await
    }

    pub(crate) async fn client(&self) -> Result<&async_nats::Client, TransportError> {
        get_or_init_boxed(&self.client, || self.connect()).await
    }

    /// A second connection, for what must get through while the first is being dropped by a
    /// message the client library cannot read (it drops the whole connection): the
    /// `MAX_DELIVERIES` advisories and the reads that dead-letter such messages.
    pub(crate) async fn control(&self) -> Result<&async_nats::Client, TransportError> {
        get_or_init_boxed(&self.control, || self.connect()).await
    }

    async fn connect(&self) -> Result<async_nats::Client, TransportError> {
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .require_tls(self.tls);
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        options
            .connect(&self.server)
            .await
            .map_err(|e| TransportError::Unreachable {
                url: redact_url(&self.url),
                source: Box::new(e),
            })
    }

    /// Deletes `topic`'s stream and everything in it (consumers included). For tests and
    /// operations; a later publish creates it again.
    pub async fn delete_topic(&self, topic: &str) -> Result<(), TransportError> {
        let name = stream_name(topic);
        let js = self.js().await?;
        js.delete_stream(&name)
            .await
            .map_err(TransportError::other)?;
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
        Ok(())
    }

    pub(crate) async fn stream(
        &self,
        topic: &str,
    ) -> Result<jetstream::stream::Stream, TransportError> {
        check_subject("topic", topic).map_err(|r| TransportError::invalid_url(&self.url, r))?;
        let js = self.js().await?;
        let name = stream_name(topic);
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![topic.to_string()],
                storage: jetstream::stream::StorageType::File,
                max_age: Duration::from_secs(7 * 24 * 3600),
                ..Default::default()
            })
            .await
            .map_err(TransportError::other)?;
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_string());
        Ok(stream)
    }
}
