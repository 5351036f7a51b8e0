//! Metrics of calls made in process: every call counted, its latency measured for a sample
//! of them, each sampled call counted for as many as it stands for.

use std::sync::Arc;

use switchyard_core::client::Client;
use switchyard_core::handler::rpc;
use switchyard_core::mem::MemTransport;
use switchyard_core::{observe, server, service::Service};

use switchyard_core::testkit::metric as sample;

#[tokio::test]
async fn in_process_calls_are_all_counted_and_their_latency_sampled() {
    observe::install_prometheus().expect("recorder");
    let bus = Arc::new(MemTransport::new("local-metrics"));
    let service = Service::new("local-metered")
        .route("/n", rpc(|| async { 1u32 }))
        .route("/m", rpc(|| async { 2u32 }))
        .route(
            "/slow",
            rpc(|| async {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                1u32
            }),
        );
    let _served = server::serve(bus.clone(), service).await.expect("serve");
    let client = Client::new(bus).service("local-metered");
    for _ in 0..3_200 {
        assert_eq!(client.call::<_, u32>("/n", ()).await.expect("call"), 1);
    }
    // A call that waits is in flight while it does (one that ends in the poll it starts in is
    // not counted so: nothing could see it).
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.call::<_, u32>("/slow", ()).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let text = observe::render().expect("metrics installed");
    let service = ["service=\"local-metered\""];
    assert_eq!(
        sample(&text, "switchyard_calls_in_flight", &service),
        Some(1.0),
        "{text}"
    );
    assert_eq!(waiting.await.expect("joined").expect("call"), 1);
    // A call its caller stops waiting for is counted as a timeout, and is in flight no more.
    let impatient = client
        .clone()
        .with_timeout(std::time::Duration::from_millis(50));
    assert!(impatient.call::<_, u32>("/slow", ()).await.is_err());
    let text = observe::render().expect("metrics installed");
    let slow = [
        "service=\"local-metered\"",
        "route=\"/slow\"",
        "outcome=\"timeout\"",
    ];
    assert_eq!(
        sample(&text, "switchyard_calls_total", &slow),
        Some(1.0),
        "{text}"
    );
    let labels = ["service=\"local-metered\"", "route=\"/n\""];
    let counted = all_counted_and_sampled(&text, &labels);
    let sum = sample(&text, "switchyard_call_duration_seconds_sum", &labels).expect("sum");
    assert!(
        sum > 0.0 && sum / counted < 0.01,
        "mean latency {}",
        sum / counted
    );
    assert_eq!(
        sample(&text, "switchyard_calls_in_flight", &labels[..1]),
        Some(0.0),
        "{text}"
    );

    // Through a client's layer, whose innermost call reaches the instance in place: the same.
    let layered = client.layer(tower::layer::layer_fn(|inner| inner));
    for _ in 0..3_200 {
        assert_eq!(layered.call::<_, u32>("/m", ()).await.expect("call"), 2);
    }
    let text = observe::render().expect("metrics installed");
    all_counted_and_sampled(&text, &["service=\"local-metered\"", "route=\"/m\""]);
}

/// The calls made to each route.
const CALLS: f64 = 3_200.0;

/// Checks in `text` that the route `labels` name counted all `CALLS` calls as ok, and that
/// their latency was sampled; returns the histogram's count.
fn all_counted_and_sampled(text: &str, labels: &[&str; 2]) -> f64 {
    let ok = [labels[0], labels[1], "outcome=\"ok\""];
    assert_eq!(
        sample(text, "switchyard_calls_total", &ok),
        Some(CALLS),
        "{text}"
    );
    // One call in 16 measured, counted 16 times: the count is a multiple of 16 and, with
    // 200 calls measured on average (a standard deviation under 14), within five deviations of
    // the calls made.
    let counted = sample(text, "switchyard_call_duration_seconds_count", labels)
        .expect("a latency histogram for the route");
    assert_eq!(counted % 16.0, 0.0, "{counted}");
    assert!((counted - CALLS).abs() <= 5.0 * 16.0 * 14.0, "{counted}");
    counted
}
