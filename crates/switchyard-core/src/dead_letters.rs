//! Kept dead letters, read back (what `yard dlq` does): grouped by the fingerprint of their
//! failure, shown, replayed to the topic they came from, or discarded.
//!
//! Dead letters are kept for the consumer group
//! [`DEAD_LETTER_GROUP`](crate::middleware::dead_letter::DEAD_LETTER_GROUP) (see
//! [`Publisher::keep`]); this reads them as a member of that group, so it works the same on
//! every transport that keeps them. Reading is not consuming: what is only looked at, or
//! does not match the filter, is handed back to the group unsettled.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;

use crate::error::TransportError;
use crate::message::{header, Envelope};
use crate::middleware::dead_letter::{
    ATTEMPTS, DEAD_LETTER_GROUP, ERROR_CODE, FAILED_AT, FINGERPRINT, FIRST_FAILED_AT, ORIGINAL_ID,
    ORIGINAL_SHA256, ORIGINAL_SIZE, ORIGINAL_TOPIC,
};
use crate::transport::{Delivery, Publisher, SubscribeOptions, Subscription, Transport};

/// The dead letters of one topic on one transport.
pub struct DeadLetters {
    transport: Arc<dyn Transport>,
    topic: String,
    dead_letter_topic: String,
}

/// Which dead letters a command takes: all of them by default; each field set narrows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Filter {
    /// Only this fingerprint (see [`FINGERPRINT`]).
    pub fingerprint: Option<String>,
    /// Only this error code (`internal`, `bad_request`, …).
    pub code: Option<String>,
    /// Only those whose error says this (a part of it).
    pub error: Option<String>,
}

impl Filter {
    /// A filter from `KEY=VALUE` items: `fingerprint=…`, `code=…`, `error=…`.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, String> {
        let mut filter = Self::default();
        for item in items {
            let item = item.as_ref();
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("filter {item:?} is not KEY=VALUE"))?;
            let slot = match key {
                "fingerprint" => &mut filter.fingerprint,
                "code" => &mut filter.code,
                "error" => &mut filter.error,
                other => {
                    return Err(format!(
                        "unknown filter {other:?}: fingerprint, code or error"
                    ))
                }
            };
            *slot = Some(value.to_string());
        }
        Ok(filter)
    }

    /// Whether `letter` is one this filter takes.
    pub fn matches(&self, letter: &Envelope) -> bool {
        let h = &letter.headers;
        self.fingerprint
            .as_deref()
            .is_none_or(|f| h.get(FINGERPRINT) == Some(f))
            && self
                .code
                .as_deref()
                .is_none_or(|c| h.get(ERROR_CODE) == Some(c))
            && self
                .error
                .as_deref()
                .is_none_or(|e| h.get(header::ERROR).is_some_and(|why| why.contains(e)))
    }
}

/// Dead letters of one cause: what `yard dlq list` prints a line of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Failure {
    /// The fingerprint they share.
    pub fingerprint: String,
    /// Their error code.
    pub code: String,
    /// The error of the first of them.
    pub error: String,
    /// How many.
    pub count: usize,
    /// When the first of them first failed (RFC 3339), as far as they say.
    pub first_failed_at: String,
    /// When the last of them failed.
    pub last_failed_at: String,
}

/// Dead letters held unsettled by one reader: looked at, then handed back
/// ([`Held::release`]) or settled for good ([`Held::discard`]).
pub struct Held {
    letters: Vec<Delivery>,
    // Kept open until the letters are settled: on some brokers an acknowledgement goes
    // through the subscription's channel.
    _subscription: Subscription,
}

impl Held {
    /// The dead letters held, in the order read.
    pub fn letters(&self) -> impl Iterator<Item = &Envelope> {
        self.letters.iter().map(|d| &d.envelope)
    }

    /// How many are held.
    pub fn len(&self) -> usize {
        self.letters.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.letters.is_empty()
    }

