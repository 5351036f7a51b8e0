//! The message model: one [`Envelope`] type travels on every transport.
//!
//! An envelope is an id, a subject (the route of a call or the topic of an event), string
//! [`Headers`] and opaque payload bytes, as in Watermill's `Message`. Well-known headers have
//! typed accessors; everything else stays a plain string pair so that a transport can carry it
//! in its native header mechanism (HTTP headers, AMQP properties, Kafka record headers…).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

/// Header names that switchyard itself understands. Transports map them onto their native
/// equivalents (for events, the CloudEvents binding of that protocol).
pub mod header {
    /// MIME type of the payload (`application/json`, `application/msgpack`).
    pub const CONTENT_TYPE: &str = "content-type";
    /// Id that ties a reply to its request.
    pub const CORRELATION_ID: &str = "correlation-id";
    /// Where a reply should be sent (broker transports).
    pub const REPLY_TO: &str = "reply-to";
    /// On a message replayed from a dead letter: that dead letter's id. The message keeps its
    /// own id (an inbox knows it); a broker that de-duplicates by id within a window
    /// (JetStream) must not take the replay for the first publish.
    pub const REPLAY_OF: &str = "x-replay-of";
    /// Where a message read by a log reader stands in its log: `LANE/PLACE` (a Kafka
    /// partition and offset, `0/` and a JetStream sequence or a Redis Streams entry id).
    pub const LOG_POSITION: &str = "x-log-position";
    /// Time the sender still allows, in milliseconds. Relative, not absolute, so that clock skew
    /// between hosts does not matter (the choice tarpc makes).
    pub const DEADLINE_MS: &str = "x-deadline-ms";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state.
    pub const TRACESTATE: &str = "tracestate";
    /// Per-route token of microservices_connector's `setRule`.
    pub const TOKEN: &str = "x-token";
    /// Version of the service that produced the message.
    pub const SERVICE_VERSION: &str = "x-service-version";
    /// The versions of the service a call may go to: a semver requirement (`^2`, `=1.4.0`).
    pub const VERSION_REQ: &str = "x-version-req";
    /// The key whose calls go to the same instance of a service (sharding).
    pub const SHARD_KEY: &str = "x-shard-key";
    /// Key whose messages must stay in order (partition key).
    pub const ORDERING_KEY: &str = "x-ordering-key";
    /// Delivery attempt, starting at 1.
    pub const ATTEMPT: &str = "x-attempt";
    /// Why a message went to a dead-letter destination.
    pub const ERROR: &str = "x-error";
    /// When an event stops being worth handling: milliseconds since the Unix epoch. Absolute,
    /// unlike a call's [`DEADLINE_MS`], because an event waits in a broker for an unknown time;
    /// hosts' clocks are assumed in step (NTP), as CloudEvents' `time` assumes.
    pub const EXPIRES_AT: &str = "x-expires-at";
    /// CloudEvents `source` attribute.
    pub const CE_SOURCE: &str = "ce-source";
    /// CloudEvents `type` attribute.
    pub const CE_TYPE: &str = "ce-type";
    /// CloudEvents `specversion` attribute.
    pub const CE_SPECVERSION: &str = "ce-specversion";
    /// CloudEvents `time` attribute.
    pub const CE_TIME: &str = "ce-time";
    /// CloudEvents `subject` attribute.
    pub const CE_SUBJECT: &str = "ce-subject";
}

/// String headers of a message, kept sorted so that encodings are deterministic.
///
/// A sorted `Vec`, not a `BTreeMap`: a message carries a handful of headers, and the map's
/// first insert allocated a 544-byte node for every envelope made or received (a `Vec` of four
/// is 192 bytes, and a lookup is a binary search over a few entries). Shared until changed:
/// a consumer copies each message on its way through its layers (the dead-letter layer keeps
/// the original, a retry in place keeps one for the next attempt), and a copy of the headers
/// was two allocations a header; now it is a count, and a write copies them only if they are
/// shared. None at all while empty: a call made in process with no header allocates nothing.
#[derive(Clone, Default)]
pub struct Headers(Option<Arc<Vec<(String, String)>>>);

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.entries() == other.entries()
    }
}

