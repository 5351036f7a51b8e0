//! NATS over TLS against a real `nats-server` started here with a certificate signed by a CA
//! made for the test (openssl): with `?tls_ca=` the call goes through; without the CA, or
//! without TLS, the connection is refused with a clear error instead of going out in clear.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use switchyard_core::client::Client;
use switchyard_core::handler::rpc;
use switchyard_core::service::Service;
use switchyard_core::testkit::wait_for_port;
use switchyard_core::transport::{Responder, Transport};
use switchyard_nats::NatsTransport;

const TEST: &str = "nats_over_tls";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have(binary: &str) -> bool {
    let ok = Command::new(binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        assert!(
            std::env::var_os("SWITCHYARD_REQUIRE_ALL").is_none(),
            "{TEST}: {binary} is required (SWITCHYARD_REQUIRE_ALL is set)"
        );
        eprintln!("SKIPPED broker test {TEST}: no {binary} binary");
    }
    ok
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it, in a fresh folder.
fn certificates() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sy-nats-tls-{}",
        &switchyard_core::message::new_id()[..8]
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=switchyard test CA",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1\n").expect("write");
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.cnf",
        ],
    );
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn hello(name: String) -> String {
    format!("Welcome {name}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_over_tls() {
    if !have("nats-server") || !have("openssl") {
        return;
    }
    let dir = certificates();
    let port = free_port();
    let _server = Killed(
        Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "--tls"])
            .arg("--tlscert")
            .arg(dir.join("server.pem"))
            .arg("--tlskey")
            .arg(dir.join("server.key"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server"),
    );
    wait_for_port("nats-server with TLS", &format!("127.0.0.1:{port}"), true);

    let ca = dir.join("ca.pem");
    let url = format!("nats://127.0.0.1:{port}/tls?tls_ca={}", ca.display());
    let serving = NatsTransport::from_url(&url).expect("url");
    let service = Service::new("tls").route("/hello", rpc(hello));
    let _handle = serving
        .serve(Arc::new(service))
        .await
        .expect("serve over TLS");
    let client =
        Client::new(Arc::new(NatsTransport::from_url(&url).expect("url")) as Arc<dyn Transport>);
    let reply: String = tokio::time::timeout(
        Duration::from_secs(10),
        client.call("/hello", "TLS".to_string()),
    )
    .await
    .expect("in time")
    .expect("call over TLS");
    assert_eq!(reply, "Welcome TLS");

    // Without our CA the server's certificate is not trusted; without TLS the server refuses.
    for (url, why) in [
        (
            format!("nats://127.0.0.1:{port}/tls?tls=true"),
            "unknown CA",
        ),
        (format!("nats://127.0.0.1:{port}/tls"), "no TLS asked for"),
    ] {
        let t = NatsTransport::from_url(&url).expect("url");
        let err = tokio::time::timeout(Duration::from_secs(15), t.ready())
            .await
            .expect("fails in time")
            .expect_err(why);
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{why}: the error does not name the server: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
