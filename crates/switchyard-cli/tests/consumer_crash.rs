//! Consumers SIGKILLed at random while they work, on each durable broker (RabbitMQ, NATS
//! JetStream, Redis Streams, Kafka): 10,000 events, two competing consumer processes at a
//! time, one of them killed at random moments and replaced, each event applied to a state
//! table through the transactional inbox (PostgreSQL). What a killed consumer held
//! unacknowledged must go to another one (the broker's redelivery: at once on RabbitMQ, after
//! the ack wait on NATS, by `XAUTOCLAIM` on Redis, after the group rebalances on Kafka), and
//! what it applied but never acknowledged must not be applied twice (the inbox). Every event
//! must end up applied exactly once. Needs PostgreSQL and the broker on 127.0.0.1.
//!
//! The consumer processes are this test binary run again for `consumer_child` (ignored, so
//! that it never runs on its own).

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{inbox_state_consumer, Running};
use futures::StreamExt;
use switchyard::store::PgInbox;
use switchyard::testkit::require_server;
use switchyard::transport::SubscribeOptions;
use switchyard::Envelope;

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const EVENTS: i64 = 10_000;
const CHILD_ENV: &str = "SY_CONSUMER_CRASH_CHILD";

fn jitter(min_ms: u64, spread_ms: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_millis(min_ms + u64::from(nanos) % spread_ms)
}

/// (transport URL, topic, service name, inbox table, state table) of one run on `transport`.
fn settings(transport: &str, run: &str) -> (String, String, String, String, String) {
    let url = match transport {
        "amqp" => format!("amqp://127.0.0.1:5672/%2f?ns=kill{run}&queue_expires_ms=120000"),
        // What a killed consumer held comes back after the ack wait / the idle time.
        "nats" => format!("nats://127.0.0.1:4222/kill{run}?ack_wait_ms=2000"),
        "redis" => format!("redis://127.0.0.1:6379?ns=kill{run}&claim_idle_ms=2000"),
        "kafka" => "kafka://127.0.0.1:9092".to_string(),
        other => panic!("no crash settings for {other}"),
    };
    (
        url,
        format!("kill.{run}"),
        format!("kill-consumer-{run}"),
        format!("kill_inbox_{run}"),
        format!("kill_state_{run}"),
    )
}

/// The consumer process's body; `consumers_killed_at_random_lose_and_duplicate_nothing` starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of consumers_killed_at_random_lose_and_duplicate_nothing"]
async fn consumer_child() {
    let child = std::env::var(CHILD_ENV)
        .expect("run by its parent test, which sets SY_CONSUMER_CRASH_CHILD");
    let (transport, run) = child.split_once(':').expect("TRANSPORT:RUN");
    let (url, topic, name, inbox_table, state_table) = settings(transport, run);
    let inbox = Arc::new(PgInbox::connect(PG, &inbox_table).await.expect("inbox"));
    let pool = pool().await;
    let service = inbox_state_consumer(&name, &topic, pool, inbox, state_table);
    let _server = switchyard::serve(&switchyard::connect(&url).expect("url"), service)
        .await
        .expect("serve");
    println!("consuming");
    std::future::pending::<()>().await;
}

async fn pool() -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(PG)
        .await
        .expect("PostgreSQL")
}

fn spawn_consumer(transport: &str, run: &str) -> Running {
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "consumer_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{transport}:{run}"))
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn consumer");
    Running(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_killed_at_random_lose_and_duplicate_nothing() {
    killed_at_random("amqp", "RabbitMQ", "127.0.0.1:5672", (50, 400), 180).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_consumers_killed_at_random_lose_and_duplicate_nothing() {
    killed_at_random("nats", "NATS", "127.0.0.1:4222", (50, 400), 180).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_consumers_killed_at_random_lose_and_duplicate_nothing() {
    killed_at_random("redis", "Redis", "127.0.0.1:6379", (50, 400), 180).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_consumers_killed_at_random_lose_and_duplicate_nothing() {
    // A killed member's partitions wait for its session to time out (6 s), and every join
    // stops the whole group for a rebalance: kills further apart (at 1.5–4 s the group spent
    // up to 3 minutes rebalancing), and more time.
    killed_at_random(
        "kafka",
        "Kafka (Tansu)",
        "127.0.0.1:9092",
        (3000, 3000),
        300,
    )
    .await;
}

/// Runs the crash test on `transport`, killing a consumer every `kill_every` (min, spread) ms,
/// failing when the events are not all applied within `limit_s` seconds.
async fn killed_at_random(
    transport: &str,
    server: &str,
    addr: &str,
    kill_every: (u64, u64),
    limit_s: u64,
) {
    let test = format!("consumer_crash_{transport}");
    if !require_server(&test, "PostgreSQL", "127.0.0.1:5432")
        || !require_server(&test, server, addr)
    {
        return;
    }
    let run = switchyard::message::new_id()[..8].to_string();
    let (url, topic, name, inbox_table, state_table) = settings(transport, &run);
    let inbox = PgInbox::connect(PG, &inbox_table).await.unwrap();
    let pool = pool().await;
    sqlx::query(&format!(
        "CREATE TABLE {state_table} (k BIGINT PRIMARY KEY, applied INT NOT NULL)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    drop(inbox);

    // The group exists before the first event is published (AMQP routes only to queues that
    // exist).
    let publisher = switchyard::connect(&url).unwrap();
    drop(
        publisher
            .subscribe(&topic, SubscribeOptions::group(name.as_str()))
            .await
            .unwrap(),
    );
    futures::stream::iter(0..EVENTS)
        .for_each_concurrent(64, |k| {
            let (t, topic) = (publisher.clone(), topic.clone());
            async move {
                t.publish(Envelope::new(topic.as_str(), format!(r#"{{"k":{k}}}"#)))
                    .await
                    .expect("publish");
            }
        })
        .await;

    let applied = |pool: sqlx::PgPool, state: String| async move {
        let (n,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM {state}"))
            .fetch_one(&pool)
            .await
            .unwrap();
        n
    };
    let mut consumers = vec![
        spawn_consumer(transport, &run),
        spawn_consumer(transport, &run),
    ];
    let started = Instant::now();
    let mut kills = 0;
    let mut turn = 0usize;
    while applied(pool.clone(), state_table.clone()).await < EVENTS {
        assert!(
            started.elapsed() < Duration::from_secs(limit_s),
            "{transport}: consumers never got through the queue ({} applied)",
            applied(pool.clone(), state_table.clone()).await
        );
        tokio::time::sleep(jitter(kill_every.0, kill_every.1)).await;
        // Kill one of the two, mid-work, and start a replacement.
        let victim = &mut consumers[turn % 2];
        victim.0.kill().expect("SIGKILL");
        let _ = victim.0.wait();
        kills += 1;
        consumers[turn % 2] = spawn_consumer(transport, &run);
        turn += 1;
    }
    drop(consumers);
    assert!(
        kills >= 2,
        "{transport}: too few consumers killed mid-run ({kills})"
    );

    let (n, max, min): (i64, Option<i32>, Option<i32>) = sqlx::query_as(&format!(
        "SELECT count(*), max(applied), min(applied) FROM {state_table}"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(n, EVENTS, "{transport}: events lost");
    assert_eq!(
        (min, max),
        (Some(1), Some(1)),
        "{transport}: an event was applied more than once"
    );
    eprintln!(
        "consumer_crash {transport}: {kills} consumers killed, {EVENTS} events applied exactly once"
    );
    for t in [&inbox_table, &state_table] {
        let _ = sqlx::query(&format!("DROP TABLE {t}")).execute(&pool).await;
    }
}