impl Eq for Headers {}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Headers").field(&self.entries()).finish()
    }
}

impl Headers {
    /// An empty header set.
    pub fn new() -> Self {
        Self::default()
    }

    fn entries(&self) -> &[(String, String)] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    /// The entries to change: copied first if another message shares them.
    fn entries_mut(&mut self) -> &mut Vec<(String, String)> {
        Arc::make_mut(self.0.get_or_insert_with(Default::default))
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.entries()
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
    }

    /// The value of `name`, if set. Names are case-insensitive (stored lower-case).
    pub fn get(&self, name: &str) -> Option<&str> {
        let found = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.find(&name.to_ascii_lowercase())
        } else {
            self.find(name)
        };
        found.ok().map(|i| self.entries()[i].1.as_str())
    }

    /// Sets `name` to `value`, replacing any earlier value.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let mut name = name.into();
        name.make_ascii_lowercase();
        match self.find(&name) {
            Ok(i) => self.entries_mut()[i].1 = value.into(),
            Err(i) => self.entries_mut().insert(i, (name, value.into())),
        }
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let i = self.find(&name.to_ascii_lowercase()).ok()?;
        Some(self.entries_mut().remove(i).1)
    }

    /// All headers, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries().iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    /// The remaining time the sender allows, from [`header::DEADLINE_MS`].
    pub fn deadline(&self) -> Option<Duration> {
        self.get(header::DEADLINE_MS)
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis)
    }

    /// Sets the remaining time the sender allows.
    pub fn set_deadline(&mut self, remaining: Duration) {
        self.insert(header::DEADLINE_MS, remaining.as_millis().to_string());
    }

    /// The delivery attempt (1 for the first delivery).
    pub fn attempt(&self) -> u32 {
        self.get(header::ATTEMPT)
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut h = Headers::new();
        for (k, v) in iter {
            h.insert(k, v);
        }
        h
    }
}

/// One message: what every transport moves.
///
/// ```
/// use switchyard_core::message::{Envelope, header};
/// let env = Envelope::new("orders", br#"{"id":1}"#.to_vec())
///     .with_header(header::ORDERING_KEY, "customer-7");
/// assert_eq!(env.subject, "orders");
/// assert_eq!(env.headers.get("x-ordering-key"), Some("customer-7"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Unique id of this message (CloudEvents `id`). Redeliveries keep the id.
    pub id: String,
    /// The route of a call or the topic of an event.
    pub subject: String,
    /// Metadata.
    pub headers: Headers,
    /// The encoded body.
    pub payload: Bytes,
}

impl Envelope {
    /// A message with a fresh id and a JSON content type.
    pub fn new(subject: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        let mut headers = Headers::new();
        headers.insert(
            header::CONTENT_TYPE,
            crate::codec::Codec::Json.content_type(),
        );
        Self {
            id: new_id(),
            subject: subject.into(),
            headers,
            payload: payload.into(),
        }
    }

    /// Adds a header (builder style).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// This event expires `ttl` from now: a consumer that gets it later dead-letters it
    /// instead of handling it ([`header::EXPIRES_AT`]).
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use switchyard_core::message::Envelope;
    ///
    /// let env = Envelope::new("prices", "{}").with_ttl(Duration::from_secs(60));
    /// let now = SystemTime::now();
    /// assert!(env.expired_by(now).is_none());
    /// assert!(env.expired_by(now + Duration::from_secs(61)).is_some());
    /// ```
    pub fn with_ttl(mut self, ttl: std::time::Duration) -> Self {
        let at = std::time::SystemTime::now() + ttl;
        let ms = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        self.headers.insert(header::EXPIRES_AT, ms.to_string());
        self
    }

    /// How long ago, as of `now`, this event expired; `None` if it has not (or never does).
    pub fn expired_by(&self, now: std::time::SystemTime) -> Option<std::time::Duration> {
        let ms: u64 = self.headers.get(header::EXPIRES_AT)?.parse().ok()?;
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        now.duration_since(at).ok()
    }

    /// The ordering key, if any.
    pub fn ordering_key(&self) -> Option<&str> {
        self.headers.get(header::ORDERING_KEY)
    }

