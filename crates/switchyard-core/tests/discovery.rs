//! Calls by service name through a registry (`registry::Discovery`), on instances served in
//! process on buses of their own: round robin, peak-EWMA moving calls off a slow instance,
//! changes in the registry reaching the calls, the last known set kept while the registry is
//! unreachable, and a clear error for a service nobody serves.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_core::client::Client;
use switchyard_core::error::CallError;
use switchyard_core::handler::rpc;
use switchyard_core::mem::MemTransport;
use switchyard_core::registry::{
    self, Balance, Connector, Discovery, FileRegistry, Instance, Registry,
};
use switchyard_core::server;
use switchyard_core::service::Service;
use switchyard_core::transport::{ServeHandle, Transport};

fn connector() -> Connector {
    Arc::new(|url: &str| Ok(Arc::new(MemTransport::from_url(url)?) as Arc<dyn Transport>))
}

/// Serves `books` on the bus `bus`, answering `/who` with the bus's name after `delay`, and
/// registers it there.
async fn instance(registry: &Arc<dyn Registry>, bus: &str, delay: Duration) -> ServeHandle {
    let name = bus.to_string();
    let service = Service::new("books").route(
        "/who",
        rpc(move || {
            let name = name.clone();
            async move {
                tokio::time::sleep(delay).await;
                name
            }
        }),
    );
    let url = format!("mem://{bus}");
    let transport = Arc::new(MemTransport::from_url(&url).expect("mem"));
    let handle = server::serve(transport, service).await.expect("serve");
    registry
        .register(&Instance::new("books", bus, [url]), Duration::from_secs(30))
        .await
        .expect("register");
    handle
}

/// Instances of `books`, each `(name, version)` on the bus `name-id`, registered stating
/// their versions.
async fn versions<const N: usize>(
    registry: &Arc<dyn Registry>,
    id: &str,
    each: [(&str, &str); N],
) -> Vec<ServeHandle> {
    let mut served = Vec::new();
    for (name, version) in each {
        let bus = format!("{name}-{id}");
        served.push(instance(registry, &bus, Duration::ZERO).await);
        // Registered again, now stating its version.
        let url = format!("mem://{bus}");
        registry
            .register(
                &Instance::new("books", &bus, [url]).with_version(version),
                Duration::from_secs(30),
            )
            .await
            .expect("register");
    }
    served
}

