//! The client's circuit breaker over a real transport: calls to an HTTP address where nothing
//! listens fail as unreachable until the breaker opens, then are refused at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_core::client::{BreakerState, Client};
use switchyard_core::error::CallError;
use switchyard_core::testkit::free_port;
use switchyard_http::HttpTransport;

#[tokio::test]
async fn calls_to_a_dead_address_open_the_breaker() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let client = Client::new(Arc::new(HttpTransport::from_url(&url).expect("url")))
        .with_timeout(Duration::from_secs(2));
    for _ in 0..5 {
        let err = client
            .call::<_, i32>("/work", ())
            .await
            .expect_err("nothing listens");
        assert!(
            matches!(err, CallError::Unreachable { .. }),
            "expected unreachable, got {err}"
        );
    }
    assert_eq!(client.breaker_state(), BreakerState::Open);
    let refused = Instant::now();
    let err = client.call::<_, i32>("/work", ()).await.expect_err("open");
    assert!(matches!(err, CallError::CircuitOpen { .. }), "{err}");
    assert!(refused.elapsed() < Duration::from_millis(50));
}
