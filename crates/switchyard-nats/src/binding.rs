//! The NATS binding: subjects for calls and topics, headers both ways, a message as an
//! envelope (CloudEvents attributes as `ce-*` headers).

use switchyard_core::codec::Codec;
use switchyard_core::message::{header as h, Envelope, Headers};

/// Header carrying the error code of a failed call's reply.
pub(crate) const STATUS: &str = "x-status";

/// A subject token from a route or topic: no wildcards, no white space, no empty tokens.
pub(crate) fn check_subject(what: &str, s: &str) -> Result<(), String> {
    let bad = s.is_empty()
        || s.split('.').any(str::is_empty)
        || s.chars().any(|c| c.is_whitespace() || c == '*' || c == '>');
    if bad {
        Err(format!(
            "{what} {s:?} is not a valid NATS subject (no spaces, '*', '>' or empty tokens)"
        ))
    } else {
        Ok(())
    }
}

/// Appends `name` to a subject as one token: `.` (the token separator) is written `%2E` and
/// `%` itself `%25`, so that a route like `/v1.2/x` keeps its dot.
pub(crate) fn push_escaped(subject: &mut String, name: &str) {
    for c in name.chars() {
        match c {
            '.' => subject.push_str("%2E"),
            '%' => subject.push_str("%25"),
            c => subject.push(c),
        }
    }
}

/// `sy.rpc.<namespace>.<service>.<route, each segment a token>`, built in one allocation:
/// every call makes it.
pub(crate) fn route_subject(namespace: &str, service: &str, route: &str) -> Result<String, String> {
    const PREFIX: &str = "sy.rpc.";
    let route = route.trim_start_matches('/');
    let mut subject =
        String::with_capacity(PREFIX.len() + namespace.len() + service.len() + 2 + route.len());
    subject.push_str(PREFIX);
    subject.push_str(namespace);
    subject.push('.');
    let service_at = subject.len();
    push_escaped(&mut subject, service);
    check_subject("service", &subject[service_at..])?;
    subject.push('.');
    let token_at = subject.len();
    for (i, segment) in route.split('/').enumerate() {
        if i > 0 {
            subject.push('.');
        }
        push_escaped(&mut subject, segment);
    }
    check_subject("route", &subject[token_at..])?;
    Ok(subject)
}

/// The subject prefix of every call to `service`: `sy.rpc.<namespace>.<service>.`.
pub(crate) fn service_prefix(namespace: &str, service: &str) -> String {
    let mut prefix = format!("sy.rpc.{namespace}.");
    push_escaped(&mut prefix, service);
    prefix.push('.');
    prefix
}

/// A name JetStream accepts for streams and consumers: letters, digits, `-` and `_`.
pub(crate) fn jetstream_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub(crate) fn stream_name(topic: &str) -> String {
    format!("SY_{}", jetstream_name(topic))
}

pub(crate) fn to_nats_headers(headers: &Headers) -> async_nats::HeaderMap {
    let mut out = async_nats::HeaderMap::new();
    for (k, v) in headers.iter() {
        out.insert(k, v);
    }
    out
}

/// The headers `envelope` is published with: its own, its CloudEvents attributes as `ce-*`
/// (the binding's header names are ours: `ce-*` and `content-type`), and `Nats-Msg-Id`
/// (what JetStream de-duplicates on) set to `msg_id`.
pub(crate) fn publish_headers(envelope: &Envelope, msg_id: &str) -> async_nats::HeaderMap {
    let mut headers = to_nats_headers(&envelope.headers);
    for (attr, value) in envelope.cloud_event_attributes() {
        headers.insert(attr.header(), value);
    }
    headers.insert("Nats-Msg-Id", msg_id);
    headers
}

/// The size of `headers` on the wire: `NATS/1.0\r\n`, `name: value\r\n` each, `\r\n`.
pub(crate) fn header_block_len(headers: &async_nats::HeaderMap) -> usize {
    if headers.is_empty() {
        return 0;
    }
    let lines: usize = headers
        .iter()
        .map(|(k, values)| {
            let name = AsRef::<str>::as_ref(k).len();
            values
                .iter()
                .map(|v| name + 2 + v.as_str().len() + 2)
                .sum::<usize>()
        })
        .sum();
    "NATS/1.0\r\n".len() + lines + 2
}

pub(crate) fn from_nats_headers(headers: Option<&async_nats::HeaderMap>) -> Headers {
    let mut out = Headers::new();
    if let Some(hm) = headers {
        for (k, values) in hm.iter() {
            if let Some(v) = values.first() {
                // The name as `&str`, not `to_string`: no formatting machinery per header.
                out.insert(AsRef::<str>::as_ref(k), v.as_str());
            }
        }
    }
    out
}

