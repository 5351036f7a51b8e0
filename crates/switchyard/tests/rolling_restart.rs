//! A rolling restart under load fails no call: three instances of a service over HTTP, found
//! through a registry, restarted one after the other while four callers keep calling; each
//! stopping instance deregisters, keeps serving while callers learn it is gone, then drains.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use switchyard::registry::{self, Registered, Registry};
use switchyard::{rpc, Client, Service};

async fn start(registry: &Arc<dyn Registry>, generation: usize) -> Registered {
    let service = Service::new("books").route(
        "/gen",
        rpc(move || async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            generation
        }),
    );
    registry::serve(
        switchyard::connect("http://127.0.0.1:0").expect("http"),
        service,
        registry.clone(),
        Duration::from_secs(5),
    )
    .await
    .expect("serve")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_fails_no_call() {
    let id = &switchyard::message::new_id()[..8];
    let registry = registry::connect(&format!("mem://rolling{id}")).expect("registry");
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(start(&registry, 1).await);
    }
    let client = Client::new(switchyard::discover(registry.clone()))
        .service("books")
        .with_timeout(Duration::from_secs(5));
    let (stop, ok, failed, new) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (client, stop, ok, failed, new) = (
                client.clone(),
                stop.clone(),
                ok.clone(),
                failed.clone(),
                new.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match client.call::<_, usize>("/gen", ()).await {
                        Ok(generation) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if generation == 2 {
                                new.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            eprintln!("failed: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        // One at a time: stop the oldest, start its replacement.
        let old = instances.remove(0);
        old.shutdown().await.expect("shutdown");
        instances.push(start(&registry, 2).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.await.expect("caller");
    }
    let (ok, failed, new) = (
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        new.load(Ordering::Relaxed),
    );
    assert_eq!(failed, 0, "{failed} of {} calls failed", ok + failed);
    assert!(ok > 500, "the callers kept calling: {ok}");
    assert!(new > 0, "the replacements took calls");
    for i in instances {
        i.shutdown().await.expect("shutdown");
    }
}
