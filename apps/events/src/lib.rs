//! The event consumer and propagator of a Flask event service, rebuilt on switchyard:
//!
//! - the **event consumer** ([`consumer`]): `POST /event` validates each event exactly as the
//!   original Flask service did (same status codes, same bodies), appends every accepted one
//!   to a JSON-lines file, and answers 200 only once the line is on disk — many concurrent
//!   events share one `fsync` (group commit, [`store`]). It can also take events from any
//!   switchyard transport URL, with the same validation and the same file.
//! - the **event propagator** ([`propagator`]): sends events picked at random from a file, on
//!   an interval or at a rate, to an HTTP endpoint or any transport URL, and sums up what
//!   happened.

pub mod consumer;
pub mod dotenv;
pub mod propagator;
pub mod pyfmt;
pub mod store;
pub mod validate;

/// The built-in dataset: eleven events, the last one deliberately invalid.
pub const DEFAULT_EVENTS: &str = include_str!("../data/events.json");
