//! The keyed pool across processes (microservices_connector's `DistributedProcess`): each key belongs to one
//! worker process, chosen by a stable hash, so one key's jobs always run in the same process,
//! one at a time and in submission order, while different keys run in parallel across the
//! processes. A worker process is any switchyard service (over HTTP, a broker, anything with
//! request/reply); a job is a call to one of its routes.
//!
//! The hash is FNV-1a (64 bit) of the key's UTF-8 bytes, mapped to a shard by jump consistent
//! hashing (Lamping & Veach, 2014): written here rather than taken from `std` because
//! `DefaultHasher` promises no stability across Rust releases, and a key must land on the same
//! process whichever build sends it. Growing from `n` to `n + 1` shards moves only the keys
//! that go to the new shard.
//!
//! ```
//! use switchyard_core::shards::shard_of;
//! assert_eq!(shard_of("order-17", 4), shard_of("order-17", 4));
//! assert!(shard_of("order-17", 4) < 4);
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use serde_json::Value;

use crate::client::Client;
use crate::pool::{KeyedPool, PoolClosed, PoolConfig, Results};

/// FNV-1a, 64 bit: stable across processes, builds and platforms.
pub fn stable_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Jump consistent hash: a bucket in `0..buckets` for `hash` (`buckets` ≥ 1).
pub fn jump_hash(mut hash: u64, buckets: u32) -> u32 {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < i64::from(buckets.max(1)) {
        b = j;
        hash = hash.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        // The algorithm's own floating-point step: (b + 1) * 2^31 / ((hash >> 33) + 1).
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((hash >> 33) + 1) as f64)) as i64;
    }
    u32::try_from(b).unwrap_or(0)
}

/// The shard (`0..shards`) that owns `key`.
pub fn shard_of(key: &str, shards: usize) -> usize {
    let n = u32::try_from(shards.max(1)).unwrap_or(u32::MAX);
    jump_hash(stable_hash(key), n) as usize
}

/// No worker was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a sharded pool needs at least one worker")]
pub struct NoShards;

/// A [`KeyedPool`] whose jobs are calls to worker processes, each key owned by one of them.
///
/// A key's next job is sent only when its previous one has answered, so per-key order holds
/// across processes; a worker runs the calls of its different keys concurrently. Results
/// (each call's reply as JSON, or why it failed) arrive on the stream with their key and
/// sequence number, as from [`KeyedPool`].
#[derive(Debug)]
pub struct ShardedPool {
    shards: Vec<Client>,
    pool: KeyedPool<String, Value>,
    next: AtomicUsize,
}

impl ShardedPool {
    /// A pool over `shards` (one client per worker process, in a fixed order: the order is
    /// what maps keys to workers). `config` bounds the jobs in flight across all of them.
    pub fn new(
        shards: Vec<Client>,
        config: PoolConfig,
    ) -> Result<(Self, Results<String, Value>), NoShards> {
        if shards.is_empty() {
            return Err(NoShards);
        }
        let (pool, results) = KeyedPool::new(config);
        Ok((
            Self {
                shards,
                pool,
                next: AtomicUsize::new(0),
            },
            results,
        ))
    }

    /// How many worker processes there are.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Always `false`: a pool has at least one worker.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// The worker (index into the clients given) that owns `key`.
    pub fn shard_of(&self, key: &str) -> usize {
        shard_of(key, self.shards.len())
    }

    /// Submits a call of `route` with `args` (a tuple for several) on the worker owning `key`
    /// (any worker, round robin, without a key). Waits when `max_in_flight` jobs are pending.
    pub async fn submit<A>(
        &self,
        key: Option<String>,
        route: &str,
        args: A,
    ) -> Result<u64, PoolClosed>
    where
        A: Serialize + Send + 'static,
    {
        let index = match &key {
            Some(k) => self.shard_of(k),
            None => self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len(),
        };
        let client = self.shards[index].clone();
        let route = route.to_string();
        self.pool
            .submit(
                key,
                async move { client.call::<A, Value>(&route, args).await },
            )
            .await
    }

    /// Takes no more jobs and waits for the pending ones.
    pub async fn shutdown(self) {
        self.pool.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mapping_is_pinned() {
        // A change here moves keys between processes of a running deployment: it must be
        // deliberate.
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        let pinned: Vec<usize> = ["user-1", "user-2", "order-17", "", "ключ"]
            .iter()
            .map(|k| shard_of(k, 8))
            .collect();
        assert_eq!(pinned, PINNED);
    }

    // Computed independently by a Python transcription of the same two algorithms.
    const PINNED: [usize; 5] = [7, 7, 3, 1, 4];

    #[test]
    fn growing_moves_only_keys_to_the_new_shard_and_spreads_them() {
        let keys: Vec<String> = (0..20_000).map(|i| format!("key-{i}")).collect();
        for n in 1..12usize {
            let mut counts = vec![0usize; n + 1];
            for k in &keys {
                let (before, after) = (shard_of(k, n), shard_of(k, n + 1));
                assert!(before < n && after <= n);
                assert!(
                    after == before || after == n,
                    "{k} moved {before} -> {after}"
                );
                counts[after] += 1;
            }
            let fair = keys.len() / (n + 1);
            for c in counts {
                assert!(
                    c > fair * 8 / 10 && c < fair * 12 / 10,
                    "uneven: {c} vs {fair}"
                );
            }
        }
    }
}
