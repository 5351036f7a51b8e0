//! The keyed pool with 10,000 distinct keys against a plain unordered tokio task pool doing
//! the same jobs (spawn, bounded by a semaphore, results on a channel), and against one
//! ordered worker. Alternating rounds, median; once with the jobs submitted from a task on the
//! runtime, once from outside it.
//!
//! `cargo bench --bench pool`

mod common;

use common::median;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard::pool::{KeyedPool, PoolConfig};
use tokio::sync::{mpsc, Semaphore};

const JOBS: u64 = 200_000;
const KEYS: u64 = 10_000;
const IN_FLIGHT: usize = 1024;
const ROUNDS: usize = 7;

/// A small job with a yield, so that it is a real task switch and not just a function call.
async fn job(i: u64) -> Result<u64, String> {
    tokio::task::yield_now().await;
    Ok(black_box(i.wrapping_mul(2654435761)))
}

async fn keyed() -> Duration {
    let (pool, results) = KeyedPool::<u64, u64>::new(PoolConfig {
        workers: IN_FLIGHT,
        max_in_flight: IN_FLIGHT,
    });
    let reader = tokio::spawn(results.fold(0u64, |n, _| async move { n + 1 }));
    let start = Instant::now();
    for i in 0..JOBS {
        pool.submit(Some(i % KEYS), job(i)).await.expect("submit");
    }
    pool.shutdown().await;
    assert_eq!(reader.await.expect("reader"), JOBS);
    start.elapsed()
}

async fn plain() -> Duration {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let (tx, mut rx) = mpsc::channel::<Result<u64, String>>(IN_FLIGHT);
    let reader = tokio::spawn(async move {
        let mut n = 0u64;
        while rx.recv().await.is_some() {
            n += 1;
        }
        n
    });
    let start = Instant::now();
    for i in 0..JOBS {
        let permit = permits.clone().acquire_owned().await.expect("permit");
        let tx = tx.clone();
        tokio::spawn(async move {
            let r = job(i).await;
            let _ = tx.send(r).await;
            drop(permit);
        });
    }
    drop(tx);
    assert_eq!(reader.await.expect("reader"), JOBS);
    start.elapsed()
}

async fn single_worker() -> Duration {
    let (tx, mut rx) = mpsc::channel::<u64>(IN_FLIGHT);
    let worker = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(i) = rx.recv().await {
            let _ = job(i).await;
            n += 1;
        }
        n
    });
    let start = Instant::now();
    for i in 0..JOBS {
        tx.send(i).await.expect("send");
    }
    drop(tx);
    assert_eq!(worker.await.expect("worker"), JOBS);
    start.elapsed()
}

/// Alternating rounds of the three; prints each one's median rate and the keyed pool's median
/// ratio to the plain pool.
async fn rounds(how: &str) {
    let (mut k, mut p, mut s, mut vs_plain) = (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        let kt = JOBS as f64 / keyed().await.as_secs_f64();
        let pt = JOBS as f64 / plain().await.as_secs_f64();
        let st = JOBS as f64 / single_worker().await.as_secs_f64();
        vs_plain.push(kt / pt);
        k.push(kt);
        p.push(pt);
        s.push(st);
    }
    println!("{JOBS} jobs over {KEYS} keys, {IN_FLIGHT} in flight, submitted {how} (median of {ROUNDS} rounds):");
    println!(
        "  plain unordered tokio pool (baseline) {:>10.0} jobs/s",
        median(p)
    );
    println!(
        "  switchyard KeyedPool                  {:>10.0} jobs/s  ({:.2}x of plain)",
        median(k),
        median(vs_plain)
    );
    println!(
        "  one ordered worker                    {:>10.0} jobs/s",
        median(s)
    );
}

fn main() {
    // `BENCH_ONLY=keyed|plain`: one round of one side on a one-thread runtime, for counting
    // instructions under `valgrind --tool=callgrind` (repeatable where timings are not).
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        let one = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let took = one.block_on(async {
            match only.as_str() {
                "keyed" => keyed().await,
                _ => plain().await,
            }
        });
        println!("{only}: {took:?}");
        return;
    }
    let runtime = common::runtime();
    // As a service submits work: from a task on the runtime (a handler, a consumer).
    runtime.block_on(async {
        tokio::spawn(rounds("from a task on the runtime"))
            .await
            .expect("rounds")
    });
    // From a thread outside the runtime's two workers, so three threads share two cores:
    // every submit wakes a worker from outside, and the key table's lock is shared by three.
    runtime.block_on(rounds("from outside the runtime (block_on)"));
}
