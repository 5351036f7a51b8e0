//! Stores for effectively-once processing: inbox stores for switchyard's consumers (see
//! `switchyard_core::inbox`), [`RedisInbox`] and [`PgInbox`]; and the PostgreSQL
//! transactional outbox, [`outbox::PgOutbox`]. Not for direct use; see the `switchyard` crate.

pub mod outbox;

use std::time::Duration;

use futures::future::BoxFuture;
use switchyard_core::inbox::{Claim, InboxError, InboxStore};

fn err(e: impl std::error::Error + Send + Sync + 'static) -> InboxError {
    InboxError(Box::new(e))
}

/// A connection pool for a store whose table is `table`. The name is checked to be a plain
/// identifier, because it is written into SQL text (table names cannot be bound parameters).
pub(crate) async fn pg_pool(url: &str, table: &str) -> Result<sqlx::PgPool, InboxError> {
    if table.is_empty() || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(InboxError(
            format!("table name {table:?} must be a plain identifier").into(),
        ));
    }
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(url)
        .await
        .map_err(err)
}

/// Message ids in Redis: `<prefix><id>` holds `p` (claimed, expiring with the lease) or `d`
/// (done, expiring after the retention).
#[derive(Clone)]
pub struct RedisInbox {
    con: redis::aio::ConnectionManager,
    prefix: String,
    retention: Duration,
}

impl std::fmt::Debug for RedisInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisInbox")
            .field("prefix", &self.prefix)
            .finish()
    }
}

// Claim atomically: take a missing or expired key; otherwise say what holds it.
const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if v == 'd' then return 'd' end
if v == 'p' then return 'p' end
redis.call('SET', KEYS[1], 'p', 'PX', ARGV[1])
return 'f'
";

// Release only a claim, never a done mark.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == 'p' then return redis.call('DEL', KEYS[1]) end
return 0
";

impl RedisInbox {
    /// An inbox at `url` (`redis://127.0.0.1:6379`), its keys under `prefix`, remembering
    /// processed ids for `retention`.
    pub async fn connect(url: &str, prefix: &str, retention: Duration) -> Result<Self, InboxError> {
        let client = redis::Client::open(url).map_err(err)?;
        let con = redis::aio::ConnectionManager::new(client)
            .await
            .map_err(err)?;
        Ok(Self {
            con,
            prefix: prefix.to_string(),
            retention,
        })
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl InboxStore for RedisInbox {
    fn claim<'a>(
        &'a self,
        id: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, InboxError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            let found: String = redis::Script::new(CLAIM)
                .key(self.key(id))
                .arg(millis(lease))
                .invoke_async(&mut con)
                .await
                .map_err(err)?;
            Ok(match found.as_str() {
                "d" => Claim::Done,
                "p" => Claim::InProgress,
                _ => Claim::Fresh,
            })
        })
    }

    fn done<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), InboxError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            redis::cmd("SET")
                .arg(self.key(id))
                .arg("d")
                .arg("PX")
                .arg(millis(self.retention))
                .query_async::<()>(&mut con)
                .await
                .map_err(err)
        })
    }

    fn release<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), InboxError>> {
        Box::pin(async move {
            let mut con = self.con.clone();
            redis::Script::new(RELEASE)
                .key(self.key(id))
                .invoke_async::<i64>(&mut con)
                .await
                .map(|_| ())
                .map_err(err)
        })
    }
}

/// Message ids in a PostgreSQL table (`switchyard_store` unless named otherwise). Besides
/// the consumer integration, [`PgInbox::done_in`] records an id inside the caller's own
/// transaction, so that the state change and the record commit together.
#[derive(Clone, Debug)]
pub struct PgInbox {
    pool: sqlx::PgPool,
    table: String,
}

