//! Redis over TLS (`rediss://`) against a real `redis-server --tls-port` started here with a
//! certificate signed by a CA made for the test: with `?tls_ca=` events and calls go through;
//! without the CA the connection is refused with the server named.

use std::process::{Command, Stdio};
use std::sync::Arc;

use switchyard_core::testkit::{
    events_and_calls, free_port, refused_naming, require_program, wait_for_port, Killed,
    TestCertificates,
};
use switchyard_core::transport::Transport;
use switchyard_redis::RedisTransport;

const TEST: &str = "redis_over_tls";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls() {
    if !require_program(TEST, "redis-server") {
        return;
    }
    let Some(certs) = TestCertificates::create(TEST) else {
        return;
    };
    let port = free_port();
    let _server = Killed(
        Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
            .arg("--tls-cert-file")
            .arg(certs.cert())
            .arg("--tls-key-file")
            .arg(certs.key())
            .arg("--tls-ca-cert-file")
            .arg(certs.ca())
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server"),
    );
    wait_for_port("redis-server with TLS", &format!("127.0.0.1:{port}"), true);
    let url = format!(
        "rediss://127.0.0.1:{port}?ns=tls&tls_ca={}",
        certs.ca().display()
    );
    let connect = || Arc::new(RedisTransport::from_url(&url).expect("url")) as Arc<dyn Transport>;
    events_and_calls(connect(), connect()).await;
    // Without our CA the server's certificate is not trusted.
    let untrusted = RedisTransport::from_url(&format!("rediss://127.0.0.1:{port}")).expect("url");
    refused_naming(&untrusted, &format!("127.0.0.1:{port}"), "unknown CA").await;
}
