//! docs/TRANSPORTS.md's capability table is rendered from the transports' own
//! `capabilities()`: this test fails when the two disagree (regenerate with
//! `SWITCHYARD_BLESS=1 cargo test -p switchyard-cli --test capabilities_doc`).

use switchyard::transport::{DeliveryGuarantee, Ordering};

fn render() -> String {
    let urls = [
        "mem://doc",
        "http://127.0.0.1:1",
        "amqp://127.0.0.1:5672",
        "kafka://127.0.0.1:9092",
        "mqtt://127.0.0.1:1883",
        "nats://127.0.0.1:4222",
        "redis://127.0.0.1:6379",
    ];
    let mut out = String::from(
        "| transport | durable | ordering | delivery | request/reply | consumer groups | broadcast | redelivery | services share a URL | kept for later groups | replay from the start |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let yes = |b: bool| if b { "yes" } else { "no" };
    for url in urls {
        let t = switchyard::connect(url).expect("transport");
        let c = t.capabilities();
        let ordering = match c.ordering {
            Ordering::None => "none",
            Ordering::PerKey => "per key",
            Ordering::Global => "global",
            _ => "other",
        };
        let delivery = match c.delivery {
            DeliveryGuarantee::AtMostOnce => "at most once",
            DeliveryGuarantee::AtLeastOnce => "at least once",
            _ => "other",
        };
        out.push_str(&format!(
            "| `{}://` | {} | {ordering} | {delivery} | {} | {} | {} | {} | {} | {} | {} |\n",
            t.name(),
            yes(c.durable),
            yes(c.request_reply),
            yes(c.consumer_groups),
            yes(c.broadcast),
            yes(c.redelivery),
            yes(c.services_share_url),
            yes(c.keeps_for_later_groups),
            yes(c.replay)
        ));
    }
    out
}

#[test]
fn the_capability_table_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/TRANSPORTS.md");
    let doc = std::fs::read_to_string(path).unwrap_or_default();
    let begin = "<!-- capabilities:begin -->\n";
    let end = "<!-- capabilities:end -->";
    let table = render();
    if std::env::var_os("SWITCHYARD_BLESS").is_some() {
        let (head, rest) = doc.split_once(begin).expect("begin marker");
        let (_, tail) = rest.split_once(end).expect("end marker");
        std::fs::write(path, format!("{head}{begin}{table}{end}{tail}")).expect("write");
        return;
    }
    let current = doc
        .split_once(begin)
        .and_then(|(_, r)| r.split_once(end))
        .map(|(t, _)| t)
        .expect("docs/TRANSPORTS.md has the capability markers");
    assert_eq!(
        current, table,
        "docs/TRANSPORTS.md is stale: run SWITCHYARD_BLESS=1 cargo test -p switchyard-cli --test capabilities_doc"
    );
}
