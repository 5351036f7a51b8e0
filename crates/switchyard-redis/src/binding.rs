//! The Redis binding: stream keys, an entry as an envelope and back (headers as JSON).

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use redis::streams::StreamId;
use switchyard_core::message::{Envelope, Headers};

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) const STREAM_PREFIX: &str = "sy:s:";

pub(crate) fn stream_key(topic: &str) -> String {
    format!("{STREAM_PREFIX}{topic}")
}

/// The stream of consumer group `group`'s retries of `topic`: a retry re-added to the topic's
/// own stream would reach every other group again. The group's length comes first, so that
/// no two (group, topic) pairs share a key.
pub(crate) fn retry_key(group: &str, topic: &str) -> String {
    format!("{RETRY_PREFIX}{}:{group}:{topic}", group.len())
}

/// What every retry stream's key starts with.
pub(crate) const RETRY_PREFIX: &str = "sy:r:";

/// The envelope of a stream entry. An entry written by a plain client (without our `i`, `h`
/// and `p` fields) is not skipped: its fields become a JSON object payload and its id is the
/// entry's id (stable across redeliveries, for inbox de-duplication). A handler that cannot
/// decode it sends it to the dead-letter topic with the reason, like any bad payload.
pub(crate) fn envelope_of(topic: &str, entry: &StreamId) -> Envelope {
    let get = |f: &str| match entry.map.get(f) {
        Some(redis::Value::BulkString(b)) => Some(b),
        _ => None,
    };
    let ours = (|| {
        let id = std::str::from_utf8(get("i")?).ok()?.to_string();
        let headers_map: HashMap<String, String> = serde_json::from_slice(get("h")?).ok()?;
        let payload = get("p")?.clone().into();
        Some((id, headers_map, payload))
    })();
    match ours {
        Some((id, headers_map, payload)) => Envelope {
            id,
            subject: topic.to_string(),
            headers: headers_map.into_iter().collect(),
            payload,
        },
        None => {
            let fields: serde_json::Map<String, serde_json::Value> = entry
                .map
                .iter()
                .map(|(k, v)| {
                    let text = match v {
                        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                        other => format!("{other:?}"),
                    };
                    (k.clone(), serde_json::Value::String(text))
                })
                .collect();
            let mut env = Envelope::new(topic, serde_json::to_vec(&fields).unwrap_or_default());
            env.id = format!("{}/{}", stream_key(topic), entry.id);
            env
        }
    }
}

/// Headers as a JSON object, written straight from the sorted map.
pub(crate) struct HeadersJson<'a>(&'a Headers);

impl serde::Serialize for HeadersJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter())
    }
}

/// The `h` field of an entry: the headers' JSON written into the command itself.
impl redis::ToRedisArgs for HeadersJson<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        // Writing to a command buffer cannot fail, and string maps always encode.
        let _ = serde_json::to_writer(out.writer_for_next_arg(), self);
    }
}

/// A topic's stream key (`sy:s:<topic>`, as [`stream_key`]) written into the command itself:
/// no string made per publish.
pub(crate) struct StreamKey<'a>(&'a str);

impl redis::ToRedisArgs for StreamKey<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        use std::io::Write;
        let mut arg = out.writer_for_next_arg();
        let _ = arg.write_all(STREAM_PREFIX.as_bytes());
        let _ = arg.write_all(self.0.as_bytes());
    }
}

pub(crate) async fn add(
    con: &mut ConnectionManager,
    env: &Envelope,
) -> Result<(), redis::RedisError> {
    add_to(con, StreamKey(&env.subject), env).await
}

/// [`add`] to the stream `key`.
pub(crate) async fn add_to(
    con: &mut ConnectionManager,
    key: impl redis::ToRedisArgs,
    env: &Envelope,
) -> Result<(), redis::RedisError> {
    // No MAXLEN: Redis would drop the oldest entries, read or not; the publisher bounds the
    // stream instead (`RedisTransport::room`).
    redis::cmd("XADD")
        .arg(key)
        .arg("*")
        .arg("i")
        .arg(&env.id)
        .arg("h")
        .arg(HeadersJson(&env.headers))
        .arg("p")
        .arg(env.payload.as_ref())
        // The entry id the server answers is not needed: `()` takes any reply unread.
        .query_async::<()>(con)
        .await
}
