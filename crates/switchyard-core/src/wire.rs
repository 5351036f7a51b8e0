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

/// Decodes one call that arrived as a JSON body (as every broker transport carries it). A
/// body that does not decode is a `BadRequest` for the caller, not a failure of the server.
pub fn decode_call(
    route: String,
    body: &[u8],
    headers: crate::message::Headers,
    deadline: Option<std::time::Instant>,
) -> Result<crate::call::CallRequest, RemoteError> {
    match serde_json::from_slice::<CallBody>(body) {
        Ok(body) => {
            let (args, token) = body.into_parts();
            let mut request = crate::call::CallRequest::new(route, args);
            request.token = token;
            request.headers = headers;
            request.deadline = deadline;
            Ok(request)
        }
        Err(e) => Err(RemoteError::new(
            crate::error::ErrorCode::BadRequest,
            format!("malformed request body: {e}"),
        )),
    }
}

/// A call's outcome as the reply body (JSON: the returned values, or
/// `{"error": {"code", "message"}}`) and, for a failure, its error code, which a transport
/// sends in a status header.
pub fn reply_body(
    outcome: Result<crate::values::Reply, RemoteError>,
) -> (Bytes, Option<crate::error::ErrorCode>) {
    use crate::error::ErrorCode;
    match outcome.map(|r| r.encode(Codec::Json)) {
        Ok(Ok(bytes)) => (bytes, None),
        Ok(Err(e)) => (
            error_body(&RemoteError::new(
                ErrorCode::Internal,
                format!("reply does not encode: {e}"),
            )),
            Some(ErrorCode::Internal),
        ),
        Err(error) => {
            let code = error.code;
            (error_body(&error), Some(code))
        }
    }
}

/// Decodes the reply to a call of `route`: the returned values when `failed` is false, the
/// remote error otherwise (the counterpart of [`reply_body`]).
pub fn decode_reply(
    route: String,
    failed: bool,
    payload: &[u8],
) -> Result<crate::values::Reply, crate::error::CallError> {
    use crate::error::{CallError, ErrorCode};
    if !failed {
        let values: Vec<Value> =
            serde_json::from_slice(payload).map_err(|e| CallError::Decode {
                route: route.clone(),
                expected: "a JSON array of returned values",
                reason: e.to_string(),
            })?;
        return Ok(crate::values::Reply::Wire(values));
    }
    let error = decode_error(payload).unwrap_or_else(|| {
        RemoteError::new(
            ErrorCode::Internal,
            format!(
                "undecodable error reply: {}",
                String::from_utf8_lossy(payload)
            ),
        )
    });
    Err(CallError::Remote { route, error })
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