    /// The CloudEvents 1.0 context attributes of this message with their values. `type`
    /// defaults to the subject and `source` to `/switchyard`, so that every event we send is a
    /// well-formed CloudEvent. Nothing is allocated: transports map each attribute to their
    /// binding's header name (see [`cloud_event_names!`](crate::cloud_event_names)).
    ///
    /// ```
    /// use switchyard_core::message::{CloudEventAttribute as Ce, Envelope};
    ///
    /// let env = Envelope::new("user.joined", "{}");
    /// let attrs: Vec<_> = env.cloud_event_attributes().collect();
    /// assert!(attrs.contains(&(Ce::Type, "user.joined")));
    /// assert!(attrs.contains(&(Ce::Source, "/switchyard")));
    /// ```
    pub fn cloud_event_attributes(&self) -> impl Iterator<Item = (CloudEventAttribute, &str)> {
        use CloudEventAttribute as Ce;
        [
            Some((Ce::SpecVersion, "1.0")),
            Some((Ce::Id, self.id.as_str())),
            Some((
                Ce::Type,
                self.headers
                    .get(header::CE_TYPE)
                    .unwrap_or(self.subject.as_str()),
            )),
            Some((
                Ce::Source,
                self.headers.get(header::CE_SOURCE).unwrap_or("/switchyard"),
            )),
            self.headers.get(header::CE_TIME).map(|t| (Ce::Time, t)),
            self.headers
                .get(header::CE_SUBJECT)
                .map(|s| (Ce::Subject, s)),
            self.headers
                .get(header::CONTENT_TYPE)
                .map(|ct| (Ce::DataContentType, ct)),
        ]
        .into_iter()
        .flatten()
    }
}

/// The CloudEvents context attributes switchyard sends and reads, in the order of
/// [`cloud_event_names!`](crate::cloud_event_names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudEventAttribute {
    /// `specversion` (always `1.0`).
    SpecVersion,
    /// `id`: the envelope's id.
    Id,
    /// `type`: the `ce-type` header, else the subject.
    Type,
    /// `source`: the `ce-source` header, else `/switchyard`.
    Source,
    /// `time`: the `ce-time` header.
    Time,
    /// `subject`: the `ce-subject` header.
    Subject,
    /// `datacontenttype`: the `content-type` header.
    DataContentType,
}

impl CloudEventAttribute {
    /// Every attribute, in declaration order.
    pub const ALL: [Self; 7] = [
        Self::SpecVersion,
        Self::Id,
        Self::Type,
        Self::Source,
        Self::Time,
        Self::Subject,
        Self::DataContentType,
    ];

    /// The attribute's CloudEvents name (`specversion`, `id`, …).
    pub const fn name(self) -> &'static str {
        CE_NAMES[self as usize]
    }

    /// The switchyard header that carries the attribute on a received envelope (`ce-type`, …;
    /// `content-type` for `datacontenttype`; `ce-id` is read into [`Envelope::id`] instead).
    pub const fn header(self) -> &'static str {
        CE_HEADERS[self as usize]
    }

    /// The attribute called `name` (exact, as the bindings write it).
    pub fn from_name(name: &str) -> Option<Self> {
        CE_NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| Self::ALL[i])
    }
}

const CE_NAMES: [&str; 7] = crate::cloud_event_names!("");
const CE_HEADERS: [&str; 7] = [
    "ce-specversion",
    "ce-id",
    header::CE_TYPE,
    header::CE_SOURCE,
    header::CE_TIME,
    header::CE_SUBJECT,
    header::CONTENT_TYPE,
];

/// The CloudEvents attribute names with a binding's prefix, as a `[&'static str; 7]` indexed
/// by [`CloudEventAttribute`] (`names[attr as usize]`), built at compile time so that
/// publishing allocates no header names.
///
/// ```
/// use switchyard_core::message::CloudEventAttribute as Ce;
///
/// const KAFKA: [&str; 7] = switchyard_core::cloud_event_names!("ce_");
/// assert_eq!(KAFKA[Ce::Type as usize], "ce_type");
/// ```
#[macro_export]
macro_rules! cloud_event_names {
    ($prefix:literal) => {
        [
            concat!($prefix, "specversion"),
            concat!($prefix, "id"),
            concat!($prefix, "type"),
            concat!($prefix, "source"),
            concat!($prefix, "time"),
            concat!($prefix, "subject"),
            concat!($prefix, "datacontenttype"),
        ]
    };
}

