//! Redis over TLS (`rediss://`) against a real `redis-server --tls-port` started here with a
//! certificate signed by a CA made for the test (openssl): with `?tls_ca=` events and calls go
//! through; without the CA the connection is refused with the server named.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use switchyard_core::client::Client;
use switchyard_core::handler::rpc;
use switchyard_core::message::Envelope;
use switchyard_core::service::Service;
use switchyard_core::testkit::wait_for_port;
use switchyard_core::transport::{Publisher, Responder, SubscribeOptions, Subscriber, Transport};
use switchyard_redis::RedisTransport;

const TEST: &str = "redis_over_tls";

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
        "sy-redis-tls-{}",
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
async fn redis_over_tls() {
    if !have("redis-server") || !have("openssl") {
        return;
    }
    let dir = certificates();
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
            .arg(dir.join("server.pem"))
            .arg("--tls-key-file")
            .arg(dir.join("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(dir.join("ca.pem"))
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server"),
    );
    wait_for_port("redis-server with TLS", &format!("127.0.0.1:{port}"), true);

    let url = format!(
        "rediss://127.0.0.1:{port}?ns=tls&tls_ca={}",
        dir.join("ca.pem").display()
    );
    let t = RedisTransport::from_url(&url).expect("url");
    let mut sub = t
        .subscribe("tls.events", SubscribeOptions::group("g"))
        .await
        .expect("subscribe over TLS");
    t.publish(Envelope::new("tls.events", r#"{"n":1}"#))
        .await
        .expect("publish over TLS");
    let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("delivery");
    assert_eq!(&d.envelope.payload[..], br#"{"n":1}"#);
    d.ack().await.expect("ack");

    let service = Service::new("tls").route("/hello", rpc(hello));
    let _handle = t.serve(Arc::new(service)).await.expect("serve over TLS");
    let client =
        Client::new(Arc::new(RedisTransport::from_url(&url).expect("url")) as Arc<dyn Transport>);
    let reply: String = tokio::time::timeout(
        Duration::from_secs(10),
        client.call("/hello", "TLS".to_string()),
    )
    .await
    .expect("in time")
    .expect("call over TLS");
    assert_eq!(reply, "Welcome TLS");

    // Without our CA the server's certificate is not trusted.
    let untrusted = RedisTransport::from_url(&format!("rediss://127.0.0.1:{port}")).expect("url");
    let err = tokio::time::timeout(Duration::from_secs(15), untrusted.ready())
        .await
        .expect("fails in time")
        .expect_err("a certificate from an unknown CA was accepted");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "the error does not name the server: {err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
