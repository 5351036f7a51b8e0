//! The views' states and how each folds an event. Both are idempotent per event id where it
//! matters: an event delivered twice by an at-least-once log adds a book once.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use switchyard::{Envelope, HandlerError};

use crate::event::{Event, BOOK_ADDED, BOOK_READ};

/// How many books `lastreadbooks` answers with.
pub const LAST_READ: usize = 5;

/// `listbooks`: the books added, in the order they were added.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BookList {
    books: Vec<Map<String, Value>>,
    // Book id → index in `books`.
    index: BTreeMap<String, usize>,
}

impl BookList {
    /// Folds one event of the log.
    pub fn fold(&mut self, envelope: &Envelope) -> Result<(), HandlerError> {
        let event = Event::parse(&envelope.payload)?;
        if event.name == BOOK_ADDED {
            let book = event.added_book()?;
            let id = book
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if !self.index.contains_key(&id) {
                self.index.insert(id, self.books.len());
                self.books.push(book);
            }
        }
        Ok(())
    }

    /// The answer: the books, as JSON.
    pub fn answer(&self) -> Value {
        Value::Array(self.books.iter().cloned().map(Value::Object).collect())
    }
}

/// `lastreadbooks`: the last [`LAST_READ`] books read, newest last (a book read again moves to
/// the end), each the whole book when it was added on this log, else `{"id": …}`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LastRead {
    known: BTreeMap<String, Map<String, Value>>,
    last: VecDeque<String>,
}

impl LastRead {
    /// Folds one event of the log.
    pub fn fold(&mut self, envelope: &Envelope) -> Result<(), HandlerError> {
        let event = Event::parse(&envelope.payload)?;
        match event.name.as_str() {
            BOOK_ADDED => {
                let book = event.added_book()?;
                if let Some(id) = book.get("id").and_then(Value::as_str) {
                    self.known.insert(id.to_string(), book.clone());
                }
            }
            BOOK_READ => {
                let id = event.read_book_id()?;
                self.last.retain(|b| *b != id);
                self.last.push_back(id);
                while self.last.len() > LAST_READ {
                    self.last.pop_front();
                }
            }
            // Other events share the log: not this view's.
            _ => {}
        }
        Ok(())
    }

    /// The answer: the last books read, oldest first, as JSON.
    pub fn answer(&self) -> Value {
        Value::Array(
            self.last
                .iter()
                .map(|id| match self.known.get(id) {
                    Some(book) => Value::Object(book.clone()),
                    None => serde_json::json!({ "id": id }),
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(e: &Event) -> Envelope {
        Envelope::new("bookshelf", serde_json::to_vec(e).unwrap())
    }

    #[test]
    fn the_last_five_read_newest_last_a_reread_moves_to_the_end() {
        let mut v = LastRead::default();
        for i in 0..7 {
            let book = json!({"id": format!("b{i}"), "title": format!("T{i}")});
            v.fold(&env(&Event::new(
                BOOK_ADDED,
                json!(book.to_string()),
                false,
                false,
            )))
            .unwrap();
            v.fold(&env(&Event::new(
                BOOK_READ,
                json!({"id": format!("b{i}")}),
                false,
                false,
            )))
            .unwrap();
        }
        v.fold(&env(&Event::new(
            BOOK_READ,
            json!({"id": "b3"}),
            false,
            false,
        )))
        .unwrap();
        let ids: Vec<String> = v
            .answer()
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, ["b2", "b4", "b5", "b6", "b3"]);
        assert_eq!(v.answer()[4]["title"], "T3", "the whole book");
    }

    #[test]
    fn a_book_added_twice_is_listed_once_and_other_events_pass() {
        let mut v = BookList::default();
        let book = json!({"id": "b1", "title": "Dune"}).to_string();
        let added = Event::new(BOOK_ADDED, json!(book), false, false);
        v.fold(&env(&added)).unwrap();
        v.fold(&env(&added)).unwrap();
        v.fold(&env(&Event::new("book-lent", json!({}), true, true)))
            .unwrap();
        assert_eq!(v.answer(), json!([{"id": "b1", "title": "Dune"}]));
        assert!(v
            .fold(&Envelope::new("bookshelf", b"raw line".to_vec()))
            .is_err());
    }
}
