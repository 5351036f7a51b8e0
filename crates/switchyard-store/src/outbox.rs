//! The transactional outbox on PostgreSQL: a service writes its state change and the events
//! it owes in one transaction ([`PgOutbox::enqueue_in`]); a relay ([`PgOutbox::relay`])
//! publishes them, in order, to any transport and marks them sent.
//!
//! Nothing is lost at any crash point: an event is written with the state or not at all, and
//! it is marked sent only after the transport confirmed it. A crash between the confirm and
//! the mark publishes it again on restart — with the same message id, so a consumer with an
//! inbox absorbs the duplicate. Relays wake on `NOTIFY` (sent on commit), with a slow timer as
//! a safety net for a missed notification; several relays may run, each row is taken by one
//! (`FOR UPDATE SKIP LOCKED`).

use std::sync::Arc;
use std::time::Duration;

use switchyard_core::inbox::InboxError;
use switchyard_core::message::{Envelope, Headers};
use switchyard_core::transport::Publisher;
use tokio::sync::oneshot;

fn err(e: impl std::error::Error + Send + Sync + 'static) -> InboxError {
    InboxError(Box::new(e))
}

/// The outbox table and its notification channel.
#[derive(Clone, Debug)]
pub struct PgOutbox {
    pool: sqlx::PgPool,
    table: String,
    channel: String,
}

/// What a relay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayStats {
    /// Events published and marked sent.
    pub sent: u64,
    /// Batches that failed to publish (and were retried).
    pub failures: u64,
}

/// A running relay; stop it with [`Relay::stop`].
#[derive(Debug)]
pub struct Relay {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<RelayStats>,
}

impl Relay {
    /// Stops after the batch in progress and returns what the relay did.
    pub async fn stop(mut self) -> RelayStats {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.task).await.unwrap_or_default()
    }
}

impl PgOutbox {
    /// Connects to `url` and creates `table` (a plain identifier) if it is missing.
    pub async fn connect(url: &str, table: &str) -> Result<Self, InboxError> {
        let pool = crate::pg_pool(url, table).await?;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (
                seq BIGSERIAL PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                topic TEXT NOT NULL,
                headers JSONB NOT NULL,
                payload BYTEA NOT NULL,
                created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                sent_at TIMESTAMPTZ
            )"
        ))
        .execute(&pool)
        .await
        .map_err(err)?;
        sqlx::query(&format!(
            "CREATE INDEX IF NOT EXISTS {table}_unsent ON {table} (seq) WHERE sent_at IS NULL"
        ))
        .execute(&pool)
        .await
        .map_err(err)?;
        Ok(Self {
            pool,
            table: table.to_string(),
            channel: format!("{table}_ready"),
        })
    }

    /// The connection pool, to open transactions that write state and events together.
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.pool
    }

    /// Writes `envelope` to the outbox inside the caller's transaction: it is published if and
    /// only if the transaction commits.
    pub async fn enqueue_in(
        &self,
        tx: &mut sqlx::PgConnection,
        envelope: &Envelope,
    ) -> Result<(), InboxError> {
        let headers: serde_json::Map<String, serde_json::Value> = envelope
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        sqlx::query(&format!(
            "INSERT INTO {} (id, topic, headers, payload) VALUES ($1, $2, $3, $4)",
            self.table
        ))
        .bind(&envelope.id)
        .bind(&envelope.subject)
        .bind(sqlx::types::Json(headers))
        .bind(envelope.payload.as_ref())
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        // Delivered to listeners when the transaction commits, never before.
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(&self.channel)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        Ok(())
    }

    /// Events not yet marked sent.
    pub async fn pending(&self) -> Result<i64, InboxError> {
        let (n,): (i64,) = sqlx::query_as(&format!(
            "SELECT count(*) FROM {} WHERE sent_at IS NULL",
            self.table
        ))
        .fetch_one(&self.pool)
        .await
        .map_err(err)?;
        Ok(n)
    }

    /// Publishes one batch of up to `limit` events in order; returns how many were sent.
    pub async fn relay_once(
        &self,
        publisher: &dyn Publisher,
        limit: i64,
    ) -> Result<u64, InboxError> {
        let mut tx = self.pool.begin().await.map_err(err)?;
        type Row = (
            i64,
            String,
            String,
            sqlx::types::Json<serde_json::Map<String, serde_json::Value>>,
            Vec<u8>,
        );
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT seq, id, topic, headers, payload FROM {} WHERE sent_at IS NULL ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
            self.table
        ))
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
        let mut sent = Vec::with_capacity(rows.len());
        for (seq, id, topic, headers, payload) in rows {
            let mut h = Headers::new();
            for (k, v) in headers.0 {
                if let serde_json::Value::String(v) = v {
                    h.insert(k, v);
                }
            }
            let env = Envelope {
                id,
                subject: topic,
                headers: h,
                payload: payload.into(),
            };
            if let Err(e) = publisher.publish(env).await {
                // Keep what was confirmed; the rest stays for the next batch, in order.
                tracing::warn!(target: "switchyard::outbox", error = %e, "publish failed; will retry");
                break;
            }
            sent.push(seq);
        }
        if !sent.is_empty() {
            sqlx::query(&format!(
                "UPDATE {} SET sent_at = now() WHERE seq = ANY($1)",
                self.table
            ))
            .bind(&sent)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        Ok(sent.len() as u64)
    }

    /// Starts a relay publishing to `publisher` until stopped.
    pub async fn relay(&self, publisher: Arc<dyn Publisher>) -> Result<Relay, InboxError> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool)
            .await
            .map_err(err)?;
        listener.listen(&self.channel).await.map_err(err)?;
        let (stop, mut stopped) = oneshot::channel::<()>();
        let outbox = self.clone();
        let task = tokio::spawn(async move {
            let mut stats = RelayStats::default();
            let mut backoff = Duration::from_millis(50);
            loop {
                // Drain everything pending, then wait for a commit to say there is more.
                loop {
                    match outbox.relay_once(publisher.as_ref(), 256).await {
                        Ok(0) => break,
                        Ok(n) => {
                            stats.sent += n;
                            backoff = Duration::from_millis(50);
                        }
                        Err(e) => {
                            stats.failures += 1;
                            tracing::warn!(target: "switchyard::outbox", error = %e, "relay batch failed");
                            tokio::select! {
                                _ = &mut stopped => return stats,
                                _ = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                    if stopped.try_recv().is_ok() {
                        return stats;
                    }
                }
                tokio::select! {
                    _ = &mut stopped => return stats,
                    _ = listener.recv() => {}
                    // A notification missed while the listener reconnected is picked up here.
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        });
        Ok(Relay {
            stop: Some(stop),
            task,
        })
    }
}
