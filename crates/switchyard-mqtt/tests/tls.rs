//! MQTT over TLS (`mqtts://`) against a real Mosquitto TLS listener started here with a
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
use switchyard_mqtt::MqttTransport;

const TEST: &str = "mqtt_over_tls";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have(binary: &str) -> bool {
    have_at(binary, "--version")
}

fn have_at(binary: &str, flag: &str) -> bool {
    let ok = Command::new(binary)
        .arg(flag)
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
        "sy-mqtt-tls-{}",
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
async fn mqtt_over_tls() {
    let mosquitto = if Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    };
    if !have_at(mosquitto, "-h") || !have("openssl") {
        return;
    }
    let dir = certificates();
    let port = free_port();
    // Mosquitto started as root reads its files as the user it drops to: make them readable.
    for f in ["ca.pem", "server.pem", "server.key"] {
        let path = dir.join(f);
        let mut perms = std::fs::metadata(&path).expect("file").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
        std::fs::set_permissions(&path, perms).expect("chmod");
    }
    let mut dir_perms = std::fs::metadata(&dir).expect("dir").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut dir_perms, 0o755);
    std::fs::set_permissions(&dir, dir_perms).expect("chmod dir");
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n",
            ca = dir.join("ca.pem").display(),
            cert = dir.join("server.pem").display(),
            key = dir.join("server.key").display(),
        ),
    )
    .expect("write mosquitto.conf");
    let _server = Killed(
        Command::new(mosquitto)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto"),
    );
    wait_for_port("mosquitto with TLS", &format!("127.0.0.1:{port}"), true);

    let url = format!(
        "mqtts://127.0.0.1:{port}?ns=tls&tls_ca={}",
        dir.join("ca.pem").display()
    );
    let t = MqttTransport::from_url(&url).expect("url");
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
        Client::new(Arc::new(MqttTransport::from_url(&url).expect("url")) as Arc<dyn Transport>);
    let reply: String = tokio::time::timeout(
        Duration::from_secs(10),
        client.call("/hello", "TLS".to_string()),
    )
    .await
    .expect("in time")
    .expect("call over TLS");
    assert_eq!(reply, "Welcome TLS");

    // Without our CA the server's certificate is not trusted.
    let untrusted = MqttTransport::from_url(&format!("mqtts://127.0.0.1:{port}")).expect("url");
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
