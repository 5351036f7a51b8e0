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
