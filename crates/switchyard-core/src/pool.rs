//! A keyed ordered pool: jobs with the same key run one at a time, in submission order; jobs
//! with different keys run in parallel up to a worker limit; jobs without a key run
//! unordered. Bounded: at `max_in_flight`, [`KeyedPool::submit`] waits — there is no unbounded
//! queue and no polling. microservices_connector's `DistributedThreads`, without its flaws: keyword-style
//! closures keep all their arguments, a failing or panicking job is reported on the result
//! stream and neither kills its worker nor blocks its key, and waiting is event-driven.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use futures::StreamExt;
//! use switchyard_core::pool::{KeyedPool, PoolConfig};
//! let (pool, mut results) = KeyedPool::<u32, String>::new(PoolConfig::default());
//! for (id, x) in [(1, "Nguyen"), (1, "Minh"), (2, "Vu"), (1, "Tuan")] {
//!     pool.submit(Some(id), async move { Ok::<_, String>(x.to_string()) }).await.unwrap();
//! }
//! pool.shutdown().await;
//! let mut ones = Vec::new();
//! while let Some(r) = results.next().await {
//!     if r.key == Some(1) { ones.push(r.outcome.unwrap()); }
//! }
//! assert_eq!(ones, ["Nguyen", "Minh", "Tuan"]);
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use hashbrown::hash_table::{Entry, HashTable};
use rustc_hash::FxBuildHasher;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// Limits of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Jobs running at once (default: the number of CPUs).
    pub workers: usize,
    /// Jobs submitted but whose result has not been taken yet, queued ones included (default
    /// 1024). `submit` waits at this bound.
    pub max_in_flight: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            workers: std::thread::available_parallelism().map_or(4, |n| n.get()),
            max_in_flight: 1024,
        }
    }
}

/// Why a job has no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The job returned an error.
    #[error("job failed: {0}")]
    Failed(String),
    /// The job panicked.
    #[error("job panicked: {0}")]
    Panicked(String),
}

/// The pool no longer takes jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the pool is shut down")]
pub struct PoolClosed;

/// One finished job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobResult<K, T> {
    /// The job's key.
    pub key: Option<K>,
    /// Its submission number, from 0, across all keys.
    pub seq: u64,
    /// Its value or why there is none.
    pub outcome: Result<T, JobError>,
}

type Job<T> = BoxFuture<'static, Result<T, JobError>>;

struct Queued<K, T> {
    seq: u64,
    job: Job<T>,
    permit: OwnedSemaphorePermit,
    _key: std::marker::PhantomData<K>,
}

/// A key with a job running, and the jobs waiting behind it.
type BusyKey<K, T> = (K, VecDeque<Queued<K, T>>);

struct Inner<K, T> {
    config: PoolConfig,
    in_flight: Arc<Semaphore>,
    /// `None` when the in-flight bound already keeps running jobs within the worker limit.
    workers: Option<Arc<Semaphore>>,
    /// The busy keys, each with the jobs waiting for it. A `HashTable` rather than a map: the
    /// key is hashed once per job, outside the lock, and that hash finds the entry again when
    /// the key's job is done (a map hashes and probes twice there: look up, then remove).
    keys: Mutex<HashTable<BusyKey<K, T>>>,
    next_seq: AtomicU64,
    closed: AtomicBool,
    results: mpsc::Sender<JobResult<K, T>>,
}

/// The pool. Cheap to clone; every clone submits to the same workers.
pub struct KeyedPool<K, T> {
    inner: Arc<Inner<K, T>>,
}

impl<K, T> Clone for KeyedPool<K, T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K, T> fmt::Debug for KeyedPool<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedPool")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// The results of a pool's jobs, in completion order. Read it: a result not taken holds its
/// in-flight slot, so an unread stream eventually makes `submit` wait.
pub struct Results<K, T> {
    rx: mpsc::Receiver<JobResult<K, T>>,
}