    /// The held dead letters grouped by fingerprint, the most numerous first.
    pub fn failures(&self) -> Vec<Failure> {
        let mut by: BTreeMap<String, Failure> = BTreeMap::new();
        for letter in self.letters() {
            let h = &letter.headers;
            let fingerprint = h.get(FINGERPRINT).unwrap_or("-").to_string();
            let at = h.get(FAILED_AT).unwrap_or_default().to_string();
            let first = h.get(FIRST_FAILED_AT).unwrap_or(at.as_str()).to_string();
            let failure = by.entry(fingerprint.clone()).or_insert_with(|| Failure {
                fingerprint,
                code: h.get(ERROR_CODE).unwrap_or("-").to_string(),
                error: h.get(header::ERROR).unwrap_or_default().to_string(),
                count: 0,
                first_failed_at: first.clone(),
                last_failed_at: at.clone(),
            });
            failure.count += 1;
            // RFC 3339 in UTC with a fixed number of digits orders as text.
            if !first.is_empty()
                && (failure.first_failed_at.is_empty() || first < failure.first_failed_at)
            {
                failure.first_failed_at = first;
            }
            if at > failure.last_failed_at {
                failure.last_failed_at = at;
            }
        }
        let mut failures: Vec<Failure> = by.into_values().collect();
        failures.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(a.fingerprint.cmp(&b.fingerprint))
        });
        failures
    }

    /// Hands every held dead letter back to the group, unsettled and in order.
    pub async fn release(self) {
        for letter in self.letters {
            let _ = letter.nack(None).await;
        }
    }

    /// Settles every held dead letter for good; returns how many.
    pub async fn discard(self) -> Result<usize, TransportError> {
        let n = self.letters.len();
        for letter in self.letters {
            letter.ack().await?;
        }
        Ok(n)
    }
}

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Replayed {
    /// Published again to their original topic, and settled.
    pub replayed: usize,
    /// Left in place: the filter did not take them.
    pub skipped: usize,
}

impl DeadLetters {
    /// The dead letters of `topic` (kept on `<topic>.dlq`) on `transport`.
    pub fn new(transport: Arc<dyn Transport>, topic: &str) -> Self {
        Self::with_suffix(transport, topic, ".dlq")
    }

    /// As [`DeadLetters::new`], for a consumer whose policy names another suffix.
    pub fn with_suffix(transport: Arc<dyn Transport>, topic: &str, suffix: &str) -> Self {
        Self {
            transport,
            topic: topic.to_string(),
            dead_letter_topic: format!("{topic}{suffix}"),
        }
    }

    /// The topic whose dead letters these are.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    async fn subscribe(&self, prefetch: usize) -> Result<Subscription, TransportError> {
        self.transport
            .subscribe(
                &self.dead_letter_topic,
                SubscribeOptions::group(DEAD_LETTER_GROUP).prefetch(prefetch),
            )
            .await
    }

    /// Reads up to `limit` dead letters that `filter` takes and holds them unsettled; stops
    /// when none came for `idle`, or when every one handed back came back (all were seen).
    /// Those the filter does not take are handed back at once.
    pub async fn hold(
        &self,
        filter: &Filter,
        limit: usize,
        idle: Duration,
    ) -> Result<Held, TransportError> {
        // Everything held stays in flight: the prefetch is the limit (AMQP's is 16 bits).
        let mut subscription = self.subscribe(limit.clamp(1, 65_535)).await?;
        let mut letters = Vec::new();
        let mut passed = Passed::default();
        while letters.len() < limit {
            let Some(delivery) = next(&mut subscription, idle).await? else {
                break;
            };
            if filter.matches(&delivery.envelope) {
                letters.push(delivery);
                continue;
            }
            let id = delivery.envelope.id.clone();
            let _ = delivery.nack(None).await;
            if passed.handed_back(id) {
                break;
            }
        }
        Ok(Held {
            letters,
            _subscription: subscription,
        })
    }

    /// Publishes the dead letters `filter` takes, up to `limit`, as their original messages
    /// (their id, topic and headers, see [`original`]) through `to`, at most `per_second`
    /// a second, in the order they were kept (so each key's order holds); each is settled
    /// only once `to` took its original. A consumer with an inbox handles a replayed message
    /// once, even if it had been handled before. Stops when none came for `idle`.
    pub async fn replay(
        &self,
        filter: &Filter,
        to: &dyn Publisher,
        per_second: f64,
        limit: usize,
        idle: Duration,
    ) -> Result<Replayed, TransportError> {
        let mut subscription = self.subscribe(64).await?;
        let mut pace = (per_second.is_finite() && per_second > 0.0).then(|| {
            let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            pace
        });
        let mut done = Replayed::default();
        let mut passed = Passed::default();
        while done.replayed < limit {
            let Some(delivery) = next(&mut subscription, idle).await? else {
                break;
            };
            if !filter.matches(&delivery.envelope) {
                let id = delivery.envelope.id.clone();
                let _ = delivery.nack(None).await;
                if passed.handed_back(id) {
                    break;
                }
                continue;
            }
            if let Some(pace) = pace.as_mut() {
                pace.tick().await;
            }
            match to.publish(original(&delivery.envelope)).await {
                Ok(()) => {
                    delivery.ack().await?;
                    done.replayed += 1;
                }
                Err(e) => {
                    let _ = delivery.nack(None).await;
                    return Err(e);
                }
            }
        }
        done.skipped = passed.handed.len();
        Ok(done)
    }
}

