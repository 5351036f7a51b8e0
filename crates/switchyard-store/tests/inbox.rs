//! Every inbox store keeps the same contract, against the real Redis and PostgreSQL on this
//! machine; and a consumer with an inbox processes a message delivered several times once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use switchyard_core::consumer::ConsumerPolicy;
use switchyard_core::inbox::{Claim, InboxStore, MemoryInbox};
use switchyard_core::mem::MemTransport;
use switchyard_core::testkit::require_server;
use switchyard_core::transport::Publisher;
use switchyard_core::{Envelope, Service};
use switchyard_store::{PgInbox, RedisInbox};

const REDIS: &str = "redis://127.0.0.1:6379";
const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &switchyard_core::message::new_id()[..8])
}

async fn contract(store: Arc<dyn InboxStore>) {
    let id = unique("m-");
    let lease = Duration::from_secs(30);
    assert_eq!(store.claim(&id, lease).await.unwrap(), Claim::Fresh);
    assert_eq!(store.claim(&id, lease).await.unwrap(), Claim::InProgress);
    store.release(&id).await.unwrap();
    assert_eq!(
        store.claim(&id, lease).await.unwrap(),
        Claim::Fresh,
        "a released claim runs again"
    );
    store.done(&id).await.unwrap();
    assert_eq!(store.claim(&id, lease).await.unwrap(), Claim::Done);
    store.release(&id).await.unwrap();
    assert_eq!(
        store.claim(&id, lease).await.unwrap(),
        Claim::Done,
        "release never undoes done"
    );
    // A dead consumer's claim runs out.
    let dead = unique("d-");
    assert_eq!(
        store
            .claim(&dead, Duration::from_millis(300))
            .await
            .unwrap(),
        Claim::Fresh
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(store.claim(&dead, lease).await.unwrap(), Claim::Fresh);
    // Racing claims: exactly one wins.
    let race = unique("r-");
    let claims = futures::future::join_all((0..20).map(|_| store.claim(&race, lease))).await;
    let fresh = claims
        .into_iter()
        .filter(|c| matches!(c, Ok(Claim::Fresh)))
        .count();
    assert_eq!(fresh, 1, "{fresh} consumers won the same message");
}

async fn effectively_once(store: Arc<dyn InboxStore>) {
    let bus = MemTransport::new(&unique("inbox-"));
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let service = Service::new("once")
        .consumer_policy(ConsumerPolicy {
            inbox: Some(store),
            ..ConsumerPolicy::default()
        })
        .on_event("orders", move |_v: serde_json::Value| {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
            }
        });
    let server = switchyard_core::server::serve(Arc::new(bus.clone()), service)
        .await
        .unwrap();
    let first = Envelope::new("orders", r#"{"n":1}"#);
    for _ in 0..5 {
        // The same message, redelivered or published twice: same id.
        bus.publish(first.clone()).await.unwrap();
    }
    bus.publish(Envelope::new("orders", r#"{"n":2}"#))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.shutdown().await;
    assert_eq!(
        handled.load(Ordering::SeqCst),
        2,
        "six deliveries of two messages"
    );
}

#[tokio::test]
async fn memory_store() {
    let store = Arc::new(MemoryInbox::new(100_000, Duration::from_secs(3600)));
    contract(store.clone()).await;
    effectively_once(store).await;
}

#[tokio::test]
async fn redis_store() {
    if !require_server("redis_store", "Redis", "127.0.0.1:6379") {
        return;
    }
    let store = Arc::new(
        RedisInbox::connect(REDIS, &unique("sy:test:inbox:"), Duration::from_secs(600))
            .await
            .unwrap(),
    );
    contract(store.clone()).await;
    effectively_once(store).await;
}

#[tokio::test]
async fn postgres_store() {
    if !require_server("postgres_store", "PostgreSQL", "127.0.0.1:5432") {
        return;
    }
    let store = Arc::new(PgInbox::connect(PG, "switchyard_store_test").await.unwrap());
    contract(store.clone()).await;
    effectively_once(store.clone()).await;
    assert!(PgInbox::connect(PG, "bad name; drop table x")
        .await
        .is_err());
}
