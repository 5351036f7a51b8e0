//! `yard relay` between transports, killed as it works: 10,000 events published over HTTP
//! to one relay, which puts them on RabbitMQ, from where a second relay puts them on Kafka,
//! where a consumer with an inbox handles them. The second relay is SIGKILLed twice while
//! events flow and started again. Nothing may be lost (a relay acknowledges on its source
//! only what its destination confirmed) and the repeats a kill causes are absorbed by the
//! inbox: every event handled exactly once, with its id and headers as they were published.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard::inbox::MemoryInbox;
use switchyard::policy::ConsumerPolicy;
use switchyard::{Envelope, Service};

mod common;
use common::{free_port, Running, YARD};

const EVENTS: usize = 10_000;

/// Starts `yard relay ARGS` and waits until it says what it relays; returns that line.
fn start_relay(args: &[&str]) -> (Running, String) {
    let mut child = Command::new(YARD)
        .arg("relay")
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn yard relay");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("first line");
    assert!(line.starts_with("relaying "), "{line}");
    (Running(child), line)
}

/// Starts `yard relay FROM TO --topic TOPIC`.
fn relay(from: &str, to: &str, topic: &str) -> Running {
    start_relay(&[from, to, "--topic", topic]).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_relayed_http_to_rabbitmq_to_kafka_through_two_kills() {
    const TEST: &str = "relay";
    if !switchyard::testkit::require_server(TEST, "RabbitMQ", "127.0.0.1:5672")
        || !switchyard::testkit::require_server(TEST, "Kafka", "127.0.0.1:9092")
    {
        return;
    }
    let run = &switchyard::message::new_id()[..8];
    let topic = format!("relayed.{run}");
    let http = format!("http://127.0.0.1:{}", free_port());
    let amqp = format!("amqp://guest:guest@127.0.0.1:5672/%2f?ns=relay{run}");
    let kafka = "kafka://127.0.0.1:9092";

    // The consumer at the end, with an inbox: a repeat is known by its id.
    let handled = Arc::new(Mutex::new(Vec::<(usize, Option<String>)>::new()));
    let h = handled.clone();
    let consumer = Service::new(format!("relay-end-{run}"))
        .consumer_policy(ConsumerPolicy {
            inbox: Some(Arc::new(MemoryInbox::new(
                4 * EVENTS,
                Duration::from_secs(600),
            ))),
            ..ConsumerPolicy::default()
        })
        .on_envelope(&topic, move |env: Envelope| {
            let h = h.clone();
            async move {
                let n: usize = serde_json::from_slice(&env.payload).map_err(|e| {
                    switchyard::HandlerError::bad_request(format!("not a number: {e}"))
                })?;
                let tag = env.headers.get("x-tag").map(str::to_string);
                h.lock().unwrap_or_else(|p| p.into_inner()).push((n, tag));
                Ok::<_, switchyard::HandlerError>(())
            }
        });
    let kafka_transport = switchyard::connect(kafka).expect("kafka");
    let end = switchyard::serve(&kafka_transport, consumer)
        .await
        .expect("serve the consumer");

    let _first = relay(&http, &amqp, &topic);
    let mut second = Some(relay(&amqp, kafka, &topic));

    // The producer: over HTTP, each publish answered once RabbitMQ confirmed it; refused or
    // cut off, it is sent again (the producer's part of at least once).
    let producer = switchyard::connect(&http).expect("http");
    let published = tokio::spawn({
        let topic = topic.clone();
        async move {
            futures::stream::iter(0..EVENTS)
                .for_each_concurrent(16, |n| {
                    let (producer, topic) = (producer.clone(), topic.clone());
                    async move {
                        let mut env = Envelope::new(&topic, n.to_string());
                        env.id = format!("event-{n}");
                        env.headers.insert("x-tag", format!("tag-{n}"));
                        let deadline = Instant::now() + Duration::from_secs(120);
                        while let Err(e) = producer.publish(env.clone()).await {
                            assert!(Instant::now() < deadline, "publish {n}: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                })
                .await;
        }
    });

    // Two kills of the relay between the brokers, each once it has moved some events.
    for kill in 1..=2 {
        let target = kill * EVENTS / 3;
        let deadline = Instant::now() + Duration::from_secs(180);
        while handled.lock().unwrap_or_else(|p| p.into_inner()).len() < target {
            assert!(Instant::now() < deadline, "kill {kill}: too slow");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(second.take()); // SIGKILL
        tokio::time::sleep(Duration::from_millis(300)).await;
        second = Some(relay(&amqp, kafka, &topic));
    }
    published.await.expect("producer");

    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let distinct: HashSet<usize> = handled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, _)| *n)
            .collect();
        if distinct.len() == EVENTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {EVENTS} events reached the end",
            distinct.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A moment for a repeat to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    end.shutdown().await;
    let handled = handled.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(handled.len(), EVENTS, "each event handled once");
    for (n, tag) in &handled {
        assert_eq!(tag.as_deref(), Some(format!("tag-{n}").as_str()), "headers");
    }
}

/// An HTTP front for a service on RabbitMQ: calls made over HTTP to `yard relay` reach the echo service on
/// RabbitMQ and come back; the destination's errors come back with their code, a call past
/// its deadline fails for its caller in time, and a route not relayed is not found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_relayed_from_http_to_rabbitmq_and_answered_back() {
    if !switchyard::testkit::require_server("relay_calls", "RabbitMQ", "127.0.0.1:5672") {
        return;
    }
    let run = &switchyard::message::new_id()[..8];
    let amqp = format!("amqp://guest:guest@127.0.0.1:5672/%2f?ns=relaycalls{run}");
    let http = format!("http://127.0.0.1:{}", free_port());
    let backend = switchyard::connect(&amqp).expect("amqp");
    let echo = switchyard::serve(
        &backend,
        switchyard_cli::echo::service("echo", Some("1.0.0")),
    )
    .await
    .expect("serve echo");
    let (_relay, line) = start_relay(&[
        &http,
        &amqp,
        "--service",
        "echo",
        "--route",
        "/echo",
        "--route",
        "/sleep",
    ]);
    assert!(
        line.starts_with("relaying echo/echo, echo/sleep from "),
        "{line}"
    );
    let client = switchyard::Client::new(switchyard::connect(&http).expect("http"));
    let reply: serde_json::Value = client
        .request("/echo")
        .arg("over http")
        .arg(2)
        .send()
        .await
        .expect("relayed call");
    assert_eq!(reply, serde_json::json!(["over http", 2]));
    let refused = client
        .request("/sleep")
        .arg(700_000)
        .send::<u64>()
        .await
        .expect_err("the backend refuses");
    assert_eq!(
        refused.remote_code(),
        Some(switchyard::ErrorCode::BadRequest),
        "{refused}"
    );
    let started = Instant::now();
    let late = client
        .request("/sleep")
        .arg(5_000)
        .timeout(Duration::from_millis(300))
        .send::<u64>()
        .await
        .expect_err("past its deadline");
    assert!(started.elapsed() < Duration::from_secs(2), "{late}");
    let unknown = client
        .request("/whoami")
        .send::<serde_json::Value>()
        .await
        .expect_err("not relayed");
    assert_eq!(
        unknown.remote_code(),
        Some(switchyard::ErrorCode::NotFound),
        "{unknown}"
    );
    echo.shutdown().await;
}
