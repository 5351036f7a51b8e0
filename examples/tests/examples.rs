//! Every example runs and prints what its doc says (watermill's `.validate_example.yml`).

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str, args: &[&str]) -> String {
    // Cargo builds the examples before it runs tests: target/<profile>/examples/<name>.
    let mut path: PathBuf = std::env::current_exe().expect("test binary path");
    path.pop();
    path.pop();
    path.push("examples");
    path.push(name);
    let out = Command::new(&path)
        .args(args)
        .env_remove("SWITCHYARD_URL")
        .env_remove("SWITCHYARD_CONFIG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (`cargo test` builds the examples first; `cargo test --test examples` alone does not: run `cargo build --examples` before it)",
                path.display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "example {name} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn queues_mixed_pair() {
    let out = example("queues", &[]);
    assert!(
        out.contains("produced to http://127.0.0.1:47311, consumed from mem://orders"),
        "{out}"
    );
    for id in 1..=3 {
        assert!(
            out.contains(&format!("handled order {id} (book {id})")),
            "{out}"
        );
    }
    assert!(out.trim_end().ends_with("all 3 orders handled"), "{out}");
}

#[test]
fn quickstart() {
    assert_eq!(example("quickstart", &[]).trim(), "Welcome Mr. Developer");
}

#[test]
fn typed_contract() {
    let out = example("typed_contract", &[]);
    assert!(out.contains("books on the shelf: 2"), "{out}");
    assert!(
        out.contains(r#"last read: [Book { title: "Release It!", pages: 350 }]"#),
        "{out}"
    );
    assert!(
        out.contains(r#"find Dune: /find failed remotely: not_found: no book "Dune""#),
        "{out}"
    );
}

#[test]
fn switch_transport() {
    let out = example("switch_transport", &[]);
    assert!(out.contains("mem      call  SAME CODE"), "{out}");
    assert!(out.contains("mem      event SAME HANDLER"), "{out}");
    assert!(out.contains("http     call  SAME CODE"), "{out}");
    assert!(out.contains("http     event SAME HANDLER"), "{out}");
}

/// The same example, unchanged but for its URL, on every broker of this machine.
#[test]
fn switch_transport_on_every_broker() {
    let brokers = [
        (
            "amqp",
            "RabbitMQ",
            "127.0.0.1:5672",
            "amqp://127.0.0.1:5672/%2f?ns=switch",
        ),
        (
            "nats",
            "NATS",
            "127.0.0.1:4222",
            "nats://127.0.0.1:4222/switch",
        ),
        (
            "redis",
            "Redis",
            "127.0.0.1:6379",
            "redis://127.0.0.1:6379?ns=switch",
        ),
        (
            "mqtt",
            "Mosquitto",
            "127.0.0.1:1883",
            "mqtt://127.0.0.1:1883?ns=switch",
        ),
        (
            "kafka",
            "Kafka (Tansu)",
            "127.0.0.1:9092",
            "kafka://127.0.0.1:9092",
        ),
    ];
    for (name, server, addr, url) in brokers {
        const TEST: &str = "switch_transport_on_every_broker";
        if !switchyard::schemes().contains(&name) {
            // The example links the facade as this test does: lean unless the workspace (or
            // `--features brokers`) builds it with the brokers.
            let why = format!("switchyard was built without the {name} feature (run cargo test --workspace, or -p switchyard-examples --features brokers)");
            assert!(
                std::env::var_os("SWITCHYARD_REQUIRE_ALL").is_none(),
                "{TEST}: {why}"
            );
            eprintln!("SKIPPED broker test {TEST}: {why}");
            continue;
        }
        if !switchyard::testkit::require_server(TEST, server, addr) {
            continue;
        }
        let out = example("switch_transport", &[url]);
        assert!(
            out.contains(&format!("{name:<8} event SAME HANDLER")),
            "{name}: {out}"
        );
        if name != "kafka" {
            assert!(
                out.contains(&format!("{name:<8} call  SAME CODE")),
                "{name}: {out}"
            );
        }
    }
}

#[test]
fn events() {
    let out = example("events", &[]);
    assert!(out.contains("order 1 handled: book"), "{out}");
    assert_eq!(out.matches("failed (will be retried)").count(), 2, "{out}");
    assert!(
        out.contains("dead letter: event does not decode as Order"),
        "{out}"
    );
}

#[test]
fn websocket() {
    let out = example("websocket", &[]);
    assert!(out.contains("< ok:Mr. Developer"), "{out}");
    assert!(out.contains("< ann says hi"), "{out}");
    assert!(
        out.contains(r#"pushed < {"headline":"switchyard ships"}"#),
        "{out}"
    );
    assert!(
        out.contains("< Websocket close: path does not exist"),
        "{out}"
    );
}

#[test]
fn ordered_pool() {
    let out = example("ordered_pool", &[]);
    assert!(out.contains("id 1: working on {'id': 1, 'x': 'Nguyen'} | working on {'id': 1, 'x': 'Minh'} | working on {'id': 1, 'x': 'Tuan'}"), "{out}");
    assert!(out.contains("id 4: working on {'id': 4, 'x': '1'} | working on {'id': 4, 'x': '2'} | working on {'id': 4, 'x': '3'} | working on {'id': 4, 'x': '4'} | working on {'id': 4, 'x': '5'} | working on {'id': 4, 'x': '6'} | working on {'id': 4, 'x': '7'} | working on {'id': 4, 'x': '8'}"), "{out}");
    assert!(
        out.contains("38 items, 22 ids, each id in submission order"),
        "{out}"
    );
}

#[test]
fn observability() {
    // HTTP, NATS and Redis (the workspace's tests build every transport); in process for the
    // last two when their brokers do not answer, said loudly, and never in CI.
    let up = |addr: &str| std::net::TcpStream::connect(addr).is_ok();
    let brokers = up("127.0.0.1:4222") && up("127.0.0.1:6379");
    let args: &[&str] = if brokers || std::env::var_os("SWITCHYARD_REQUIRE_ALL").is_some() {
        &[
            "http://127.0.0.1:0",
            "nats://127.0.0.1:4222",
            "redis://127.0.0.1:6379",
        ]
    } else {
        eprintln!("observability: NATS or Redis not on loopback; tracing over mem:// instead");
        &["http://127.0.0.1:0", "mem://stock", "mem://events"]
    };
    let out = example("observability", args);
    assert!(out.contains("order 2: reserved 20"), "{out}");
    assert!(out.contains("2 traces"), "{out}");
    // Each trace: the call over HTTP, the nested call, the publish and its delivery (received,
    // handled, acknowledged), nested.
    let tree = [
        "  front/order (client,",
        "    front/order (server,",
        "      stock/reserve (client,",
        "        stock/reserve (server,",
        "      send orders.placed (producer,",
        "        receive orders.placed (consumer,",
        "        process orders.placed (consumer,",
        "        ack orders.placed (client,",
    ];
    for line in tree {
        assert_eq!(
            out.matches(line).count(),
            2,
            "{line:?} once per trace in:\n{out}"
        );
    }
}

#[test]
fn discovery() {
    let out = example("discovery", &[]);
    let line = |label: &str| {
        out.lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no line {label:?} in:\n{out}"))
            .to_string()
    };
    assert!(
        line("all on 1.x").ends_with("1.4.0 100.0 %, 2.0.0   0.0 %"),
        "{out}"
    );
    assert!(
        line("all on 2.x").ends_with("1.4.0   0.0 %, 2.0.0 100.0 %"),
        "{out}"
    );
    assert!(
        line("rollback").ends_with("1.4.0 100.0 %, 2.0.0   0.0 %"),
        "{out}"
    );
    // 1,000 calls, 10 % wanted: the share printed stays within a few points.
    let canary = line("canary");
    let share: f64 = canary
        .rsplit("2.0.0")
        .next()
        .and_then(|s| s.trim().trim_end_matches('%').trim().parse().ok())
        .unwrap_or_else(|| panic!("no share in {canary:?}"));
    assert!((6.0..=14.0).contains(&share), "{canary}");
}
