//! The outbox against the real PostgreSQL: events leave only with their transaction, in order,
//! and a relay that fails publishes nothing twice it marked sent.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use switchyard_core::mem::MemTransport;
use switchyard_core::testkit::require_server;
use switchyard_core::transport::{SubscribeOptions, Subscriber};
use switchyard_core::Envelope;
use switchyard_store::outbox::PgOutbox;

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

#[tokio::test]
async fn events_leave_with_their_transaction_and_in_order() {
    if !require_server("outbox", "PostgreSQL", "127.0.0.1:5432") {
        return;
    }
    let table = format!("outbox_test_{}", &switchyard_core::message::new_id()[..8]);
    let outbox = PgOutbox::connect(PG, &table).await.unwrap();
    let bus = Arc::new(MemTransport::new(&table));
    let mut sub = bus
        .subscribe("orders", SubscribeOptions::group("g"))
        .await
        .unwrap();

    // Rolled back: never published.
    let mut tx = outbox.pool().begin().await.unwrap();
    outbox
        .enqueue_in(&mut tx, &Envelope::new("orders", r#"{"n":-1}"#))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    // Committed: published, in order.
    for n in 0..50 {
        let mut tx = outbox.pool().begin().await.unwrap();
        outbox
            .enqueue_in(&mut tx, &Envelope::new("orders", format!(r#"{{"n":{n}}}"#)))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(outbox.pending().await.unwrap(), 50);
    let relay = outbox.relay(bus.clone()).await.unwrap();
    for n in 0..50 {
        let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&d.envelope.payload).unwrap();
        assert_eq!(v["n"], n, "out of order");
        d.ack().await.unwrap();
    }
    // A commit after the relay started wakes it (NOTIFY), well before its 5 s safety timer.
    let mut tx = outbox.pool().begin().await.unwrap();
    outbox
        .enqueue_in(&mut tx, &Envelope::new("orders", r#"{"n":50}"#))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(2), sub.next())
        .await
        .expect("woken by NOTIFY")
        .unwrap()
        .unwrap();
    d.ack().await.unwrap();
    let stats = relay.stop().await;
    assert_eq!(stats.sent, 51);
    assert_eq!(outbox.pending().await.unwrap(), 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "the rolled-back event leaked"
    );
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(outbox.pool())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_failed_publish_keeps_the_event_for_the_next_batch() {
    if !require_server("outbox", "PostgreSQL", "127.0.0.1:5432") {
        return;
    }
    let table = format!("outbox_test_{}", &switchyard_core::message::new_id()[..8]);
    let outbox = PgOutbox::connect(PG, &table).await.unwrap();
    let mut tx = outbox.pool().begin().await.unwrap();
    outbox
        .enqueue_in(&mut tx, &Envelope::new("big", vec![b'x'; 2 * 1024 * 1024]))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // The in-process transport refuses messages over 1 MiB: the publish fails.
    let bus = MemTransport::new(&table);
    assert_eq!(outbox.relay_once(&bus, 10).await.unwrap(), 0);
    assert_eq!(
        outbox.pending().await.unwrap(),
        1,
        "an unpublished event was marked sent"
    );
    let roomy = MemTransport::new(&table).max_message(4 * 1024 * 1024);
    assert_eq!(outbox.relay_once(&roomy, 10).await.unwrap(), 1);
    assert_eq!(outbox.pending().await.unwrap(), 0);
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(outbox.pool())
        .await
        .unwrap();
}
