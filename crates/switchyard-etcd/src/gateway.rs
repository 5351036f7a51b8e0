//! etcd's v3 API through its JSON gateway (`POST /v3/kv/range`, `/v3/watch`, …), the part of
//! it a registry needs: ranges, puts and deletes under a prefix, transactions comparing a key's
//! version, leases, and watches streamed as one JSON object a line.
//!
//! Written here rather than taken from `etcd-client` because that crate generates its gRPC code
//! when it is built, with `protoc`, which a fresh machine does not have: the README's test
//! command must build anywhere. The gateway is etcd's own documented API (the same messages as
//! gRPC, as JSON, 64-bit numbers as strings and bytes as base64), served on the client port.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// How long one request (not a watch) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a gateway request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GatewayError {
    #[error("{path}: {source}")]
    Http {
        path: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("{path}: etcd answered {status}: {body}")]
    Status {
        path: &'static str,
        status: u16,
        body: String,
    },
    #[error("{path}: unreadable answer: {reason}")]
    Decode { path: &'static str, reason: String },
    #[error("watch ended: {0}")]
    WatchEnded(String),
}

/// A key's record as etcd gives it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct KeyValue {
    #[serde(deserialize_with = "bytes")]
    pub(crate) key: Vec<u8>,
    #[serde(default, deserialize_with = "bytes")]
    pub(crate) value: Vec<u8>,
    /// Changes of this key since it was created, 1 for the first put.
    #[serde(default, deserialize_with = "number")]
    pub(crate) version: u64,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Header {
    #[serde(default, deserialize_with = "number")]
    pub(crate) revision: u64,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RangeResponse {
    #[serde(default)]
    pub(crate) header: Header,
    #[serde(default)]
    pub(crate) kvs: Vec<KeyValue>,
}

#[derive(Debug, Deserialize)]
struct LeaseGrant {
    #[serde(rename = "ID", deserialize_with = "number")]
    id: u64,
}

#[derive(Debug, Deserialize)]
struct KeepAliveResult {
    result: KeepAlive,
}

#[derive(Debug, Deserialize)]
struct KeepAlive {
    /// Absent (0) when the lease is gone.
    #[serde(rename = "TTL", default, deserialize_with = "number")]
    ttl: u64,
}

#[derive(Debug, Deserialize)]
struct TxnResponse {
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<TxnOp>,
}

#[derive(Debug, Deserialize)]
struct TxnOp {
    response_range: Option<RangeResponse>,
}

/// One event of a watch.
#[derive(Debug, Deserialize)]
pub(crate) struct Event {
    /// `PUT` is etcd's default and left out.
    #[serde(rename = "type", default)]
    pub(crate) kind: Option<String>,
    pub(crate) kv: KeyValue,
    pub(crate) prev_kv: Option<KeyValue>,
}

impl Event {
    pub(crate) fn is_delete(&self) -> bool {
        self.kind.as_deref() == Some("DELETE")
    }
}

#[derive(Debug, Deserialize)]
struct WatchLine {
    result: Option<WatchResult>,
    error: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct WatchResult {
    #[serde(default)]
    created: bool,
    #[serde(default)]
    canceled: bool,
    #[serde(default)]
    cancel_reason: Option<String>,
    #[serde(default)]
    events: Vec<Event>,
}

/// A client of one etcd's gateway.
#[derive(Debug, Clone)]
pub(crate) struct Gateway {
    base: String,
    http: reqwest::Client,
}

/// The end of the range of keys starting with `prefix`: its last byte that can grow, grown.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: to the end of the keyspace.
    vec![0]
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

impl Gateway {
    /// The gateway at `http://HOST:PORT`.
    pub(crate) fn new(base: String) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self { base, http })
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &'static str,
        body: serde_json::Value,
    ) -> Result<T, GatewayError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .timeout(REQUEST_TIMEOUT)
            .json(&body)
            .send()
            .await
            .map_err(|source| GatewayError::Http { path, source })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| GatewayError::Http { path, source })?;
        if !status.is_success() {
            return Err(GatewayError::Status {
                path,
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| GatewayError::Decode {
            path,
            reason: e.to_string(),
        })
    }

    /// The keys from `key` up to `end` (`None`: `key` alone).
    pub(crate) async fn range(
        &self,
        key: &[u8],
        end: Option<&[u8]>,
    ) -> Result<RangeResponse, GatewayError> {
        let mut body = serde_json::json!({ "key": b64(key) });
        if let Some(end) = end {
            body["range_end"] = b64(end).into();
        }
        self.post("/v3/kv/range", body).await
    }

    /// Puts `value` under `key`, held by `lease` (0: none).
    pub(crate) async fn put(
        &self,
        key: &[u8],
        value: &[u8],
        lease: u64,
    ) -> Result<(), GatewayError> {
        let mut body = serde_json::json!({ "key": b64(key), "value": b64(value) });
        if lease != 0 {
            body["lease"] = lease.to_string().into();
        }
        self.post::<serde_json::Value>("/v3/kv/put", body)
            .await
            .map(drop)
    }

    /// Deletes `key`.
    pub(crate) async fn delete(&self, key: &[u8]) -> Result<(), GatewayError> {
        self.post::<serde_json::Value>("/v3/kv/deleterange", serde_json::json!({ "key": b64(key) }))
            .await
            .map(drop)
    }

    /// A lease of `ttl` (whole seconds, at least 1; etcd may raise it to its minimum).
    pub(crate) async fn grant(&self, ttl: Duration) -> Result<u64, GatewayError> {
        let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let grant: LeaseGrant = self
            .post(
                "/v3/lease/grant",
                serde_json::json!({ "TTL": seconds.max(1).to_string() }),
            )
            .await?;
        Ok(grant.id)
    }

    /// Renews `lease` for its whole TTL again; `false` when it is gone (ran out, or etcd lost it).
    pub(crate) async fn keep_alive(&self, lease: u64) -> Result<bool, GatewayError> {
        let kept: KeepAliveResult = self
            .post(
                "/v3/lease/keepalive",
                serde_json::json!({ "ID": lease.to_string() }),
            )
            .await?;
        Ok(kept.result.ttl > 0)
    }

    /// Ends `lease`, deleting the keys it holds.
    pub(crate) async fn revoke(&self, lease: u64) -> Result<(), GatewayError> {
        self.post::<serde_json::Value>(
            "/v3/lease/revoke",
            serde_json::json!({ "ID": lease.to_string() }),
        )
        .await
        .map(drop)
    }

    /// Puts `value` under `key` if the key's version is `version` (0: the key is absent).
    /// `Ok(Err(found))` when it is not, with the version found (0: absent).
    pub(crate) async fn put_if_version(
        &self,
        key: &[u8],
        value: &[u8],
        version: u64,
    ) -> Result<Result<(), u64>, GatewayError> {
        let key = b64(key);
        let body = serde_json::json!({
            "compare": [{ "target": "VERSION", "key": key, "version": version.to_string(), "result": "EQUAL" }],
            "success": [{ "request_put": { "key": key, "value": b64(value) } }],
            "failure": [{ "request_range": { "key": key } }],
        });
        let txn: TxnResponse = self.post("/v3/kv/txn", body).await?;
        if txn.succeeded {
            return Ok(Ok(()));
        }
        let found = txn
            .responses
            .into_iter()
            .find_map(|op| op.response_range)
            .and_then(|r| r.kvs.into_iter().next())
            .map_or(0, |kv| kv.version);
        Ok(Err(found))
    }

    /// Events on the keys from `key` up to `end` (`None`: `key` alone) from revision `from`
    /// (0: from now), each delete with the record it removed. Returns once etcd has made the
    /// watch, so that nothing done after this returns is missed.
    pub(crate) async fn watch(
        &self,
        key: &[u8],
        end: Option<&[u8]>,
        from: u64,
    ) -> Result<Watch, GatewayError> {
        const PATH: &str = "/v3/watch";
        let mut create = serde_json::json!({ "key": b64(key), "prev_kv": true });
        if let Some(end) = end {
            create["range_end"] = b64(end).into();
        }
        if from > 0 {
            create["start_revision"] = from.to_string().into();
        }
        let resp = self
            .http
            .post(format!("{}{PATH}", self.base))
            .json(&serde_json::json!({ "create_request": create }))
            .send()
            .await
            .map_err(|source| GatewayError::Http { path: PATH, source })?;
        if !resp.status().is_success() {
            return Err(GatewayError::Status {
                path: PATH,
                status: resp.status().as_u16(),
                body: String::new(),
            });
        }
        let mut watch = Watch {
            resp,
            buffer: Vec::new(),
            pending: std::collections::VecDeque::new(),
        };
        // The first line says the watch is made.
        match watch.line().await? {
            Some(WatchResult { created: true, .. }) => Ok(watch),
            _ => Err(GatewayError::WatchEnded(
                "etcd did not confirm the watch".into(),
            )),
        }
    }
}

