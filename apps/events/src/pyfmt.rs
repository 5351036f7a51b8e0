//! Python's `repr()` of strings and dicts, and `json.dumps` with `ensure_ascii`, so that error
//! bodies are byte-for-byte what the original Flask service sent. Written by hand: no crate
//! renders Python reprs.

use std::fmt::Write;

/// `repr(s)` for a Python `str`: single quotes unless the text holds a single quote and no
/// double quote.
///
/// ```
/// use switchyard_events::pyfmt::repr_str;
/// assert_eq!(repr_str("event_type"), "'event_type'");
/// assert_eq!(repr_str("it's"), "\"it's\"");
/// assert_eq!(repr_str("a\nb"), "'a\\nb'");
/// ```
pub fn repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !is_printable(c) => {
                let n = c as u32;
                if n < 0x100 {
                    let _ = write!(out, "\\x{n:02x}");
                } else if n < 0x10000 {
                    let _ = write!(out, "\\u{n:04x}");
                } else {
                    let _ = write!(out, "\\U{n:08x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `str.isprintable` for one character, closely enough for reprs: control and
/// format characters, separators other than the space, surrogates and private use are not.
fn is_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    let n = c as u32;
    !matches!(n,
        0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x180e | 0x200b..=0x200f | 0x202a..=0x202e
        | 0x2060..=0x2064 | 0x2066..=0x206f | 0xfeff | 0xfff9..=0xfffb | 0xe000..=0xf8ff
        | 0xf0000..=0x10ffff)
}

/// `repr()` of a `dict[str, list[str]]` in insertion order.
///
/// ```
/// use switchyard_events::pyfmt::repr_errors;
/// let e = vec![("event_type".to_string(), vec!["Not a valid string.".to_string()])];
/// assert_eq!(repr_errors(&e), "{'event_type': ['Not a valid string.']}");
/// ```
pub fn repr_errors(errors: &[(String, Vec<String>)]) -> String {
    let mut out = String::from("{");
    for (i, (field, messages)) in errors.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&repr_str(field));
        out.push_str(": [");
        for (j, m) in messages.iter().enumerate() {
            if j > 0 {
                out.push_str(", ");
            }
            out.push_str(&repr_str(m));
        }
        out.push(']');
    }
    out.push('}');
    out
}

/// A JSON string literal as Python's `json.dumps` writes it (`ensure_ascii=True`).
///
/// ```
/// use switchyard_events::pyfmt::json_str;
/// assert_eq!(json_str("h\u{e9}\"llo"), r#""h\u00e9\"llo""#);
/// assert_eq!(json_str("\u{1F600}"), r#""\ud83d\ude00""#);
/// ```
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `json.dumps({"error": message})`, as the original service answered errors.
pub fn error_body(message: &str) -> String {
    format!("{{\"error\": {}}}", json_str(message))
}
