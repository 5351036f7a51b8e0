//! Effectively once, end to end, with crashes: 10,000 events written through the PostgreSQL
//! outbox, relayed to NATS by `yard outbox relay` processes SIGKILLed at random moments,
//! consumed into a state table through the transactional inbox. Every event must be applied
//! exactly once. Needs PostgreSQL and NATS on 127.0.0.1.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{inbox_state_consumer, Running, YARD};
use switchyard::store::outbox::PgOutbox;
use switchyard::store::PgInbox;
use switchyard::testkit::require_server;
use switchyard::Envelope;

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const EVENTS: i64 = 10_000;

/// A pseudo-random pause from the clock: no extra dependency for a test.
fn jitter(max_ms: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_millis(50 + u64::from(nanos) % max_ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_killed_at_random_lose_and_duplicate_nothing() {
    let test = "outbox_crash";
    if !require_server(test, "PostgreSQL", "127.0.0.1:5432")
        || !require_server(test, "NATS", "127.0.0.1:4222")
    {
        return;
    }
    let run = &switchyard::message::new_id()[..8];
    let (outbox_table, inbox_table, state_table) = (
        format!("crash_outbox_{run}"),
        format!("crash_inbox_{run}"),
        format!("crash_state_{run}"),
    );
    let topic = format!("crash.{run}");
    let nats = format!("nats://127.0.0.1:4222/crash{run}?ack_wait_ms=3000");

    let outbox = PgOutbox::connect(PG, &outbox_table).await.unwrap();
    let inbox = Arc::new(PgInbox::connect(PG, &inbox_table).await.unwrap());
    let pool = outbox.pool().clone();
    sqlx::query(&format!(
        "CREATE TABLE {state_table} (k BIGINT PRIMARY KEY, applied INT NOT NULL)"
    ))
    .execute(&pool)
    .await
    .unwrap();

    // The consumer: each event's effect and its inbox record commit together.
    let service = inbox_state_consumer(
        &format!("crash-consumer-{run}"),
        &topic,
        pool.clone(),
        inbox.clone(),
        state_table.clone(),
    );
    let consumer = switchyard::serve(&switchyard::connect(&nats).unwrap(), service)
        .await
        .unwrap();

    // The producer: events written in transactions of 200.
    for batch in 0..EVENTS / 200 {
        let mut tx = pool.begin().await.unwrap();
        for k in batch * 200..(batch + 1) * 200 {
            outbox
                .enqueue_in(
                    &mut tx,
                    &Envelope::new(topic.as_str(), format!(r#"{{"k":{k}}}"#)),
                )
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }

    // Relays that die at random moments, until the outbox is empty.
    let relay_args = [
        "outbox",
        "relay",
        "--database",
        PG,
        "--table",
        &outbox_table,
        "--to",
        &nats,
    ];
    let started = Instant::now();
    let mut kills = 0;
    while outbox.pending().await.unwrap() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the outbox never drained"
        );
        let child = std::process::Command::new(YARD)
            .args(relay_args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn relay");
        let mut relay = Running(child);
        tokio::time::sleep(jitter(400)).await;
        relay.0.kill().expect("SIGKILL");
        let _ = relay.0.wait();
        kills += 1;
    }
    assert!(kills >= 2, "the relay was never killed mid-run ({kills})");

    // Every event applied exactly once.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (n,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM {state_table}"))
            .fetch_one(&pool)
            .await
            .unwrap();
        if n == EVENTS || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    consumer.shutdown().await;
    let (n, max, min): (i64, Option<i32>, Option<i32>) = sqlx::query_as(&format!(
        "SELECT count(*), max(applied), min(applied) FROM {state_table}"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(n, EVENTS, "events lost");
    assert_eq!(
        (min, max),
        (Some(1), Some(1)),
        "an event was applied more than once"
    );
    for t in [&outbox_table, &inbox_table, &state_table] {
        let _ = sqlx::query(&format!("DROP TABLE {t}")).execute(&pool).await;
    }
}
