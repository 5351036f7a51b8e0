//! etcd going away and coming back, on a server this test starts, kills and starts again
//! itself (its own ports and data folder): calls through discovery go on with the instances
//! last known, registrations are renewed again once it is back, and an instance registered
//! after the outage is found by the same client.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_core::client::Client;
use switchyard_core::handler::rpc;
use switchyard_core::mem::MemTransport;
use switchyard_core::registry::{Discovery, Instance, Registration, Registry};
use switchyard_core::server;
use switchyard_core::service::Service;
use switchyard_core::testkit::{free_port, require_program, wait_for_port, Killed};
use switchyard_core::transport::{ServeHandle, Transport};
use switchyard_etcd::EtcdRegistry;

fn start_etcd(port: u16, peer: u16, data: &std::path::Path) -> Killed {
    let client = format!("http://127.0.0.1:{port}");
    let peers = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .args(["--name", "outage", "--data-dir"])
        .arg(data)
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peers,
            "--initial-advertise-peer-urls",
            &peers,
        ])
        .args(["--initial-cluster", &format!("outage={peers}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd");
    wait_for_port("etcd", &format!("127.0.0.1:{port}"), true);
    Killed(child)
}

/// `books` on the bus `bus`, answering `/who` with the bus's name.
async fn serve(bus: &str) -> ServeHandle {
    let name = bus.to_string();
    let service = Service::new("books").route(
        "/who",
        rpc(move || {
            let name = name.clone();
            async move { name }
        }),
    );
    let transport = Arc::new(MemTransport::from_url(&format!("mem://{bus}")).expect("mem"));
    server::serve(transport, service).await.expect("serve")
}

async fn who(client: &Client, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let bus: String = client.call("/who", ()).await.expect("call answered");
        *seen.entry(bus).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_on_through_an_etcd_outage_and_what_comes_after_is_found() {
    if !require_program("etcd_outage", "etcd") {
        return;
    }
    let id = &switchyard_core::message::new_id()[..8];
    let (port, peer) = (free_port(), free_port());
    let data = std::env::temp_dir().join(format!("switchyard-etcd-outage-{id}"));
    let mut etcd = Some(start_etcd(port, peer, &data));
    let url = format!("etcd://127.0.0.1:{port}/outage{id}");
    let registry: Arc<dyn Registry> = Arc::new(EtcdRegistry::from_url(&url).expect("url"));
    let connector: switchyard_core::registry::Connector =
        Arc::new(|url: &str| Ok(Arc::new(MemTransport::from_url(url)?) as Arc<dyn Transport>));

    let first = format!("outage-a-{id}");
    let _a = serve(&first).await;
    let lease = Duration::from_secs(2);
    let a = Registration::start(
        registry.clone(),
        Instance::new("books", &first, [format!("mem://{first}")]),
        lease,
    )
    .await
    .expect("register");
    let client =
        Client::new(Arc::new(Discovery::new(registry.clone(), connector))).service("books");
    assert_eq!(who(&client, 3).await.get(&first), Some(&3));

    // Killed: every call is still answered by the instance last known, for longer than a lease.
    drop(etcd.take());
    wait_for_port("etcd", &format!("127.0.0.1:{port}"), false);
    let until = Instant::now() + lease * 2;
    while Instant::now() < until {
        assert_eq!(
            who(&client, 5).await.get(&first),
            Some(&5),
            "answered while etcd is down"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Back, with its data: the first instance is renewed (or registered again), and one
    // registered now is found by the same client.
    etcd = Some(start_etcd(port, peer, &data));
    let second = format!("outage-b-{id}");
    let _b = serve(&second).await;
    let b = Registration::start(
        registry.clone(),
        Instance::new("books", &second, [format!("mem://{second}")]),
        lease,
    )
    .await
    .expect("register after the outage");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = who(&client, 20).await;
        if seen.contains_key(&second) && seen.contains_key(&first) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the outage, calls reach {seen:?} only"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(lease * 2).await;
    let listed: Vec<String> = registry
        .list(Some("books"))
        .await
        .expect("list")
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(
        listed,
        vec![first.clone(), second.clone()],
        "both kept past their leases"
    );
    a.stop().await.expect("stop");
    b.stop().await.expect("stop");
    drop(etcd);
    let _ = std::fs::remove_dir_all(&data);
}