/// A watch's events as they come.
#[derive(Debug)]
pub(crate) struct Watch {
    resp: reqwest::Response,
    buffer: Vec<u8>,
    pending: std::collections::VecDeque<Event>,
}

impl Watch {
    /// The next event; an error when the watch ends (etcd went away, or cancelled it).
    pub(crate) async fn next(&mut self) -> Result<Event, GatewayError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            match self.line().await? {
                Some(result) if result.canceled => {
                    return Err(GatewayError::WatchEnded(
                        result
                            .cancel_reason
                            .unwrap_or_else(|| "cancelled by etcd".into()),
                    ))
                }
                Some(result) => self.pending.extend(result.events),
                None => return Err(GatewayError::WatchEnded("etcd closed the stream".into())),
            }
        }
    }

    /// The next line of the stream, read; `None` at its end.
    async fn line(&mut self) -> Result<Option<WatchResult>, GatewayError> {
        const PATH: &str = "/v3/watch";
        loop {
            if let Some(at) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=at).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let parsed: WatchLine =
                    serde_json::from_slice(&line).map_err(|e| GatewayError::Decode {
                        path: PATH,
                        reason: e.to_string(),
                    })?;
                if let Some(error) = parsed.error {
                    return Err(GatewayError::WatchEnded(error.to_string()));
                }
                match parsed.result {
                    Some(result) => return Ok(Some(result)),
                    None => continue,
                }
            }
            match self.resp.chunk().await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                Ok(None) => return Ok(None),
                Err(source) => return Err(GatewayError::Http { path: PATH, source }),
            }
        }
    }
}

/// A 64-bit number, which the gateway writes as a string.
fn number<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        S(String),
        U(u64),
    }
    match N::deserialize(d)? {
        N::U(n) => Ok(n),
        N::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

/// Bytes, which the gateway writes as base64.
fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    B64.decode(s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn a_prefix_ends_where_its_last_growable_byte_grows() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
        assert_eq!(prefix_end(&[0xff]), vec![0]);
    }
}