impl<K, T> Stream for Results<K, T> {
    type Item = JobResult<K, T>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl<K, T> KeyedPool<K, T>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    T: Send + 'static,
{
    /// A pool and the stream of its results.
    pub fn new(config: PoolConfig) -> (Self, Results<K, T>) {
        let config = PoolConfig {
            workers: config.workers.max(1),
            max_in_flight: config.max_in_flight.max(1),
        };
        // Every in-flight job can have its result waiting here: the channel never blocks a
        // worker that holds a permit.
        let (tx, rx) = mpsc::channel(config.max_in_flight);
        let inner = Arc::new(Inner {
            config,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            workers: (config.workers < config.max_in_flight)
                .then(|| Arc::new(Semaphore::new(config.workers))),
            keys: Mutex::new(HashTable::new()),
            next_seq: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            results: tx,
        });
        (Self { inner }, Results { rx })
    }

    /// Submits an async job; waits while `max_in_flight` jobs are in flight. Returns the job's
    /// sequence number.
    pub async fn submit<F, E>(&self, key: Option<K>, job: F) -> Result<u64, PoolClosed>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        E: fmt::Display,
    {
        // Not boxed: a job whose key is free (the common case) runs as its own task's future.
        // A combinator, not an async block: the block would hold the job twice.
        let job = AssertUnwindSafe(job).catch_unwind().map(|r| match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(JobError::Failed(e.to_string())),
            Err(p) => Err(JobError::Panicked(panic_text(p))),
        });
        self.dispatch(key, job).await
    }

    /// Submits a blocking job, run on tokio's blocking pool.
    pub async fn submit_blocking<F, E>(&self, key: Option<K>, job: F) -> Result<u64, PoolClosed>
    where
        F: FnOnce() -> Result<T, E> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let job: Job<T> = Box::pin(async move {
            match tokio::task::spawn_blocking(job).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(JobError::Failed(e.to_string())),
                Err(e) if e.is_panic() => Err(JobError::Panicked(panic_text(e.into_panic()))),
                Err(e) => Err(JobError::Failed(e.to_string())),
            }
        });
        self.dispatch(key, job).await
    }

    async fn dispatch<J>(&self, key: Option<K>, job: J) -> Result<u64, PoolClosed>
    where
        J: Future<Output = Result<T, JobError>> + Send + 'static,
    {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(PoolClosed);
        }
        let permit = self
            .inner
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PoolClosed)?;
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        let inner = self.inner.clone();
        match key {
            None => {
                tokio::spawn(async move { finish(&inner, None, seq, permit, job).await });
            }
            Some(k) => {
                let hash = FxBuildHasher.hash_one(&k);
                let mut keys = self.inner.keys.lock().unwrap_or_else(|p| p.into_inner());
                match keys.entry(
                    hash,
                    |(busy, _)| *busy == k,
                    |(busy, _)| FxBuildHasher.hash_one(busy),
                ) {
                    // The key is busy: the job waits its turn (boxed, to sit in the queue).
                    Entry::Occupied(mut busy) => busy.get_mut().1.push_back(Queued {
                        seq,
                        job: Box::pin(job),
                        permit,
                        _key: std::marker::PhantomData,
                    }),
                    Entry::Vacant(free) => {
                        free.insert((k.clone(), VecDeque::new()));
                        drop(keys);
                        tokio::spawn(run_key(inner, k, hash, seq, permit, job));
                    }
                }
            }
        }
        Ok(seq)
    }

    /// Takes no more jobs and waits until every submitted job has finished and its result is
    /// on the stream; the stream ends once read to the end.
    pub async fn shutdown(self) {
        self.inner.closed.store(true, Ordering::Release);
        let all = u32::try_from(self.inner.config.max_in_flight).unwrap_or(u32::MAX);
        // Every in-flight job holds a permit until its result is handed over.
        if let Ok(p) = self.inner.in_flight.acquire_many(all).await {
            p.forget();
        }
        self.inner.in_flight.close();
    }
}

