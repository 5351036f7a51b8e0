//! The bookshelf's events: `{"id", "name", "created", "safe", "idempotent", "payload"}`,
//! `book-added` with the book (as a JSON string) and `book-read` with `{"id": BOOK_ID}`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use switchyard::HandlerError;

/// A book was added; its payload is the book, with its `id`, as a JSON string.
pub const BOOK_ADDED: &str = "book-added";
/// A book was read; its payload is `{"id": BOOK_ID}`.
pub const BOOK_READ: &str = "book-read";

/// One event of the bookshelf's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The event's own id (a UUID).
    pub id: String,
    /// What happened: [`BOOK_ADDED`], [`BOOK_READ`], or a name the bookshelf does not know
    /// (passed over).
    pub name: String,
    /// When, RFC 3339 UTC.
    #[serde(default)]
    pub created: String,
    /// Whether replaying it is safe.
    #[serde(default)]
    pub safe: bool,
    /// Whether applying it twice is the same as once.
    #[serde(default)]
    pub idempotent: bool,
    /// What it carries.
    pub payload: Value,
}

impl Event {
    /// A new event named `name` carrying `payload`.
    pub fn new(name: &str, payload: Value, safe: bool, idempotent: bool) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_string(),
            created: switchyard::middleware::dead_letter::now_rfc3339(),
            safe,
            idempotent,
            payload,
        }
    }

    /// Reads an event from what a log holds; a refusal says why (the view dead-letters it with
    /// that reason).
    pub fn parse(bytes: &[u8]) -> Result<Self, HandlerError> {
        serde_json::from_slice(bytes).map_err(|e| {
            HandlerError::bad_request(format!(
                "not a bookshelf event (an object with id, name and payload): {e}"
            ))
        })
    }

    /// The book of a `book-added` event: its payload, a JSON string (or, from other writers,
    /// an object) of an object with an `id`.
    pub fn added_book(&self) -> Result<Map<String, Value>, HandlerError> {
        let book = match &self.payload {
            Value::String(s) => serde_json::from_str::<Value>(s).map_err(|e| {
                HandlerError::bad_request(format!("book-added payload is not a JSON book: {e}"))
            })?,
            other => other.clone(),
        };
        match book {
            Value::Object(b) if b.get("id").is_some_and(Value::is_string) => Ok(b),
            _ => Err(HandlerError::bad_request(
                "book-added payload is not a book with a string id",
            )),
        }
    }

    /// The book id of a `book-read` event.
    pub fn read_book_id(&self) -> Result<String, HandlerError> {
        match self.payload.get("id") {
            Some(Value::String(id)) => Ok(id.clone()),
            _ => Err(HandlerError::bad_request(
                "book-read payload has no string id",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_book_added_carries_the_book_as_a_json_string() {
        let book = json!({"id": "b1", "title": "Dune"});
        let e = Event::new(BOOK_ADDED, Value::String(book.to_string()), false, false);
        let read = Event::parse(&serde_json::to_vec(&e).unwrap()).unwrap();
        assert_eq!(Value::Object(read.added_book().unwrap()), book);
        assert!(read.created.ends_with('Z'));
    }

    #[test]
    fn what_is_not_an_event_is_refused_with_why() {
        let e = Event::parse(b"hello from kafkacat").unwrap_err();
        assert!(e.message().contains("not a bookshelf event"), "{e:?}");
        let no_id = Event::new(BOOK_READ, json!({"title": "x"}), true, true);
        assert!(no_id.read_book_id().is_err());
        let bad_book = Event::new(BOOK_ADDED, json!("{not json"), false, false);
        assert!(bad_book.added_book().is_err());
    }
}