async fn calls(client: &Client, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let who: String = client.call("/who", ()).await.expect("call");
        *seen.entry(who).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_takes_the_instances_in_turn_and_follows_the_registry() {
    let id = &switchyard_core::message::new_id()[..8];
    let registry = registry::connect(&format!("mem://discovery-rr{id}")).expect("registry");
    let buses: Vec<String> = (1..=3).map(|n| format!("rr{id}-{n}")).collect();
    let mut served = Vec::new();
    for bus in &buses {
        served.push(instance(&registry, bus, Duration::ZERO).await);
    }
    let discovery = Discovery::new(registry.clone(), connector()).balance(Balance::RoundRobin);
    let client = Client::new(Arc::new(discovery)).service("books");
    let seen = calls(&client, 300).await;
    for bus in &buses {
        assert_eq!(seen.get(bus), Some(&100), "{seen:?}");
    }

    // One leaves, one comes: the calls follow within a second.
    registry
        .deregister("books", &buses[0])
        .await
        .expect("deregister");
    let newcomer = format!("rr{id}-4");
    served.push(instance(&registry, &newcomer, Duration::ZERO).await);
    let deadline = Instant::now() + Duration::from_secs(1);
    let seen = loop {
        let seen = calls(&client, 30).await;
        if (!seen.contains_key(&buses[0]) && seen.contains_key(&newcomer))
            || Instant::now() > deadline
        {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!seen.contains_key(&buses[0]), "{seen:?}");
    assert_eq!(seen.get(&newcomer), Some(&10), "{seen:?}");

    // A service nobody serves: said so, naming it.
    let err = Client::new(Arc::new(Discovery::new(registry.clone(), connector())))
        .service("nobody")
        .call::<_, String>("/who", ())
        .await
        .expect_err("no instance");
    assert!(matches!(err, CallError::NoInstance { .. }), "{err}");
    assert!(err.to_string().contains("nobody"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_moves_calls_off_a_slow_instance() {
    let id = &switchyard_core::message::new_id()[..8];
    let registry = registry::connect(&format!("mem://discovery-p2c{id}")).expect("registry");
    let fast: Vec<String> = (1..=2).map(|n| format!("p2c{id}-{n}")).collect();
    let slow = format!("p2c{id}-slow");
    let mut served = Vec::new();
    for bus in &fast {
        served.push(instance(&registry, bus, Duration::from_millis(1)).await);
    }
    served.push(instance(&registry, &slow, Duration::from_millis(40)).await);
    let client =
        Client::new(Arc::new(Discovery::new(registry.clone(), connector()))).service("books");
    // 8 callers at once for 2 s; what counts is where the calls of the last second went.
    let started = Instant::now();
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut late = HashMap::<String, usize>::new();
                while started.elapsed() < Duration::from_secs(2) {
                    let who: String = client.call("/who", ()).await.expect("call");
                    if started.elapsed() > Duration::from_secs(1) {
                        *late.entry(who).or_default() += 1;
                    }
                }
                late
            })
        })
        .collect();
    let mut late = HashMap::<String, usize>::new();
    for c in callers {
        for (who, n) in c.await.expect("caller") {
            *late.entry(who).or_default() += n;
        }
    }
    let total: usize = late.values().sum();
    let on_slow = late.get(&slow).copied().unwrap_or(0);
    assert!(
        (on_slow as f64) <= 0.05 * total as f64,
        "{on_slow} of {total} calls on the slow instance: {late:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_on_while_the_registry_is_unreachable() {
    let id = &switchyard_core::message::new_id()[..8];
    let dir = std::env::temp_dir().join(format!("switchyard-discovery-{id}"));
    let registry: Arc<dyn Registry> = Arc::new(FileRegistry::new(&dir));
    let bus = format!("outage{id}");
    let _served = instance(&registry, &bus, Duration::ZERO).await;
    let client =
        Client::new(Arc::new(Discovery::new(registry.clone(), connector()))).service("books");
    assert_eq!(calls(&client, 3).await.get(&bus), Some(&3));

    // The registry's folder becomes a file: every read of it fails.
    let aside = dir.with_extension("aside");
    std::fs::rename(&dir, &aside).expect("move the registry away");
    std::fs::write(&dir, b"not a folder").expect("block it");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        calls(&client, 3).await.get(&bus),
        Some(&3),
        "the last known instances are kept"
    );
    // Back: listed again.
    std::fs::remove_file(&dir).expect("unblock");
    std::fs::rename(&aside, &dir).expect("move the registry back");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(calls(&client, 3).await.get(&bus), Some(&3));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_requirement_picks_the_instances_that_meet_it() {
    let id = &switchyard_core::message::new_id()[..8];
    let registry = registry::connect(&format!("mem://discovery-versions{id}")).expect("registry");
    let _served = versions(&registry, id, [("v1", "1.4.0"), ("v2", "2.1.0")]).await;
    let discovery =
        Arc::new(Discovery::new(registry.clone(), connector()).balance(Balance::RoundRobin));
    let client = |req: &str| Client::new(discovery.clone()).service("books").version(req);
    let only = |seen: HashMap<String, usize>| seen.into_keys().collect::<Vec<_>>();
    assert_eq!(
        only(calls(&client("^2"), 20).await),
        vec![format!("v2-{id}")]
    );
    assert_eq!(
        only(calls(&client("=1.4.0"), 20).await),
        vec![format!("v1-{id}")]
    );
    assert_eq!(calls(&client(">=1"), 40).await.len(), 2, "both meet >=1");
    let err = client("^3")
        .call::<_, String>("/who", ())
        .await
        .expect_err("nobody serves 3");
    assert!(matches!(err, CallError::NoVersion { .. }), "{err}");
    assert!(
        err.to_string().contains("^3") && err.to_string().contains("1.4.0, 2.1.0"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_split_holds_and_a_rollback_reaches_the_calls_within_a_second() {
    use switchyard_core::registry::VersionRoute;
    let id = &switchyard_core::message::new_id()[..8];
    let registry = registry::connect(&format!("mem://discovery-split{id}")).expect("registry");
    let _served = versions(&registry, id, [("old", "1.0.0"), ("new", "2.0.0")]).await;
    let route = |old: u32, new: u32| {
        format!(
            r#"{{"split": [{{"version": "^1", "weight": {old}}}, {{"version": "^2", "weight": {new}}}]}}"#
        )
    };
    let key = VersionRoute::key("books");
    let revision = registry
        .config_set(&key, &route(90, 10), None)
        .await
        .expect("route");
    let client =
        Client::new(Arc::new(Discovery::new(registry.clone(), connector()))).service("books");
    let seen = calls(&client, 10_000).await;
    let on_new = seen.get(&format!("new-{id}")).copied().unwrap_or(0);
    assert!(
        (900..=1_100).contains(&on_new),
        "10 % ± 1 of 10,000 calls on the new version: {seen:?}"
    );

    // Rollback: one change; within a second no call goes to the new version, none fails.
    registry
        .config_set(&key, &route(100, 0), Some(revision))
        .await
        .expect("rollback");
    let changed = Instant::now();
    let mut last_new = None;
    while changed.elapsed() < Duration::from_secs(2) {
        let who: String = client.call("/who", ()).await.expect("no call fails");
        if who == format!("new-{id}") {
            last_new = Some(changed.elapsed());
        }
    }
    assert!(
        last_new.is_none_or(|t| t < Duration::from_secs(1)),
        "a call went to the rolled-back version {last_new:?} after the change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_key_keeps_its_instance_and_a_newcomer_takes_a_fair_part() {
    let id = &switchyard_core::message::new_id()[..8];
    let registry = registry::connect(&format!("mem://discovery-shards{id}")).expect("registry");
    let mut served = Vec::new();
    for n in 1..=3 {
        served.push(instance(&registry, &format!("shard{id}-{n}"), Duration::ZERO).await);
    }
    let client =
        Client::new(Arc::new(Discovery::new(registry.clone(), connector()))).service("books");
    let owners = |client: Client| async move {
        let mut owner = HashMap::new();
        for k in 0..2_000 {
            let key = format!("customer-{k}");
            let who: String = client
                .request("/who")
                .shard_key(key.clone())
                .send()
                .await
                .expect("call");
            owner.insert(key, who);
        }
        owner
    };
    let before = owners(client.clone()).await;
    let mut count = HashMap::<&String, usize>::new();
    for who in before.values() {
        *count.entry(who).or_default() += 1;
    }
    for (who, n) in &count {
        assert!(
            (540..=800).contains(n),
            "{who} owns {n} of 2,000 keys: {count:?}"
        );
    }
    assert_eq!(
        before,
        owners(client.clone()).await,
        "the same owner every time"
    );

    let newcomer = format!("shard{id}-4");
    served.push(instance(&registry, &newcomer, Duration::ZERO).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = owners(client.clone()).await;
    let moved: Vec<_> = before.keys().filter(|k| before[*k] != after[*k]).collect();
    assert!(
        (400..=600).contains(&moved.len()),
        "about 1/4 of 2,000 keys move to a fourth instance, {} did",
        moved.len()
    );
    assert!(
        moved.iter().all(|k| after[*k] == newcomer),
        "every key that moved went to the newcomer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_is_not_ready_nor_registered_until_its_hard_dependencies_are_there() {
    use switchyard_core::observe::not_ready;
    let id = &switchyard_core::message::new_id()[..8];
    let registry = registry::connect(&format!("mem://discovery-deps{id}")).expect("registry");
    let (needed, optional) = (format!("stock{id}"), format!("mailer{id}"));
    let front = Service::new(format!("front{id}"))
        .route("/ok", rpc(|| async { 1 }))
        .depends_on(&needed)
        .soft_depends_on(&optional);
    let bus: Arc<dyn Transport> = Arc::new(MemTransport::new(&format!("deps{id}")));
    let served = registry::serve(bus, front, registry.clone(), Duration::from_secs(30))
        .await
        .expect("serve");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!served.is_registered());
    assert!(
        not_ready().iter().any(|w| w.contains(&needed)),
        "not ready, naming what it waits for: {:?}",
        not_ready()
    );
    assert!(registry
        .list(Some(&format!("front{id}")))
        .await
        .expect("list")
        .is_empty());

    registry
        .register(
            &Instance::new(&needed, "s1", ["mem://stock".to_string()]),
            Duration::from_secs(30),
        )
        .await
        .expect("register the dependency");
    let deadline = Instant::now() + Duration::from_secs(2);
    while !served.is_registered() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        served.is_registered(),
        "registered once its dependency is there"
    );
    assert!(
        !not_ready().iter().any(|w| w.contains(&needed)),
        "{:?}",
        not_ready()
    );
    assert_eq!(
        registry
            .list(Some(&format!("front{id}")))
            .await
            .expect("list")
            .len(),
        1
    );
    served.shutdown().await.expect("shutdown");
    assert!(
        registry
            .list(Some(&format!("front{id}")))
            .await
            .expect("list")
            .is_empty(),
        "removed on shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_goes_where_the_registry_says_its_handlers_are() {
    let id = &switchyard_core::message::new_id()[..8];
    let registry: Arc<dyn Registry> =
        Arc::new(registry::MemoryRegistry::named(&format!("events{id}")));
    let heard = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
    let h = heard.clone();
    let shelf = Service::new("shelf").on_event("books.added", move |n: u32| {
        let h = h.clone();
        async move {
            h.lock().expect("lock").push(n);
        }
    });
    let bus = format!("mem://events{id}");
    let transport = Arc::new(MemTransport::from_url(&bus).expect("mem"));
    let _served = server::serve(transport, shelf).await.expect("serve");
    let discovery = Client::new(Arc::new(Discovery::new(registry.clone(), connector())));

    // Nobody registered as its handler yet: refused, saying so, rather than sent nowhere.
    let refused = discovery.publish("books.added", &1u32).await;
    assert!(
        refused.as_ref().is_err_and(|e| e
            .to_string()
            .contains("no registered instance handles topic \"books.added\"")),
        "{refused:?}"
    );
    let mut record = Instance::new("shelf", "one", [bus.clone()]);
    record.topics = vec!["books.added".into()];
    registry
        .register(&record, Duration::from_secs(30))
        .await
        .expect("register");
    for n in 2..5u32 {
        discovery
            .publish("books.added", &n)
            .await
            .expect("published through the registry");
    }
    let until = Instant::now() + Duration::from_secs(5);
    while heard.lock().expect("lock").len() < 3 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut got = heard.lock().expect("lock").clone();
    got.sort_unstable();
    assert_eq!(
        got,
        vec![2, 3, 4],
        "each event once, none of the refused one"
    );
}

async fn who(call: switchyard_core::client::CallBuilder<'_>) -> String {
    call.send::<String>().await.expect("answered")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_of_the_route_sends_marked_calls_to_its_versions() {
    use switchyard_core::registry::VersionRoute;
    let id = &switchyard_core::message::new_id()[..8];
    let registry = registry::connect(&format!("mem://discovery-rules{id}")).expect("registry");
    let _served = versions(&registry, id, [("old", "1.0.0"), ("new", "2.0.0")]).await;
    let route = r#"{"rules": [{"header": "X-Canary", "equals": "1", "version": "^2"},
                              {"keys": ["tenant-7"], "version": "^2"},
                              {"header": "x-beta", "version": "^3"}],
                    "split": [{"version": "^1", "weight": 100}]}"#;
    assert!(serde_json::from_str::<VersionRoute>(route)
        .expect("a route")
        .check()
        .is_ok());
    registry
        .config_set(&VersionRoute::key("books"), route, None)
        .await
        .expect("route");
    let client =
        Client::new(Arc::new(Discovery::new(registry.clone(), connector()))).service("books");
    let (old, new) = (format!("old-{id}"), format!("new-{id}"));
    for n in 0..20 {
        assert_eq!(
            who(client.request("/who")).await,
            old,
            "unmarked: the split"
        );
        assert_eq!(
            who(client.request("/who").header("x-canary", "1")).await,
            new,
            "the canary header"
        );
        assert_eq!(
            who(client.request("/who").header("x-canary", "0")).await,
            old,
            "another value of it"
        );
        assert_eq!(
            who(client.request("/who").shard_key("tenant-7")).await,
            new,
            "a key of the rule"
        );
        // A key no rule names follows the split (all on ^1 here), whichever instance its
        // hash would favour.
        assert_eq!(
            who(client
                .request("/who")
                .shard_key(format!("tenant-{}", 100 + n)))
            .await,
            old,
            "another key"
        );
        // A rule whose versions nobody serves: the route's others take the call.
        let fell = who(client.request("/who").header("x-beta", "yes")).await;
        assert!(fell == old || fell == new, "{fell}");
    }
    // The caller's own requirement comes first.
    let pinned = Client::new(Arc::new(Discovery::new(registry.clone(), connector())))
        .service("books")
        .version("^1");
    assert_eq!(
        who(pinned.request("/who").header("x-canary", "1")).await,
        old
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_not_ready_is_passed_over_while_another_serves() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use switchyard_core::registry::{Health, Registration};
    let id = &switchyard_core::message::new_id()[..8];
    let registry = registry::connect(&format!("mem://discovery-health{id}")).expect("registry");
    let (steady, shaky) = (format!("steady-{id}"), format!("shaky-{id}"));
    let _a = instance(&registry, &steady, Duration::ZERO).await;
    let _b = instance(&registry, &shaky, Duration::ZERO).await;
    // The shaky one's registration reports its health at each renewal.
    let ready = Arc::new(AtomicBool::new(true));
    let r = ready.clone();
    let reporting = Registration::reporting(
        registry.clone(),
        Instance::new("books", &shaky, [format!("mem://{shaky}")]),
        Duration::from_millis(300),
        move || {
            if r.load(Ordering::SeqCst) {
                Health::Serving
            } else {
                Health::NotReady
            }
        },
    )
    .await
    .expect("registration");
    let client =
        Client::new(Arc::new(Discovery::new(registry.clone(), connector()))).service("books");
    let both = calls(&client, 200).await;
    assert!(both.get(&shaky).is_some_and(|n| *n > 0), "{both:?}");

    // Not ready: written at the next renewal, seen by the caller's watch.
    ready.store(false, Ordering::SeqCst);
    let until = Instant::now() + Duration::from_secs(3);
    loop {
        let listed = registry.list(Some("books")).await.expect("list");
        let shaky_health = listed.iter().find(|i| i.id == shaky).map(|i| i.health);
        if shaky_health == Some(Health::NotReady) {
            break;
        }
        assert!(Instant::now() < until, "health not written: {listed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let passed_over = calls(&client, 200).await;
    assert_eq!(passed_over.get(&steady), Some(&200), "{passed_over:?}");

    // Ready again: it takes calls again.
    ready.store(true, Ordering::SeqCst);
    let until = Instant::now() + Duration::from_secs(3);
    loop {
        if calls(&client, 50).await.contains_key(&shaky) {
            break;
        }
        assert!(Instant::now() < until, "never called again once ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reporting.stop().await.expect("stop");
}
