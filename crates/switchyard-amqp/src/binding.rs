//! The AMQP binding: wire names, headers both ways, CloudEvents attributes as `cloudEvents:`
//! headers, a delivery as an envelope.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use switchyard_core::codec::Codec;
use switchyard_core::error::TransportError;
use switchyard_core::message::{header as h, new_id, CloudEventAttribute as Ce, Envelope, Headers};

/// The topic exchange every event goes through.
pub(crate) const EXCHANGE: &str = "sy.events";
/// RabbitMQ's direct reply-to pseudo-queue: replies come straight back on the calling channel
/// without a queue per client.
pub(crate) const DIRECT_REPLY: &str = "amq.rabbitmq.reply-to";
/// Header carrying the route of a call.
pub(crate) const ROUTE: &str = "x-route";
/// Header carrying the error code of a failed call's reply.
pub(crate) const STATUS: &str = "x-status";
/// Prefix of CloudEvents attributes in AMQP headers (the CloudEvents AMQP binding).
pub(crate) const CE_PREFIX: &str = "cloudEvents:";
/// The binding also allows `_` for clients that cannot send `:` in a header name.
pub(crate) const CE_PREFIX_ALT: &str = "cloudEvents_";
/// The attributes' AMQP header names, indexed by [`Ce`].
pub(crate) const CE_NAMES: [&str; 7] = switchyard_core::cloud_event_names!("cloudEvents:");

/// A topic usable as a routing key and binding: the topic exchange would read `*` and `#` as
/// wildcards, and a routing key holds at most 255 bytes.
pub(crate) fn check_topic(url: &str, topic: &str) -> Result<(), TransportError> {
    if topic.is_empty() || topic.len() > 200 || topic.contains(['*', '#']) {
        return Err(TransportError::invalid_url(
            url,
            format!("topic {topic:?} is not usable on AMQP (1 to 200 bytes, no '*' or '#')"),
        ));
    }
    Ok(())
}

pub(crate) fn value_text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

pub(crate) fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Headers of an outgoing event: ours as they are, CloudEvents attributes under
/// `cloudEvents:`, the id and content type in their AMQP properties.
pub(crate) fn event_properties(envelope: &Envelope) -> BasicProperties {
    let mut table = FieldTable::default();
    for (k, v) in envelope.headers.iter() {
        // `ce-*` go out once, in the binding's spelling, below.
        if k != h::CONTENT_TYPE && !k.starts_with("ce-") {
            table.insert(k.into(), long(v));
        }
    }
    for (attr, value) in envelope.cloud_event_attributes() {
        // The binding puts the content type in the `content-type` property, set below.
        if attr != Ce::DataContentType {
            table.insert(CE_NAMES[attr as usize].into(), long(value));
        }
    }
    let content_type = envelope
        .headers
        .get(h::CONTENT_TYPE)
        .unwrap_or("application/json");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    BasicProperties::default()
        .with_headers(table)
        .with_delivery_mode(2)
        .with_message_id(envelope.id.as_str().into())
        .with_content_type(content_type.into())
        .with_timestamp(now)
}

pub(crate) fn headers_of(properties: &BasicProperties) -> Headers {
    let mut out = Headers::new();
    if let Some(table) = properties.headers() {
        for (k, v) in table.inner() {
            out.insert(k.as_str(), value_text(v));
        }
    }
    out
}

/// The envelope of a received event. A message from a plain client may lack everything but
/// its body: it gets an id, a JSON content type and attempt 1.
pub(crate) fn envelope_of(topic: &str, delivery: &lapin::message::Delivery) -> Envelope {
    let mut headers = Headers::new();
    let mut id = None;
    if let Some(table) = delivery.properties.headers() {
        for (k, v) in table.inner() {
            let k = k.as_str();
            let ce = k
                .strip_prefix(CE_PREFIX)
                .or_else(|| k.strip_prefix(CE_PREFIX_ALT));
            match ce.map(|a| (a, Ce::from_name(a))) {
                Some((_, Some(Ce::Id))) => id = Some(value_text(v)),
                Some((_, Some(Ce::SpecVersion))) => {}
                Some((_, Some(known))) => headers.insert(known.header(), value_text(v)),
                Some((other, None)) => headers.insert(format!("ce-{other}"), value_text(v)),
                None => headers.insert(k, value_text(v)),
            }
        }
    }
    let id = id
        .or_else(|| {
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_string())
        })
        .unwrap_or_else(new_id);
    let content_type = delivery
        .properties
        .content_type()
        .as_ref()
        .map(|c| c.as_str().to_string())
        .unwrap_or_else(|| Codec::Json.content_type().to_string());
    headers.insert(h::CONTENT_TYPE, content_type);
    // A broker redelivery (its consumer died) counts as one more attempt; our own re-publish
    // after a nack carries the count in the header.
    let attempt = headers.attempt() + u32::from(delivery.redelivered);
    headers.insert(h::ATTEMPT, attempt.to_string());
    Envelope {
        id,
        subject: topic.to_string(),
        headers,
        payload: Bytes::copy_from_slice(&delivery.data),
    }
}
