//! Event validation: the original Flask service's schema, reproduced message for message, or any JSON Schema.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::pyfmt::{self, repr_errors};

/// Why an event was refused; the text goes into the `error` field of the 400 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Valid JSON that breaks the schema: `Validation error - {...}`.
    Invalid(String),
    /// Not JSON at all: `Unknown error - ...`.
    NotJson(String),
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Invalid(m) | Rejection::NotJson(m) => f.write_str(m),
        }
    }
}

impl Rejection {
    /// The reply body, exactly as the original wrote it (`json.dumps`).
    pub fn body(&self) -> String {
        pyfmt::error_body(&self.to_string())
    }
}

/// A valid event, ready to store and to echo.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// Compact JSON with sorted keys and ASCII escapes (Flask's `jsonify`), without newline.
    pub line: String,
}

/// Which schema events must match.
pub enum Validator {
    /// Exactly two string fields, `event_type` and `event_payload` (the original Flask service's schema).
    Seed002,
    /// A JSON Schema.
    JsonSchema(Box<jsonschema::Validator>),
}

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Validator::Seed002 => f.write_str("Validator::Seed002"),
            Validator::JsonSchema(_) => f.write_str("Validator::JsonSchema"),
        }
    }
}

/// A JSON Schema file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// Unreadable.
    #[error("cannot read schema {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not JSON, or not a valid schema.
    #[error("invalid schema {path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

const KNOWN: [&str; 2] = ["event_payload", "event_type"];

/// The keys of a top-level object in input order (serde_json's map is sorted).
struct KeyOrder(Vec<String>);

impl<'de> Deserialize<'de> for KeyOrder {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyOrder;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyOrder, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    keys.push(k);
                }
                Ok(KeyOrder(keys))
            }
        }
        d.deserialize_map(V)
    }
}

impl Validator {
    /// Loads a JSON Schema from `path`.
    pub fn from_schema_file(path: &Path) -> Result<Self, SchemaError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Read {
            path: p.clone(),
            source,
        })?;
        let schema: Value = serde_json::from_str(&text).map_err(|e| SchemaError::Invalid {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        let v = jsonschema::validator_for(&schema).map_err(|e| SchemaError::Invalid {
            path: p,
            reason: e.to_string(),
        })?;
        Ok(Validator::JsonSchema(Box::new(v)))
    }

    /// Validates one request body.
    ///
    /// ```
    /// use switchyard_events::validate::{Validator, Rejection};
    /// let v = Validator::Seed002;
    /// let ok = v.check(br#"{"event_type": "message", "event_payload": "hello"}"#).unwrap();
    /// assert_eq!(ok.line, r#"{"event_payload":"hello","event_type":"message"}"#);
    /// let err = v.check(br#"{"event_type": 123, "event_payload": {}}"#).unwrap_err();
    /// assert_eq!(err.body(), r#"{"error": "Validation error - {'event_payload': ['Not a valid string.'], 'event_type': ['Not a valid string.']}"}"#);
    /// ```
    pub fn check(&self, body: &[u8]) -> Result<Accepted, Rejection> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            Rejection::NotJson(format!(
                "Unknown error - 400 Bad Request: Failed to decode JSON object: {e}"
            ))
        })?;
        match self {
            Validator::Seed002 => check_seed002(body, &value)?,
            Validator::JsonSchema(schema) => {
                let mut errors: Vec<(String, Vec<String>)> = Vec::new();
                for e in schema.iter_errors(&value) {
                    let path = format!("${}", e.instance_path());
                    match errors.iter_mut().find(|(p, _)| *p == path) {
                        Some((_, msgs)) => msgs.push(e.to_string()),
                        None => errors.push((path, vec![e.to_string()])),
                    }
                }
                if !errors.is_empty() {
                    return Err(Rejection::Invalid(format!(
                        "Validation error - {}",
                        repr_errors(&errors)
                    )));
                }
            }
        }
        Ok(Accepted {
            line: compact_ascii(&value),
        })
    }
}