/// A new random message id (UUID v4, hyphenated).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_case_insensitive() {
        let mut h = Headers::new();
        h.insert("Content-Type", "application/json");
        assert_eq!(h.get("content-type"), Some("application/json"));
        assert_eq!(h.get("CONTENT-TYPE"), Some("application/json"));
        assert_eq!(
            h.remove("Content-type").as_deref(),
            Some("application/json")
        );
        assert!(h.is_empty());
    }

    #[test]
    fn a_copy_of_headers_changes_apart_from_the_original() {
        let mut a = Headers::new();
        assert_eq!(a, Headers::new());
        a.insert("x-one", "1");
        let mut b = a.clone();
        b.insert("x-one", "changed");
        b.insert("x-two", "2");
        assert_eq!(a.get("x-one"), Some("1"));
        assert_eq!(a.get("x-two"), None);
        assert_eq!(b.get("x-one"), Some("changed"));
        let mut c = a.clone();
        assert_eq!(c, a);
        c.remove("x-one");
        assert_eq!(a.len(), 1, "the original keeps what the copy removed");
        assert_eq!(c, Headers::new(), "emptied equals empty");
        assert_eq!(format!("{c:?}"), "Headers([])");
    }

    #[test]
    fn headers_stay_sorted_and_unique_in_any_insertion_order() {
        let names = ["x-b", "ce-id", "x-a", "content-type", "ce-type", "x-c"];
        // Every rotation of the insertion order, each name inserted twice (the later value wins).
        for shift in 0..names.len() {
            let mut h = Headers::new();
            for (i, n) in names
                .iter()
                .cycle()
                .skip(shift)
                .take(names.len())
                .enumerate()
            {
                h.insert(*n, "first");
                h.insert(n.to_uppercase(), format!("v{i}"));
            }
            let got: Vec<&str> = h.iter().map(|(k, _)| k).collect();
            let mut want = names.to_vec();
            want.sort_unstable();
            assert_eq!(got, want, "shift {shift}");
            assert!(
                h.iter().all(|(_, v)| v.starts_with('v')),
                "later values replace"
            );
            assert_eq!(h.remove("X-A").map(|v| v.starts_with('v')), Some(true));
            assert_eq!(h.get("x-a"), None);
            assert_eq!(h.len(), names.len() - 1);
        }
    }

    #[test]
    fn deadline_round_trips_as_relative_millis() {
        let mut h = Headers::new();
        h.set_deadline(Duration::from_millis(1500));
        assert_eq!(h.get(header::DEADLINE_MS), Some("1500"));
        assert_eq!(h.deadline(), Some(Duration::from_millis(1500)));
        h.insert(header::DEADLINE_MS, "soon");
        assert_eq!(h.deadline(), None, "garbage is ignored, not a panic");
    }

    #[test]
    fn cloud_event_attributes_default_type_to_subject() {
        let env = Envelope::new("user.joined", "{}");
        let attrs: Vec<_> = env.cloud_event_attributes().collect();
        use CloudEventAttribute as Ce;
        assert!(attrs.contains(&(Ce::Type, "user.joined")));
        assert!(attrs.contains(&(Ce::SpecVersion, "1.0")));
        assert!(attrs.contains(&(Ce::Id, env.id.as_str())));
        assert!(attrs.contains(&(Ce::DataContentType, "application/json")));
        assert!(
            !attrs.iter().any(|(a, _)| *a == Ce::Time),
            "absent optional attributes are left out"
        );
    }

    #[test]
    fn attribute_names_line_up_with_the_enum() {
        for a in CloudEventAttribute::ALL {
            assert_eq!(CloudEventAttribute::from_name(a.name()), Some(a));
            assert_eq!(
                a.header().trim_start_matches("ce-"),
                a.name().replace("datacontenttype", "content-type")
            );
        }
        assert_eq!(CloudEventAttribute::from_name("nope"), None);
    }
}
