//! The bookshelf end to end on each log (Kafka, JetStream, Redis Streams): the five services
//! registered while they run and gone after, the gateway's API, views that answer the same
//! after a restart (replaying the log, or from their snapshot), and raw lines pushed onto the
//! Kafka topic by a plain client folded when they are events and dead-lettered when not.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard::testkit::require_server;
use switchyard_bookshelf::{start, Options, Running, Which};

fn options(broker: &str, registry: &str, topic: &str) -> Options {
    let mut o = Options::new(broker, registry);
    o.topic = topic.to_string();
    o.registry_ttl = Duration::from_secs(5);
    o.wait_for_peers = Duration::from_secs(30);
    o
}

async fn start_all(o: &Options) -> Vec<Running> {
    let mut running = Vec::new();
    for which in Which::ALL {
        running.push(start(which, o.clone()).await.expect("start"));
    }
    running
}

async fn stop_all(running: Vec<Running>) {
    for r in running.into_iter().rev() {
        r.stop().await.expect("stop");
    }
}

fn url_of(running: &[Running], which: Which) -> String {
    running
        .iter()
        .find(|r| r.which() == which)
        .map(|r| r.url().to_string())
        .expect("running")
}

/// GETs `url` until `done` says yes (the views follow the log a moment behind), then returns
/// the last answer.
async fn poll(url: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: Value = reqwest::get(url)
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if done(&v) || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| b["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn services(registry: &str) -> Vec<String> {
    let r = switchyard::registry::connect(registry).expect("registry");
    let mut names: Vec<String> = r
        .list(None)
        .await
        .expect("list")
        .into_iter()
        .map(|i| i.service)
        .collect();
    names.sort();
    names
}

async fn end_to_end(broker: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = format!("file://{}", dir.path().join("registry").display());
    let topic = format!(
        "bookshelf{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut o = options(broker, &registry, &topic);
    let running = start_all(&o).await;
    assert_eq!(
        services(&registry).await,
        [
            "gateway",
            "lastreadbooks",
            "listbooks",
            "newbook",
            "readbook"
        ],
        "all five registered while they run"
    );
    let gateway = url_of(&running, Which::Gateway);
    let http = reqwest::Client::new();
    let mut added = Vec::new();
    for n in 0..7 {
        let answer = http
            .post(format!("{gateway}/bookshelf/books"))
            .json(&json!({ "title": format!("Book {n}") }))
            .send()
            .await
            .expect("add");
        assert_eq!(answer.status(), 201);
        let body: Value = answer.json().await.expect("json");
        let id = body["id"].as_str().expect("an id").to_string();
        assert_eq!(uuid::Uuid::parse_str(&id).map(|_| ()), Ok(()), "a UUID");
        added.push(id);
    }
    for id in &added {
        let answer = http
            .post(format!("{gateway}/bookshelf/books/{id}/finished"))
            .send()
            .await
            .expect("finish");
        assert_eq!(answer.status(), 204);
    }
    let want: Vec<String> = added[2..].to_vec();
    let last = poll(&format!("{gateway}/bookshelf/books/last/read"), |v| {
        ids(v) == want
    })
    .await;
    assert_eq!(ids(&last), want, "the last five read, newest last: {last}");
    assert_eq!(last[4]["title"], "Book 6", "whole books");
    let all = poll(&format!("{gateway}/bookshelf/books"), |v| ids(v) == added).await;
    assert_eq!(ids(&all), added, "every book added, in order");
    // Straight to the services, as the seed's clients do.
    let bad = http
        .post(url_of(&running, Which::ReadBook))
        .json(&json!({ "title": "no id" }))
        .send()
        .await
        .expect("post");
    assert_eq!(bad.status(), 400, "a read without an id is refused");
    // A view that leaves is no longer called: the gateway follows the registry.
    let mut running = running;
    let at = running
        .iter()
        .position(|r| r.which() == Which::LastReadBooks)
        .expect("lastreadbooks");
    running.remove(at).stop().await.expect("stop lastreadbooks");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = http
            .get(format!("{gateway}/bookshelf/books/last/read"))
            .send()
            .await
            .expect("get")
            .status();
        if status == 503 || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 503, "no lastreadbooks registered any more");
    stop_all(running).await;
    assert!(
        services(&registry).await.is_empty(),
        "all five gone after they stop"
    );

    // A view started again replays the log and answers the same; one with a snapshot answers
    // the same from it.
    o.snapshot_dir = Some(dir.path().to_path_buf());
    for round in ["replayed", "from its snapshot"] {
        let view = start(Which::LastReadBooks, o.clone()).await.expect("view");
        let again = poll(view.url(), |v| ids(v) == want).await;
        assert_eq!(
            ids(&again),
            want,
            "a restarted view ({round}) answers the same"
        );
        view.stop().await.expect("stop");
    }
    assert!(
        dir.path()
            .join(format!("lastreadbooks-{topic}.json"))
            .exists(),
        "the snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookshelf_on_kafka() {
    if require_server("bookshelf_on_kafka", "Kafka", "127.0.0.1:9092") {
        end_to_end("127.0.0.1:9092").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookshelf_on_jetstream() {
    if require_server("bookshelf_on_jetstream", "NATS", "127.0.0.1:4222") {
        end_to_end("nats://127.0.0.1:4222").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookshelf_on_redis_streams() {
    if require_server("bookshelf_on_redis_streams", "Redis", "127.0.0.1:6379") {
        end_to_end("redis://127.0.0.1:6379").await;
    }
}

/// What the seed does with kafkacat: lines pushed onto the topic by a plain Kafka client,
/// without switchyard's headers. A valid event is folded like any other; a line that is not
/// one is dead-lettered with the reason (and the view goes on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_lines_from_a_plain_kafka_client() {
    use futures::StreamExt;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use switchyard::middleware::dead_letter::{DEAD_LETTER_GROUP, ORIGINAL_TOPIC};
    use switchyard::transport::SubscribeOptions;
    if !require_server(
        "raw_lines_from_a_plain_kafka_client",
        "Kafka",
        "127.0.0.1:9092",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = format!("file://{}", dir.path().join("registry").display());
    let topic = format!(
        "bookshelf{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let o = options("127.0.0.1:9092", &registry, &topic);
    // The topic made (and the view started) first, as with the seed's `kafka-topics --create`.
    let view = start(Which::ListBooks, o.clone()).await.expect("listbooks");
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:9092")
        .create()
        .expect("producer");
    let book = json!({ "id": "raw-1", "title": "Pushed by hand" });
    let valid = json!({
        "id": "e-raw-1", "name": "book-added", "created": "2026-12-04T00:00:00Z",
        "safe": false, "idempotent": false, "payload": book.to_string(),
    })
    .to_string();
    for line in ["this is not an event", valid.as_str()] {
        producer
            .send(
                FutureRecord::<(), _>::to(&topic).payload(line),
                Duration::from_secs(10),
            )
            .await
            .expect("produce");
    }
    let listed = poll(view.url(), |v| ids(v) == ["raw-1"]).await;
    assert_eq!(ids(&listed), ["raw-1"], "the valid line folded: {listed}");
    let log = switchyard::connect("kafka://127.0.0.1:9092").expect("kafka");
    let mut letters = log
        .subscribe(
            &format!("{topic}.dlq"),
            SubscribeOptions::group(DEAD_LETTER_GROUP),
        )
        .await
        .expect("subscribe to the dead letters");
    let letter = tokio::time::timeout(Duration::from_secs(30), letters.next())
        .await
        .expect("a dead letter")
        .expect("stream")
        .expect("read");
    assert_eq!(&letter.envelope.payload[..], b"this is not an event");
    assert_eq!(
        letter.envelope.headers.get(ORIGINAL_TOPIC),
        Some(topic.as_str())
    );
    let why = letter.envelope.headers.get("x-error").unwrap_or_default();
    assert!(why.contains("not a bookshelf event"), "the reason: {why}");
    let _ = letter.ack().await;
    view.stop().await.expect("stop");
}
