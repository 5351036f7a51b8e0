//! The keyed pool across worker processes: three worker processes (this test binary run again
//! for `shard_worker`) serve `/apply` over HTTP; 3,000 jobs over 60 keys go through a
//! `ShardedPool`. Each key must run in the one process its stable hash names, never twice at
//! once, and in submission order; keys must spread over the processes.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, Running};
use futures::StreamExt;
use switchyard::pool::PoolConfig;
use switchyard::shards::{shard_of, ShardedPool};
use switchyard::{rpc, Client, HandlerError, Service};

const CHILD_ENV: &str = "SY_SHARD_WORKER";

/// Per key: the last number applied, and the keys running now.
type WorkerState = (HashMap<String, u64>, HashSet<String>);

/// A worker process's body (`INDEX:PORT` in `SY_SHARD_WORKER`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of keys_stay_on_their_process_in_order"]
async fn shard_worker() {
    let spec =
        std::env::var(CHILD_ENV).expect("run by its parent test, which sets SY_SHARD_WORKER");
    let (index, port) = spec.split_once(':').expect("INDEX:PORT");
    let index: u64 = index.parse().expect("index");
    let state: Arc<Mutex<WorkerState>> = Arc::default();
    let service = Service::new("shard-worker").route(
        "/apply",
        rpc(move |key: String, n: u64| {
            let state = state.clone();
            async move {
                {
                    let mut s = state.lock().unwrap();
                    if !s.1.insert(key.clone()) {
                        return Err(HandlerError::internal(format!("{key}: two jobs at once")));
                    }
                    if let Some(last) = s.0.get(&key).copied() {
                        if n <= last {
                            s.1.remove(&key);
                            return Err(HandlerError::internal(format!("{key}: {n} after {last}")));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_micros(n * 7919 % 2000)).await;
                let mut s = state.lock().unwrap();
                s.1.remove(&key);
                s.0.insert(key, n);
                Ok::<_, HandlerError>((index, std::process::id()))
            }
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let _server = switchyard::serve(&switchyard::connect(&url).expect("url"), service)
        .await
        .expect("serve");
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_stay_on_their_process_in_order() {
    let workers = 3;
    let mut children = Vec::new();
    let mut clients = Vec::new();
    for i in 0..workers {
        let port = free_port();
        let child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "shard_worker",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{i}:{port}"))
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn worker");
        children.push(Running(child));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "worker {i} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        clients.push(Client::new(
            switchyard::connect(&format!("http://127.0.0.1:{port}")).expect("url"),
        ));
    }
    let (pool, results) = ShardedPool::new(
        clients,
        PoolConfig {
            workers: 64,
            max_in_flight: 64,
        },
    )
    .expect("pool");
    let reader = tokio::spawn(results.collect::<Vec<_>>());
    let (keys, per_key) = (60u64, 50u64);
    for n in 1..=per_key {
        for k in 0..keys {
            pool.submit(Some(format!("key-{k}")), "/apply", (format!("key-{k}"), n))
                .await
                .expect("submit");
        }
    }
    pool.shutdown().await;
    let results = reader.await.expect("reader");
    assert_eq!(results.len() as u64, keys * per_key, "jobs lost");

    let mut pids: HashMap<String, HashSet<u32>> = HashMap::new();
    let mut used = HashSet::new();
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    for r in &results {
        let key = r.key.clone().expect("keyed");
        let (index, pid): (usize, u32) =
            serde_json::from_value(r.outcome.clone().unwrap_or_else(|e| panic!("{key}: {e}")))
                .expect("(index, pid)");
        assert_eq!(
            index,
            shard_of(&key, workers),
            "{key} ran on the wrong worker"
        );
        pids.entry(key.clone()).or_default().insert(pid);
        used.insert(index);
        seqs.entry(key).or_default().push(r.seq);
    }
    for (key, p) in &pids {
        assert_eq!(p.len(), 1, "{key} ran in {} processes", p.len());
    }
    for (key, s) in &seqs {
        assert!(
            s.windows(2).all(|w| w[0] < w[1]),
            "{key} finished out of submission order"
        );
    }
    assert_eq!(used.len(), workers, "keys did not spread over the workers");
}