impl PgInbox {
    /// Connects to `url` and creates `table` if it is missing. The table name must be a plain
    /// identifier.
    pub async fn connect(url: &str, table: &str) -> Result<Self, InboxError> {
        let pool = pg_pool(url, table).await?;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (
                id TEXT PRIMARY KEY,
                done BOOLEAN NOT NULL DEFAULT FALSE,
                lease_until TIMESTAMPTZ NOT NULL,
                done_at TIMESTAMPTZ
            )"
        ))
        .execute(&pool)
        .await
        .map_err(err)?;
        Ok(Self {
            pool,
            table: table.to_string(),
        })
    }

    /// Marks `id` done inside `tx`: commits with the caller's own writes.
    pub async fn done_in(&self, tx: &mut sqlx::PgConnection, id: &str) -> Result<(), InboxError> {
        sqlx::query(&format!(
            "INSERT INTO {} (id, done, lease_until, done_at) VALUES ($1, TRUE, now(), now())
             ON CONFLICT (id) DO UPDATE SET done = TRUE, done_at = now()",
            self.table
        ))
        .bind(id)
        .execute(tx)
        .await
        .map(|_| ())
        .map_err(err)
    }

    /// The transactional inbox in one call: records `id` as processed inside `tx` and says
    /// whether this is its first time. Apply the message's effect in the same transaction only
    /// when it returns `true`; a duplicate then changes nothing, whenever it arrives.
    pub async fn record_in(
        &self,
        tx: &mut sqlx::PgConnection,
        id: &str,
    ) -> Result<bool, InboxError> {
        let inserted: Option<(String,)> = sqlx::query_as(&format!(
            "INSERT INTO {} (id, done, lease_until, done_at) VALUES ($1, TRUE, now(), now())
             ON CONFLICT (id) DO NOTHING RETURNING id",
            self.table
        ))
        .bind(id)
        .fetch_optional(tx)
        .await
        .map_err(err)?;
        Ok(inserted.is_some())
    }

    /// Forgets ids processed more than `age` ago.
    pub async fn prune(&self, age: Duration) -> Result<u64, InboxError> {
        sqlx::query(&format!(
            "DELETE FROM {} WHERE done AND done_at < now() - make_interval(secs => $1)",
            self.table
        ))
        .bind(age.as_secs_f64())
        .execute(&self.pool)
        .await
        .map(|r| r.rows_affected())
        .map_err(err)
    }
}

impl InboxStore for PgInbox {
    fn claim<'a>(
        &'a self,
        id: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, InboxError>> {
        Box::pin(async move {
            // Take a new id, or an expired claim; one statement, so two consumers cannot both win.
            let won: Option<(String,)> = sqlx::query_as(&format!(
                "INSERT INTO {t} (id, lease_until) VALUES ($1, now() + make_interval(secs => $2))
                 ON CONFLICT (id) DO UPDATE SET lease_until = EXCLUDED.lease_until
                 WHERE NOT {t}.done AND {t}.lease_until < now()
                 RETURNING id",
                t = self.table
            ))
            .bind(id)
            .bind(lease.as_secs_f64())
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
            if won.is_some() {
                return Ok(Claim::Fresh);
            }
            let done: Option<(bool,)> =
                sqlx::query_as(&format!("SELECT done FROM {} WHERE id = $1", self.table))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(err)?;
            Ok(match done {
                Some((true,)) => Claim::Done,
                Some((false,)) => Claim::InProgress,
                // Released between the two statements: try again later.
                None => Claim::InProgress,
            })
        })
    }

    fn done<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), InboxError>> {
        Box::pin(async move {
            sqlx::query(&format!(
                "UPDATE {} SET done = TRUE, done_at = now() WHERE id = $1",
                self.table
            ))
            .bind(id)
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(err)
        })
    }

    fn release<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), InboxError>> {
        Box::pin(async move {
            sqlx::query(&format!(
                "DELETE FROM {} WHERE id = $1 AND NOT done",
                self.table
            ))
            .bind(id)
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(err)
        })
    }
}
