//! `serve` returns once callers can reach the service: a call made right after it is answered.
//! On a one-thread runtime the serving task cannot run before the call is sent, so a first
//! heartbeat written by that task (as it once was) made this call fail with "no live instance".

use std::sync::Arc;

use switchyard_core::testkit::require_server;
use switchyard_core::{rpc, Client, Service};
use switchyard_redis::RedisTransport;

async fn hello(name: String) -> String {
    format!("Welcome {name}")
}

#[tokio::test(flavor = "current_thread")]
async fn a_call_right_after_serve_is_answered() {
    if !require_server(
        "a_call_right_after_serve_is_answered",
        "Redis",
        "127.0.0.1:6379",
    ) {
        return;
    }
    let url = format!(
        "redis://127.0.0.1:6379?ns=ready{}",
        &switchyard_core::message::new_id()[..8]
    );
    let server = Arc::new(RedisTransport::from_url(&url).expect("url"));
    let client =
        Client::new(Arc::new(RedisTransport::from_url(&url).expect("url"))).service("ready");
    // The caller is connected and its reply channel subscribed before the service starts (a
    // first call finds nobody), so the next call goes out without waiting on anything.
    let absent = client
        .call::<_, String>("/hello", "early".to_string())
        .await;
    assert!(absent.is_err(), "answered before anything served");
    let serving =
        switchyard_core::server::serve(server, Service::new("ready").route("/hello", rpc(hello)))
            .await
            .expect("serve");
    let reply: String = client
        .call("/hello", "now".to_string())
        .await
        .expect("a call right after serve");
    assert_eq!(reply, "Welcome now");
    serving.shutdown().await;
}
