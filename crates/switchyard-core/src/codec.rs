//! Payload codecs: JSON (the default) and MessagePack, chosen per service and per client.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

/// How payloads are encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Codec {
    /// `application/json`: what microservices_connector's Python clients speak.
    #[default]
    Json,
    /// `application/msgpack`: smaller and faster to parse.
    MsgPack,
}

/// A payload that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// JSON failed.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// MessagePack decoding failed.
    #[error("invalid MessagePack: {0}")]
    MsgPackDecode(#[from] rmp_serde::decode::Error),
    /// MessagePack encoding failed.
    #[error("cannot encode MessagePack: {0}")]
    MsgPackEncode(#[from] rmp_serde::encode::Error),
}

impl Codec {
    /// The MIME type this codec writes.
    pub fn content_type(self) -> &'static str {
        match self {
            Codec::Json => "application/json",
            Codec::MsgPack => "application/msgpack",
        }
    }

    /// The codec for a MIME type; parameters such as `; charset=utf-8` are ignored.
    /// `None` for anything that is neither JSON nor MessagePack.
    ///
    /// ```
    /// use switchyard_core::codec::Codec;
    /// assert_eq!(Codec::from_content_type("application/json; charset=utf-8"), Some(Codec::Json));
    /// assert_eq!(Codec::from_content_type("application/x-msgpack"), Some(Codec::MsgPack));
    /// assert_eq!(Codec::from_content_type("text/plain"), None);
    /// ```
    pub fn from_content_type(ct: &str) -> Option<Codec> {
        let mime = ct.split(';').next().unwrap_or("").trim();
        match mime.to_ascii_lowercase().as_str() {
            "application/json" | "application/cloudevents+json" => Some(Codec::Json),
            "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => {
                Some(Codec::MsgPack)
            }
            m if m.ends_with("+json") => Some(Codec::Json),
            _ => None,
        }
    }

    /// The codec named `json` or `msgpack` (as in a config file).
    pub fn from_name(name: &str) -> Option<Codec> {
        match name.to_ascii_lowercase().as_str() {
            "json" => Some(Codec::Json),
            "msgpack" | "messagepack" => Some(Codec::MsgPack),
            _ => None,
        }
    }

    /// Encodes `value`.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Bytes, CodecError> {
        Ok(match self {
            Codec::Json => serde_json::to_vec(value)?.into(),
            // Named (map) encoding keeps structs self-describing, so that a MessagePack payload
            // decodes into `serde_json::Value` with field names, like its JSON twin.
            Codec::MsgPack => rmp_serde::to_vec_named(value)?.into(),
        })
    }

    /// Decodes `bytes`.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, CodecError> {
        Ok(match self {
            Codec::Json => serde_json::from_slice(bytes)?,
            Codec::MsgPack => rmp_serde::from_slice(bytes)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_codecs_round_trip_the_same_value() {
        let v = json!({"args": [1, "two", [3.5]], "kwargs": {"key": null}});
        for codec in [Codec::Json, Codec::MsgPack] {
            let bytes = codec.encode(&v).unwrap();
            let back: serde_json::Value = codec.decode(&bytes).unwrap();
            assert_eq!(back, v, "{codec:?}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Codec::Json
            .decode::<serde_json::Value>(b"{not json")
            .is_err());
        assert!(Codec::MsgPack.decode::<serde_json::Value>(&[0xc1]).is_err());
    }
}
