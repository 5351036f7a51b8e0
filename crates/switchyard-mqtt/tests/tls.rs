//! MQTT over TLS (`mqtts://`) against a real Mosquitto TLS listener started here with a
//! certificate signed by a CA made for the test: with `?tls_ca=` events and calls go through;
//! without the CA the connection is refused with the server named.

use std::process::{Command, Stdio};
use std::sync::Arc;

use switchyard_core::testkit::{
    events_and_calls, free_port, refused_naming, require_program, wait_for_port, Killed,
    TestCertificates,
};
use switchyard_core::transport::Transport;
use switchyard_mqtt::MqttTransport;

const TEST: &str = "mqtt_over_tls";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls() {
    if !require_program(TEST, "mosquitto") {
        return;
    }
    let Some(certs) = TestCertificates::create(TEST) else {
        return;
    };
    let port = free_port();
    let conf = certs.dir().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\n",
            certs.ca().display(),
            certs.cert().display(),
            certs.key().display(),
        ),
    )
    .expect("write mosquitto.conf");
    let _server = Killed(
        Command::new("mosquitto")
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
        certs.ca().display()
    );
    let connect = || Arc::new(MqttTransport::from_url(&url).expect("url")) as Arc<dyn Transport>;
    events_and_calls(connect(), connect()).await;
    // Without our CA the server's certificate is not trusted.
    let untrusted = MqttTransport::from_url(&format!("mqtts://127.0.0.1:{port}")).expect("url");
    refused_naming(&untrusted, &format!("127.0.0.1:{port}"), "unknown CA").await;
}
