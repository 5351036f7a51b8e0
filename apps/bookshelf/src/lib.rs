//! The bookshelf, an event-sourced application on switchyard.
//!
//! Two aggregates turn commands into events appended to one topic read as a log (`newbook`:
//! a book added; `readbook`: a book read); two views fold that log into answers served over
//! HTTP (`listbooks`: the books added; `lastreadbooks`: the last five read); a gateway offers
//! one API over them and finds them through service discovery. Each registers itself on
//! start and removes itself on stop. The log is Kafka by default, JetStream or Redis Streams by
//! URL; a view replays it from the beginning when it starts (or from its snapshot).
//!
//! The views are [`View`](switchyard::event_log::View)s: what they fold goes through the log
//! reader's consumer stack, so an event a view cannot read (a line pushed raw onto the topic by
//! a plain Kafka client, say) is dead-lettered to `<topic>.dlq` with the reason.

pub mod demo;
pub mod event;
pub mod gateway;
pub mod serve;
pub mod views;

pub use demo::demo;
pub use serve::{start, BookshelfError, Options, Running, Which};
