//! `GET /healthz` and `GET /readyz` on the HTTP transport's port.

use std::sync::Arc;

use switchyard_core::handler::{json, rpc};
use switchyard_core::server;
use switchyard_core::service::Service;
use switchyard_core::transport::Transport;
use switchyard_http::HttpTransport;

async fn serve(service: Service) -> (String, switchyard_core::transport::ServeHandle) {
    let url = format!("http://127.0.0.1:{}", switchyard_core::testkit::free_port());
    let transport: Arc<dyn Transport> = Arc::new(HttpTransport::from_url(&url).expect("url"));
    (url, server::serve(transport, service).await.expect("serve"))
}

#[tokio::test]
async fn health_and_readiness_are_answered_unless_the_service_has_those_routes() {
    let http = reqwest::Client::new();
    let (url, served) = serve(Service::new("plain").route("/x", rpc(|| async { 1 }))).await;
    for path in ["/healthz", "/readyz"] {
        let resp = http.get(format!("{url}{path}")).send().await.expect("get");
        assert_eq!(resp.status(), 200, "{path}");
        let body: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(body["status"], "ok", "{path}");
        assert_eq!(body["service"], "plain", "{path}");
    }
    let post = http
        .post(format!("{url}/healthz"))
        .send()
        .await
        .expect("post");
    assert_eq!(post.status(), 404, "only GET is a health check");
    served.shutdown().await;

    let own = Service::new("own").route(
        "/healthz",
        json(|_: serde_json::Value| async { "mine".to_string() }),
    );
    let (url, served) = serve(own).await;
    let body = http
        .get(format!("{url}/healthz"))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert!(
        body.contains("mine"),
        "the service's own /healthz was shadowed: {body}"
    );
    served.shutdown().await;
}
