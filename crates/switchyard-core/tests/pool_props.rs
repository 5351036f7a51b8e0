//! Property tests of the keyed pool: for random jobs, keys, worker counts, bounds, failures and
//! panics, each key's jobs start in submission order and never two at once, and every job is
//! reported exactly once with the right outcome.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use proptest::prelude::*;
use switchyard_core::pool::{JobError, KeyedPool, PoolConfig};

#[derive(Debug, Clone)]
struct Spec {
    key: Option<u8>,
    micros: u64,
    fate: u8, // 0..8 ok, 8 fails, 9 panics
}

fn spec() -> impl Strategy<Value = Spec> {
    (prop::option::weighted(0.8, 0u8..6), 0u64..400, 0u8..10).prop_map(|(key, micros, fate)| Spec {
        key,
        micros,
        fate,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn per_key_order_and_exclusion_hold(jobs in prop::collection::vec(spec(), 1..150), workers in 1usize..5, bound in 1usize..40) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let (pool, mut results) = KeyedPool::<u8, usize>::new(PoolConfig { workers, max_in_flight: bound });
            let running: Arc<HashMap<u8, AtomicBool>> = Arc::new((0..6).map(|k| (k, AtomicBool::new(false))).collect());
            let started: Arc<Mutex<HashMap<u8, Vec<usize>>>> = Arc::default();
            let overlaps = Arc::new(Mutex::new(Vec::new()));
            // Read results while submitting: the bound makes `submit` wait for them.
            let reader = tokio::spawn(async move {
                let mut all = Vec::new();
                while let Some(r) = results.next().await {
                    all.push(r);
                }
                all
            });
            for (i, s) in jobs.iter().cloned().enumerate() {
                let (running, started, overlaps) = (running.clone(), started.clone(), overlaps.clone());
                pool.submit(s.key, async move {
                    if let Some(k) = s.key {
                        if running[&k].swap(true, Ordering::SeqCst) {
                            overlaps.lock().unwrap().push((k, i));
                        }
                        started.lock().unwrap().entry(k).or_default().push(i);
                    }
                    tokio::time::sleep(Duration::from_micros(s.micros)).await;
                    if let Some(k) = s.key {
                        running[&k].store(false, Ordering::SeqCst);
                    }
                    match s.fate {
                        8 => Err(format!("job {i} failed")),
                        9 => panic!("job {i} panicked"),
                        _ => Ok(i),
                    }
                })
                .await
                .unwrap();
            }
            pool.shutdown().await;
            let all = reader.await.unwrap();
            assert!(overlaps.lock().unwrap().is_empty(), "a key ran twice at once: {:?}", overlaps.lock().unwrap());
            for (k, order) in started.lock().unwrap().iter() {
                let submitted: Vec<usize> = jobs.iter().enumerate().filter(|(_, s)| s.key == Some(*k)).map(|(i, _)| i).collect();
                assert_eq!(order, &submitted, "key {k} started out of order");
            }
            assert_eq!(all.len(), jobs.len(), "every job reported once");
            let mut seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
            seqs.sort_unstable();
            assert_eq!(seqs, (0..jobs.len() as u64).collect::<Vec<_>>());
            for r in &all {
                let i = r.seq as usize;
                let expected = match jobs[i].fate {
                    8 => Err(JobError::Failed(format!("job {i} failed"))),
                    9 => Err(JobError::Panicked(format!("job {i} panicked"))),
                    _ => Ok(i),
                };
                assert_eq!(r.outcome, expected);
                assert_eq!(r.key, jobs[i].key);
            }
        });
    }
}
