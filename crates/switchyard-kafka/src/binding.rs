//! The Kafka binding: topic names, headers both ways, CloudEvents attributes as `ce_`
//! headers, a record as an envelope.

use bytes::Bytes;
use rdkafka::message::{BorrowedMessage, Header, Headers as _, OwnedHeaders};
use rdkafka::Message;
use switchyard_core::codec::Codec;
use switchyard_core::error::TransportError;
use switchyard_core::message::{header as h, CloudEventAttribute as Ce, Envelope, Headers};

/// Prefix of CloudEvents attributes in Kafka headers (the CloudEvents Kafka binding).
pub(crate) const CE_PREFIX: &str = "ce_";
/// The attributes' Kafka header names, indexed by [`Ce`].
pub(crate) const CE_NAMES: [&str; 7] = switchyard_core::cloud_event_names!("ce_");

/// Kafka topic names: 1 to 249 of `[a-zA-Z0-9._-]`.
pub(crate) fn check_topic(url: &str, topic: &str) -> Result<(), TransportError> {
    let ok = !topic.is_empty()
        && topic.len() <= 200
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(TransportError::invalid_url(
            url,
            format!("topic {topic:?} is not a Kafka topic name (1 to 200 of a-z A-Z 0-9 . _ -)"),
        ))
    }
}

pub(crate) fn topic_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Our headers as they are, CloudEvents attributes as `ce_*`, the content type as
/// `content-type` (the CloudEvents Kafka binding, binary mode).
pub(crate) fn kafka_headers(envelope: &Envelope) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(envelope.headers.len() + 4);
    for (k, v) in envelope.headers.iter() {
        if !k.starts_with("ce-") {
            out = out.insert(Header {
                key: k,
                value: Some(v),
            });
        }
    }
    for (attr, value) in envelope.cloud_event_attributes() {
        // The binding puts the content type in `content-type`, copied above.
        if attr != Ce::DataContentType {
            out = out.insert(Header {
                key: CE_NAMES[attr as usize],
                value: Some(value),
            });
        }
    }
    out
}

pub(crate) fn envelope_of(topic: &str, m: &BorrowedMessage<'_>) -> Envelope {
    let mut headers = Headers::new();
    let mut id = None;
    if let Some(hs) = m.headers() {
        for hd in hs.iter() {
            let value = || {
                hd.value
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            let attr = hd.key.strip_prefix(CE_PREFIX);
            match attr.map(|a| (a, Ce::from_name(a))) {
                Some((_, Some(Ce::Id))) => id = Some(value()),
                Some((_, Some(Ce::SpecVersion))) => {}
                Some((_, Some(known))) => headers.insert(known.header(), value()),
                Some((other, None)) => headers.insert(format!("ce-{other}"), value()),
                None => headers.insert(hd.key, value()),
            }
        }
    }
    if headers.get(h::CONTENT_TYPE).is_none() {
        headers.insert(h::CONTENT_TYPE, Codec::Json.content_type());
    }
    if headers.get(h::ORDERING_KEY).is_none() {
        if let Some(k) = m.key().and_then(|k| std::str::from_utf8(k).ok()) {
            headers.insert(h::ORDERING_KEY, k);
        }
    }
    if headers.get(h::ATTEMPT).is_none() {
        headers.insert(h::ATTEMPT, "1");
    }
    Envelope {
        // A record without an id (pushed by a plain Kafka client) is named by where it is, so
        // that each reading of it (a redelivery, a replay) names it alike: an inbox or a dead
        // letter's id then knows it again.
        id: id.unwrap_or_else(|| format!("{}-{}-{}", m.topic(), m.partition(), m.offset())),
        subject: topic.to_string(),
        headers,
        payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
    }
}