fn check_seed002(body: &[u8], value: &Value) -> Result<(), Rejection> {
    let invalid = |errors: &[(String, Vec<String>)]| {
        Rejection::Invalid(format!("Validation error - {}", repr_errors(errors)))
    };
    let Value::Object(obj) = value else {
        return Err(invalid(&[(
            "_schema".into(),
            vec!["Invalid input type.".into()],
        )]));
    };
    let mut errors: Vec<(String, Vec<String>)> = Vec::new();
    for field in KNOWN {
        let msg = match obj.get(field) {
            None => "Missing data for required field.",
            Some(Value::Null) => "Field may not be null.",
            Some(Value::String(_)) => continue,
            Some(_) => "Not a valid string.",
        };
        errors.push((field.to_string(), vec![msg.to_string()]));
    }
    if obj.keys().any(|k| !KNOWN.contains(&k.as_str())) {
        // Unknown keys are reported in the order they appear in the input.
        let order = serde_json::from_slice::<KeyOrder>(body)
            .map(|k| k.0)
            .unwrap_or_default();
        let mut seen = HashSet::new();
        for k in order {
            if !KNOWN.contains(&k.as_str()) && seen.insert(k.clone()) {
                errors.push((k, vec!["Unknown field.".to_string()]));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(invalid(&errors))
    }
}

/// Compact JSON, keys sorted, non-ASCII escaped: what Flask's `jsonify` wrote.
pub fn compact_ascii(value: &Value) -> String {
    let mut out = String::new();
    write_value(value, &mut out);
    out
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => out.push_str(&pyfmt::json_str(s)),
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(v, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // serde_json's Map is a BTreeMap here: already sorted.
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&pyfmt::json_str(k));
                out.push(':');
                write_value(v, out);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> String {
        Validator::Seed002
            .check(body.as_bytes())
            .unwrap_err()
            .body()
    }

    #[test]
    fn every_message_of_the_original() {
        assert_eq!(
            err("{}"),
            r#"{"error": "Validation error - {'event_payload': ['Missing data for required field.'], 'event_type': ['Missing data for required field.']}"}"#
        );
        assert_eq!(
            err(r#"{"event_type": "m", "event_payload": 5}"#),
            r#"{"error": "Validation error - {'event_payload': ['Not a valid string.']}"}"#
        );
        assert_eq!(
            err(r#"{"event_type": true, "event_payload": "x"}"#),
            r#"{"error": "Validation error - {'event_type': ['Not a valid string.']}"}"#
        );
        assert_eq!(
            err(r#"{"event_type": null, "event_payload": "x"}"#),
            r#"{"error": "Validation error - {'event_type': ['Field may not be null.']}"}"#
        );
        assert_eq!(
            err(r#"{"zeta": 1, "event_type": "m", "alpha": 2, "event_payload": "x"}"#),
            r#"{"error": "Validation error - {'zeta': ['Unknown field.'], 'alpha': ['Unknown field.']}"}"#
        );
        assert_eq!(
            err(r#"{"x": 1, "event_type": 1}"#),
            r#"{"error": "Validation error - {'event_payload': ['Missing data for required field.'], 'event_type': ['Not a valid string.'], 'x': ['Unknown field.']}"}"#
        );
        for body in ["[]", "null", "\"text\"", "42"] {
            assert_eq!(
                err(body),
                r#"{"error": "Validation error - {'_schema': ['Invalid input type.']}"}"#,
                "{body}"
            );
        }
    }

    #[test]
    fn empty_strings_and_any_type_are_fine() {
        let ok = Validator::Seed002
            .check(br#"{"event_type": "", "event_payload": ""}"#)
            .unwrap();
        assert_eq!(ok.line, r#"{"event_payload":"","event_type":""}"#);
        let ok = Validator::Seed002
            .check("{\"event_type\": \"caf\u{e9}\", \"event_payload\": \"x\"}".as_bytes())
            .unwrap();
        assert_eq!(ok.line, r#"{"event_payload":"x","event_type":"caf\u00e9"}"#);
    }

    #[test]
    fn odd_unknown_keys_are_rendered_as_python_would() {
        assert_eq!(
            err(r#"{"event_type": "m", "event_payload": "x", "it's": 1, "a\"b": 2}"#),
            r#"{"error": "Validation error - {\"it's\": ['Unknown field.'], 'a\"b': ['Unknown field.']}"}"#
        );
    }

    #[test]
    fn not_json_is_an_unknown_error() {
        let e = Validator::Seed002.check(b"{oops").unwrap_err();
        assert!(matches!(e, Rejection::NotJson(_)));
        assert!(
            e.body().starts_with(r#"{"error": "Unknown error - "#),
            "{}",
            e.body()
        );
    }

    #[test]
    fn json_schema_errors_name_the_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("schema.json");
        std::fs::write(&path, r#"{"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}}}"#).unwrap();
        let v = Validator::from_schema_file(&path).unwrap();
        assert!(v.check(br#"{"id": 1, "tags": ["a"]}"#).is_ok());
        let e = v
            .check(br#"{"id": "x", "tags": ["a", 2]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'$/id'") && e.contains("'$/tags/1'"), "{e}");
        assert!(Validator::from_schema_file(&dir.path().join("missing.json")).is_err());
    }
}
