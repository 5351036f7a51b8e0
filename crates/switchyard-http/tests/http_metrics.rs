//! Prometheus metrics: `GET /metrics` on the HTTP transport's port counts calls by route and
//! outcome, events by topic and outcome, dead letters and client calls, with labels from the
//! service's own routes and topics only.

use std::sync::Arc;
use std::time::Duration;

use switchyard_core::client::Client;
use switchyard_core::consumer::ConsumerPolicy;
use switchyard_core::error::HandlerError;
use switchyard_core::handler::rpc;
use switchyard_core::mem::MemTransport;
use switchyard_core::message::Envelope;
use switchyard_core::server;
use switchyard_core::service::Service;
use switchyard_core::transport::Transport;
use switchyard_http::HttpTransport;

/// The value of the sample of `name` whose labels include every one of `labels`.
use switchyard_core::testkit::metric as sample;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_events_and_dead_letters_by_route_and_topic() {
    switchyard_core::observe::install_prometheus().expect("recorder");

    let url = format!("http://127.0.0.1:{}", switchyard_core::testkit::free_port());
    let http: Arc<dyn Transport> = Arc::new(HttpTransport::from_url(&url).expect("url"));
    let service = Service::new("metered")
        .route("/ok", rpc(|| async { 1 }))
        .route(
            "/fail",
            rpc(|| async { Err::<i32, _>(HandlerError::internal("no")) }),
        )
        .on_event("pushed", |_: u32| async {});
    let served = server::serve(http.clone(), service).await.expect("serve");
    // An event pushed over HTTP is counted like one delivered by a broker.
    let pushed = reqwest::Client::new()
        .post(format!("{url}/pushed"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "pushed-1")
        .header("ce-type", "test")
        .header("ce-source", "http_metrics")
        .header("content-type", "application/json")
        .body("5")
        .send()
        .await
        .expect("push");
    assert_eq!(pushed.status(), 200);
    let client = Client::new(http);
    for _ in 0..2 {
        let _: i32 = client.call("/ok", ()).await.expect("ok");
    }
    client.call::<_, i32>("/fail", ()).await.expect_err("fails");
    client
        .call::<_, i32>("/no-such-route-abc123", ())
        .await
        .expect_err("404");

    let bus: Arc<dyn Transport> = Arc::new(MemTransport::new("metrics-events"));
    let policy = ConsumerPolicy {
        max_attempts: 1,
        ..Default::default()
    };
    let events = Service::new("consumer")
        .on_event("orders", |n: u32| async move {
            if n == 0 {
                Err(HandlerError::internal("zero"))
            } else {
                Ok(())
            }
        })
        .consumer_policy(policy);
    let consumer = server::serve(bus.clone(), events)
        .await
        .expect("serve events");
    bus.publish(Envelope::new("orders", "1"))
        .await
        .expect("publish");
    bus.publish(Envelope::new("orders", "0"))
        .await
        .expect("publish");

    let scrape = || async {
        reqwest::get(format!("{url}/metrics"))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("text")
    };
    let mut text = scrape().await;
    for _ in 0..50 {
        if sample(
            &text,
            "switchyard_dead_letters_total",
            &["topic=\"orders\""],
        )
        .is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = scrape().await;
    }
    let calls = |route: &str, outcome: &str| {
        sample(
            &text,
            "switchyard_calls_total",
            &[
                "service=\"metered\"",
                &format!("route=\"{route}\""),
                &format!("outcome=\"{outcome}\""),
            ],
        )
    };
    assert_eq!(calls("/ok", "ok"), Some(2.0), "{text}");
    assert_eq!(calls("/fail", "server_error"), Some(1.0), "{text}");
    assert_eq!(calls("<unknown>", "client_error"), Some(1.0), "{text}");
    assert!(
        !text.contains("no-such-route-abc123"),
        "a label was taken from what a caller sent"
    );
    assert!(
        sample(
            &text,
            "switchyard_call_duration_seconds_count",
            &["route=\"/ok\""]
        ) == Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "switchyard_call_duration_seconds_bucket",
            &["route=\"/ok\"", "le=\"+Inf\""]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        text.matches("# TYPE switchyard_call_duration_seconds histogram")
            .count(),
        1,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "switchyard_calls_in_flight",
            &["service=\"metered\""]
        ),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "switchyard_events_total",
            &[
                "service=\"metered\"",
                "topic=\"pushed\"",
                "outcome=\"done\""
            ]
        ),
        Some(1.0),
        "{text}"
    );
    let events = |outcome: &str| {
        sample(
            &text,
            "switchyard_events_total",
            &["topic=\"orders\"", &format!("outcome=\"{outcome}\"")],
        )
    };
    assert_eq!(
        events("done"),
        Some(2.0),
        "the handled one and the dead-lettered one: {text}"
    );
    assert_eq!(
        sample(
            &text,
            "switchyard_dead_letters_total",
            &["topic=\"orders\""]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "switchyard_client_calls_total", &["outcome=\"ok\""]),
        Some(2.0),
        "{text}"
    );
    consumer.shutdown().await;
    served.shutdown().await;
}