/// The dead letters a reader handed back because its filter did not take them. Where a
/// broker gives a handed-back letter straight back (RabbitMQ, NATS), a reader has been
/// through them all once every one came back; an id seen twice alone proves nothing, as one
/// message can be dead-lettered twice (a redelivery after a lost acknowledgement).
#[derive(Default)]
struct Passed {
    handed: HashSet<String>,
    returned: HashSet<String>,
}

impl Passed {
    /// Counts `id` handed back; true once every one handed back has come back.
    fn handed_back(&mut self, id: String) -> bool {
        if self.handed.contains(&id) {
            self.returned.insert(id);
        } else {
            self.handed.insert(id);
        }
        self.returned.len() == self.handed.len()
    }
}

/// The next delivery, `None` when none came for `idle` or the subscription ended.
async fn next(
    subscription: &mut Subscription,
    idle: Duration,
) -> Result<Option<Delivery>, TransportError> {
    match tokio::time::timeout(idle, subscription.next()).await {
        Ok(Some(Ok(d))) => Ok(Some(d)),
        Ok(Some(Err(e))) => Err(e),
        Ok(None) | Err(_) => Ok(None),
    }
}

/// The message a dead letter stands for, as it was first published: its id, topic and
/// headers, without what the dead-letter layer added, at its first attempt.
pub fn original(dead: &Envelope) -> Envelope {
    let mut original = dead.clone();
    if let Some(id) = dead.headers.get(ORIGINAL_ID) {
        original.id = id.to_string();
    }
    if let Some(topic) = dead.headers.get(ORIGINAL_TOPIC) {
        original.subject = topic.to_string();
    }
    for added in [
        ORIGINAL_ID,
        ORIGINAL_TOPIC,
        ERROR_CODE,
        ATTEMPTS,
        FIRST_FAILED_AT,
        FAILED_AT,
        FINGERPRINT,
        ORIGINAL_SIZE,
        ORIGINAL_SHA256,
        header::ERROR,
    ] {
        original.headers.remove(added);
    }
    original.headers.insert(header::ATTEMPT, "1");
    original.headers.insert(header::REPLAY_OF, dead.id.clone());
    original
}

/// A dead letter as one JSON object: what `yard dlq show` prints a line of.
pub fn to_json(dead: &Envelope) -> serde_json::Value {
    let h = &dead.headers;
    let payload = serde_json::from_slice::<serde_json::Value>(&dead.payload).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&dead.payload).into_owned())
    });
    let headers: serde_json::Map<String, serde_json::Value> = h
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    serde_json::json!({
        "id": dead.id,
        "original_id": h.get(ORIGINAL_ID),
        "original_topic": h.get(ORIGINAL_TOPIC),
        "error": h.get(header::ERROR),
        "code": h.get(ERROR_CODE),
        "attempts": h.get(ATTEMPTS).and_then(|a| a.parse::<u32>().ok()),
        "first_failed_at": h.get(FIRST_FAILED_AT),
        "failed_at": h.get(FAILED_AT),
        "fingerprint": h.get(FINGERPRINT),
        "traceparent": h.get(header::TRACEPARENT),
        "headers": headers,
        "payload": payload,
    })
}
