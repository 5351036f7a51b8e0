//! NATS over TLS against a real `nats-server --tls` (JetStream on) started here with a
//! certificate signed by a CA made for the test: with `?tls_ca=` events and calls go through;
//! without the CA, or without TLS, the connection is refused with the server named instead of
//! going out in clear.

use std::process::{Command, Stdio};
use std::sync::Arc;

use switchyard_core::testkit::{
    events_and_calls, free_port, refused_naming, require_program, wait_for_port, Killed,
    TestCertificates,
};
use switchyard_core::transport::Transport;
use switchyard_nats::NatsTransport;

const TEST: &str = "nats_over_tls";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_over_tls() {
    if !require_program(TEST, "nats-server") {
        return;
    }
    let Some(certs) = TestCertificates::create(TEST) else {
        return;
    };
    let port = free_port();
    let _server = Killed(
        Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "--tls"])
            .arg("--store_dir")
            .arg(certs.dir().join("jetstream"))
            .arg("--tlscert")
            .arg(certs.cert())
            .arg("--tlskey")
            .arg(certs.key())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server"),
    );
    wait_for_port("nats-server with TLS", &format!("127.0.0.1:{port}"), true);
    let url = format!(
        "nats://127.0.0.1:{port}/tls?tls_ca={}",
        certs.ca().display()
    );
    let connect = || Arc::new(NatsTransport::from_url(&url).expect("url")) as Arc<dyn Transport>;
    events_and_calls(connect(), connect()).await;
    // Without our CA the server's certificate is not trusted; without TLS the server refuses.
    for (url, why) in [
        (
            format!("nats://127.0.0.1:{port}/tls?tls=true"),
            "unknown CA",
        ),
        (format!("nats://127.0.0.1:{port}/tls"), "no TLS asked for"),
    ] {
        let t = NatsTransport::from_url(&url).expect("url");
        refused_naming(&t, &format!("127.0.0.1:{port}"), why).await;
    }
}