/// Runs one job (waiting for a worker when workers < max_in_flight) and reports it.
///
/// Every job's task holds this future and tokio copies it into the task's allocation, so it is
/// kept small (callgrind: copying a 864-byte task future was the pool's largest cost, against
/// 240 bytes for a plain spawned job): waiting for a worker, which only a pool with fewer
/// workers than `max_in_flight` does, is boxed on the path that needs it.
async fn finish<K, T, J>(
    inner: &Inner<K, T>,
    key: Option<K>,
    seq: u64,
    permit: OwnedSemaphorePermit,
    job: J,
) where
    J: Future<Output = Result<T, JobError>>,
{
    let outcome = match &inner.workers {
        None => job.await,
        Some(workers) => match workers.try_acquire() {
            Ok(_worker) => job.await,
            Err(TryAcquireError::NoPermits) => match Box::pin(workers.acquire()).await {
                Ok(_worker) => job.await,
                Err(_) => Err(JobError::Failed("pool closed".into())),
            },
            Err(TryAcquireError::Closed) => Err(JobError::Failed("pool closed".into())),
        },
    };
    let _ = inner.results.send(JobResult { key, seq, outcome }).await;
    drop(permit);
}

/// Runs a free key's job, then the jobs that queued behind it one by one, then frees the key.
async fn run_key<K, T, J>(
    inner: Arc<Inner<K, T>>,
    key: K,
    hash: u64,
    seq: u64,
    permit: OwnedSemaphorePermit,
    job: J,
) where
    K: Eq + Clone,
    J: Future<Output = Result<T, JobError>>,
{
    finish(&inner, Some(key.clone()), seq, permit, job).await;
    loop {
        let next = {
            let mut keys = inner.keys.lock().unwrap_or_else(|p| p.into_inner());
            match keys.find_entry(hash, |(busy, _)| *busy == key) {
                Ok(mut busy) => {
                    let next = busy.get_mut().1.pop_front();
                    if next.is_none() {
                        busy.remove();
                    }
                    next
                }
                Err(_) => None,
            }
        };
        let Some(q) = next else { return };
        finish(&inner, Some(key.clone()), q.seq, q.permit, q.job).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::time::Duration;

    #[tokio::test]
    async fn failures_and_panics_are_reported_and_the_key_goes_on() {
        let (pool, mut results) = KeyedPool::<&str, u32>::new(PoolConfig {
            workers: 2,
            max_in_flight: 8,
        });
        pool.submit(Some("k"), async { Err::<u32, _>("no stock") })
            .await
            .unwrap();
        pool.submit(Some("k"), async { panic!("boom") as Result<u32, String> })
            .await
            .unwrap();
        pool.submit_blocking(Some("k"), || Ok::<_, String>(3))
            .await
            .unwrap();
        pool.submit_blocking(None, || -> Result<u32, String> { panic!("blocking boom") })
            .await
            .unwrap();
        pool.shutdown().await;
        let mut got = Vec::new();
        while let Some(r) = results.next().await {
            got.push((r.seq, r.outcome));
        }
        got.sort_by_key(|(s, _)| *s);
        assert_eq!(got[0].1, Err(JobError::Failed("no stock".into())));
        assert_eq!(got[1].1, Err(JobError::Panicked("boom".into())));
        assert_eq!(got[2].1, Ok(3));
        assert_eq!(got[3].1, Err(JobError::Panicked("blocking boom".into())));
    }

    #[tokio::test]
    async fn submit_waits_at_the_bound() {
        let (pool, mut results) = KeyedPool::<u8, ()>::new(PoolConfig {
            workers: 4,
            max_in_flight: 2,
        });
        let gate = Arc::new(tokio::sync::Notify::new());
        for _ in 0..2 {
            let g = gate.clone();
            pool.submit(None, async move {
                g.notified().await;
                Ok::<_, String>(())
            })
            .await
            .unwrap();
        }
        let third = pool.submit(None, async { Ok::<_, String>(()) });
        assert!(
            tokio::time::timeout(Duration::from_millis(200), third)
                .await
                .is_err(),
            "a third job was taken past the bound"
        );
        gate.notify_waiters();
        // The two finish, but their results still hold their slots until read.
        assert!(results.next().await.is_some());
        tokio::time::timeout(
            Duration::from_secs(5),
            pool.submit(None, async { Ok::<_, String>(()) }),
        )
        .await
        .expect("a slot freed up")
        .unwrap();
    }

    #[tokio::test]
    async fn a_shut_down_pool_refuses_jobs() {
        let (pool, _results) = KeyedPool::<u8, ()>::new(PoolConfig::default());
        let other = pool.clone();
        pool.shutdown().await;
        assert_eq!(
            other.submit(None, async { Ok::<_, String>(()) }).await,
            Err(PoolClosed)
        );
    }
}
