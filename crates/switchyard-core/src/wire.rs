//! The call and error bodies every byte-carrying transport uses, so that a call looks the same
//! over HTTP, NATS or any broker: microservices_connector 0.3.7's
//! `{"args": [...], "kwargs": {...}, "token": null}`, and `{"error": {"code", "message"}}`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::codec::{Codec, CodecError};
use crate::error::RemoteError;
use crate::values::Args;

#[derive(Serialize)]
struct OutgoingCall<'a> {
    args: &'a [Value],
    kwargs: &'a Map<String, Value>,
    token: Option<&'a str>,
}

/// Encodes a call's body. Local arguments are written straight from the Rust value.
pub fn encode_call(args: &Args, token: Option<&str>, codec: Codec) -> Result<Bytes, CodecError> {
    match args {
        Args::Local(v) => v.encode_call(token, codec),
        Args::Wire { args, kwargs } => codec.encode(&OutgoingCall {
            args,
            kwargs,
            token,
        }),
    }
}

/// A received call body; every part may be missing.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallBody {
    /// Positional arguments.
    #[serde(default)]
    pub args: Option<Vec<Value>>,
    /// Keyword arguments.
    #[serde(default)]
    pub kwargs: Option<Map<String, Value>>,
    /// The route's token.
    #[serde(default)]
    pub token: Option<String>,
}

impl CallBody {
    /// The arguments and the token.
    pub fn into_parts(self) -> (Args, Option<String>) {
        (
            Args::Wire {
                args: self.args.unwrap_or_default(),
                kwargs: self.kwargs.unwrap_or_default(),
            },
            self.token,
        )
    }
}

#[derive(Serialize, Deserialize)]
struct ErrorBody {
    error: RemoteError,
}

/// `{"error": {"code": …, "message": …}}` as JSON.
pub fn error_body(error: &RemoteError) -> Bytes {
    serde_json::to_vec(&ErrorBody {
        error: error.clone(),
    })
    .map(Bytes::from)
    .unwrap_or_else(|_| {
        Bytes::from_static(br#"{"error":{"code":"internal","message":"unencodable error"}}"#)
    })
}

/// The error in an error body, if it is one.
pub fn decode_error(body: &[u8]) -> Option<RemoteError> {
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn bodies_round_trip() {
        let bytes = encode_call(&Args::local(("a", 1)), Some("t"), Codec::Json).unwrap();
        let (args, token) = serde_json::from_slice::<CallBody>(&bytes)
            .unwrap()
            .into_parts();
        assert_eq!(token.as_deref(), Some("t"));
        assert_eq!(
            args.into_wire().unwrap().0,
            vec![Value::from("a"), Value::from(1)]
        );
        let e = RemoteError::new(ErrorCode::NotFound, "no route /x");
        assert_eq!(decode_error(&error_body(&e)), Some(e));
        assert_eq!(decode_error(b"[1]"), None);
    }
}