/// The route a call's subject names: `sy.rpc.<ns>.<service>.a.b` → `/a/b`, escapes undone
/// (one allocation, no formatting: it runs for every call).
pub(crate) fn route_of(subject: &str, prefix: &str) -> String {
    let rest = subject.strip_prefix(prefix).unwrap_or("");
    let mut route = String::with_capacity(rest.len() + 1);
    route.push('/');
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '.' => route.push('/'),
            '%' => {
                let escape: String = chars.by_ref().take(2).collect();
                match escape.as_str() {
                    "2E" => route.push('.'),
                    "25" => route.push('%'),
                    other => {
                        route.push('%');
                        route.push_str(other);
                    }
                }
            }
            c => route.push(c),
        }
    }
    route
}

pub(crate) fn envelope_of(
    topic: &str,
    message: &async_nats::Message,
    attempt: Option<i64>,
) -> Envelope {
    let mut headers = Headers::new();
    let mut id = None;
    for (k, values) in message.headers.iter().flat_map(|hm| hm.iter()) {
        let (name, Some(v)) = (AsRef::<str>::as_ref(k), values.first()) else {
            continue;
        };
        // The CloudEvents id is the envelope's; the spec version is implied.
        if name.eq_ignore_ascii_case("ce-id") {
            id = Some(v.as_str().to_string());
        } else if !name.eq_ignore_ascii_case("ce-specversion") {
            headers.insert(name, v.as_str());
        }
    }
    let id = id.unwrap_or_else(switchyard_core::message::new_id);
    if let Some(a) = attempt {
        headers.insert(h::ATTEMPT, a.to_string());
    }
    if headers.get(h::CONTENT_TYPE).is_none() {
        headers.insert(h::CONTENT_TYPE, Codec::Json.content_type());
    }
    Envelope {
        id,
        subject: topic.to_string(),
        headers,
        payload: message.payload.clone(),
    }
}

/// A message read through the stream's JSON API (`STREAM.MSG.GET`: `hdrs` and `data` in
/// base64) as an envelope, its headers read leniently (lines that do not parse are skipped),
/// with what in its header block the client library cannot read, if anything (checked as
/// async-nats 0.51 parses a header block); `None` if `message` is not such a message.
pub(crate) fn raw_envelope(
    topic: &str,
    message: &serde_json::Value,
    deliveries: u64,
) -> Option<(Envelope, Option<String>)> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = b64
        .decode(message.get("data")?.as_str().unwrap_or(""))
        .ok()?;
    let raw_headers = match message.get("hdrs").and_then(|h| h.as_str()) {
        Some(h) => b64.decode(h).ok()?,
        None => Vec::new(),
    };
    let text = String::from_utf8_lossy(&raw_headers);
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or("");
    let mut why = Vec::new();
    if std::str::from_utf8(&raw_headers).is_err() {
        why.push("its header block is not UTF-8".to_string());
    }
    let status = first.strip_prefix("NATS/1.0").map(str::trim).unwrap_or("");
    if !status.is_empty() {
        why.push(format!("its header block has the status line {first:?}"));
    } else if !raw_headers.is_empty() && !first.starts_with("NATS/1.0") {
        why.push(format!("its header block starts with {first:?}"));
    }
    let mut headers = Headers::new();
    let mut id = None;
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            why.push(format!("the header line {line:?} has no colon"));
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if <async_nats::HeaderName as std::str::FromStr>::from_str(name).is_err() {
            why.push(format!("the header name {name:?} is not valid"));
            continue;
        }
        if value.contains('\r') {
            why.push(format!("the value of {name} holds a carriage return"));
        }
        if name.eq_ignore_ascii_case("ce-id") {
            id = Some(value.to_string());
        } else if !name.is_empty() {
            headers.insert(name, value);
        }
    }
    headers.insert(h::ATTEMPT, deliveries.to_string());
    let envelope = Envelope {
        id: id.unwrap_or_else(switchyard_core::message::new_id),
        subject: topic.to_string(),
        headers,
        payload: payload.into(),
    };
    let why = (!why.is_empty()).then(|| why.join("; "));
    Some((envelope, why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_survives_its_subject() {
        for route in ["/hello", "/orders/create", "/a/b/c", "/v1.2/x", "/50%/a.b"] {
            let subject = route_subject("shop", "cart", route).unwrap();
            assert_eq!(route_of(&subject, "sy.rpc.shop.cart."), route, "{subject}");
        }
        assert_eq!(
            route_subject("shop", "cart", "/a/b").unwrap(),
            "sy.rpc.shop.cart.a.b"
        );
        assert_eq!(
            route_subject("shop", "cart", "/v1.2/x").unwrap(),
            "sy.rpc.shop.cart.v1%2E2.x"
        );
        for bad in ["/a b", "/a//b", "/a/*", "/>", "/"] {
            assert!(
                route_subject("shop", "cart", bad).is_err(),
                "{bad} accepted"
            );
        }
        assert!(route_subject("shop", "my cart", "/a").is_err());

        // Another service's subject is not under this one's prefix.
        assert_eq!(
            service_prefix("shop", "cart"),
            "sy.rpc.shop.cart.",
            "the prefix a served instance reads routes after"
        );
    }
}
