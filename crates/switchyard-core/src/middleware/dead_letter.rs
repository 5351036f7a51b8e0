//! Dead letters: an event given up on is published to `<topic><suffix>` (`orders.dlq`) with
//! why, and only then acknowledged. Every dead letter is kept and logged:
//!
//! - it is kept for the consumer group [`DEAD_LETTER_GROUP`] whether or not anybody listens
//!   yet ([`Publisher::keep`], once per topic before its first dead letter): on RabbitMQ a
//!   topic nobody is bound to drops what is published on it;
//! - it says when it failed and carries a fingerprint of the failure (error code and topic),
//!   by which tools group dead letters;
//! - it gets its own id, derived from the original's id and content, so that a broker that
//!   de-duplicates by id (JetStream) keeps distinct bad messages that share an id, and still
//!   stores one dead letter when the same message is dead-lettered twice (a redelivery after a
//!   lost acknowledgement);
//! - one that the broker refuses as too large is published again without its payload, with
//!   the payload's size and SHA-256 in its headers, so a poison message larger than the
//!   broker's limit is settled instead of looping for ever;
//! - each rejection is logged on one line, at most [`LOG_PER_SECOND`] lines a second (a flood
//!   of bad input must not flood the log; what is left out is counted).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use tower::Layer;

use super::{always_ready, call_inner, Disposition, Inner};
use crate::error::{HandlerError, TransportError};
use crate::message::{header, Envelope, Headers};
use crate::policy::ConsumerPolicy;
use crate::transport::Publisher;

/// The original topic of a dead letter.
pub const ORIGINAL_TOPIC: &str = "x-original-topic";
/// The original id of a dead letter (the dead letter has its own).
pub const ORIGINAL_ID: &str = "x-original-id";
/// The error code of why it was given up (`bad_request`, `payload_too_large`, …).
pub const ERROR_CODE: &str = "x-error-code";
/// Size in bytes of the original payload, on a dead letter published without it.
pub const ORIGINAL_SIZE: &str = "x-original-size";
/// SHA-256 (hex) of the original payload, on a dead letter published without it.
pub const ORIGINAL_SHA256: &str = "x-original-sha256";
/// Attempts made before it was given up (its delivery count on the dead-letter topic is the
/// broker's, in `x-attempt`).
pub const ATTEMPTS: &str = "x-attempts";
/// When it was given up (RFC 3339, UTC).
pub const FAILED_AT: &str = "x-failed-at";
/// When it first failed: stamped on a message handed back for a retry, carried by the
/// transports that redeliver what they are handed back (all but NATS, which redelivers the
/// message it stored); the time it was given up when no retry carried it.
pub const FIRST_FAILED_AT: &str = "x-first-failed-at";
/// What failed, as a short hash of the error code and the original topic: dead letters with
/// one cause share it.
pub const FINGERPRINT: &str = "x-fingerprint";
/// The consumer group dead letters are kept for until somebody reads them.
pub const DEAD_LETTER_GROUP: &str = "dead-letters";
/// Lines logged per second about rejected messages, at most.
pub const LOG_PER_SECOND: u32 = 10;
/// Longest error reason kept in a dead letter published without its payload.
const MAX_REASON: usize = 1024;

/// Publishes what the layers below give up on as a dead letter, then reports it done.
#[derive(Clone)]
pub struct DeadLetter<S> {
    inner: S,
    publisher: Arc<dyn Publisher>,
    policy: Arc<ConsumerPolicy>,
    kept: Kept,
}

/// The dead-letter topics already made kept by this layer's publisher.
type Kept = Arc<Mutex<std::collections::HashSet<String>>>;

/// Layer of [`DeadLetter`].
#[derive(Clone)]
pub struct DeadLetterLayer {
    publisher: Arc<dyn Publisher>,
    policy: Arc<ConsumerPolicy>,
    kept: Kept,
}

impl DeadLetterLayer {
    /// Dead letters go through `publisher` to the topic plus `policy.dead_letter_suffix`.
    pub fn new(publisher: Arc<dyn Publisher>, policy: Arc<ConsumerPolicy>) -> Self {
        Self {
            publisher,
            policy,
            kept: Kept::default(),
        }
    }
}

impl<S> Layer<S> for DeadLetterLayer {
    type Service = DeadLetter<S>;
    fn layer(&self, inner: S) -> DeadLetter<S> {
        DeadLetter {
            inner,
            publisher: self.publisher.clone(),
            policy: self.policy.clone(),
            kept: self.kept.clone(),
        }
    }
}

impl<S: Inner> tower::Service<Envelope> for DeadLetter<S> {
    type Response = Disposition;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Disposition, Infallible>>;

    always_ready!();

    fn call(&mut self, envelope: Envelope) -> Self::Future {
        let inner = self.inner.clone();
        let publisher = self.publisher.clone();
        let policy = self.policy.clone();
        let kept = self.kept.clone();
        Box::pin(async move {
            // The inner layers take the envelope; what a dead letter needs of it is kept here
            // (a clone shares the payload's bytes).
            let original = envelope.clone();
            let (cause, attempts) = match call_inner(inner, envelope).await {
                Disposition::DeadLetter { cause, attempts } => (cause, attempts),
                other => return Ok(other),
            };
            let mut dead = dead_letter(original, &cause, attempts, &policy.dead_letter_suffix);
            let span = super::trace::dead_letter(&dead.subject, &dead.id, &mut dead.headers);
            log_rejection(&dead, &cause);
            let topic = crate::observe::enabled().then(|| {
                dead.headers
                    .get(ORIGINAL_TOPIC)
                    .unwrap_or(&dead.subject)
                    .to_string()
            });
            let published = match keep(publisher.as_ref(), &kept, &dead.subject).await {
                Ok(()) => publish(publisher.as_ref(), dead).await,
                Err(e) => Err(e),
            };
            if let Some(span) = span {
                let error = published.as_ref().err();
                span.end(error.map(|e| ("publish".to_string(), e.to_string())));
            }
            Ok(match published {
                Ok(()) => {
                    if let Some(topic) = topic {
                        crate::observe::dead_letter(&topic);
                    }
                    Disposition::Done
                }
                Err(e) => {
                    tracing::error!(target: "switchyard", error = %e, "dead-letter publish failed; the message will be redelivered");
                    Disposition::Retry {
                        after: policy.backoff(attempts),
                        cause: HandlerError::unavailable(format!(
                            "the dead letter could not be published: {e}"
                        )),
                    }
                }
            })
        })
    }
}

/// Makes `topic` kept for [`DEAD_LETTER_GROUP`], once per topic (the broker keeps it so:
/// a durable queue, a log).
async fn keep(publisher: &dyn Publisher, kept: &Kept, topic: &str) -> Result<(), TransportError> {
    let known = kept
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(topic);
    if !known {
        publisher.keep(topic, DEAD_LETTER_GROUP).await?;
        kept.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_string());
    }
    Ok(())
}

/// Publishes `dead`; when the broker refuses it as too large, publishes it again without its
/// payload and with only the dead letter's own headers.
async fn publish(publisher: &dyn Publisher, dead: Envelope) -> Result<(), TransportError> {
    // A clone shares the payload's bytes; the stripped letter (a SHA-256 of the payload) is
    // made only when it is needed.
    match publisher.publish(dead.clone()).await {
        Err(TransportError::PayloadTooLarge { size, limit }) => {
            tracing::warn!(target: "switchyard", size, limit, id = %dead.id, "dead letter too large for the broker; kept without its payload");
            publisher.publish(without_payload(&dead)).await
        }
        other => other,
    }
}

/// `original` as the dead letter of `cause` after `attempts`: its own id, the original's topic
/// and id, why, and how many attempts, addressed to the dead-letter topic.
pub fn dead_letter(
    original: Envelope,
    cause: &HandlerError,
    attempts: u32,
    suffix: &str,
) -> Envelope {
    let mut dead = original;
    let digest = Sha256::new()
        .chain_update(dead.id.as_bytes())
        .chain_update([0])
        .chain_update(dead.subject.as_bytes())
        .chain_update([0])
        .chain_update(&dead.payload)
        .finalize();
    let own_id = format!("dl-{}", &hex(&digest)[..32]);
    let original_id = std::mem::replace(&mut dead.id, own_id);
    dead.headers.insert(ORIGINAL_ID, original_id);
    dead.headers.insert(header::ERROR, cause.message());
    dead.headers.insert(ERROR_CODE, cause.code().to_string());
    dead.headers.insert(ORIGINAL_TOPIC, dead.subject.clone());
    dead.headers.insert(header::ATTEMPT, attempts.to_string());
    dead.headers.insert(ATTEMPTS, attempts.to_string());
    let now = now_rfc3339();
    if dead.headers.get(FIRST_FAILED_AT).is_none() {
        dead.headers.insert(FIRST_FAILED_AT, now.clone());
    }
    dead.headers.insert(FAILED_AT, now);
    dead.headers
        .insert(FINGERPRINT, fingerprint(cause.code(), &dead.subject));
    dead.subject.push_str(suffix);
    dead
}

/// Now in RFC 3339, UTC, always with three digits of milliseconds: such times order as text
/// (what dead letters carry; also for applications stamping their own events alike).
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    )
}

/// The fingerprint of a failure: the error code and where it happened, hashed short.
pub fn fingerprint(code: impl std::fmt::Display, topic: &str) -> String {
    let digest = Sha256::new()
        .chain_update(code.to_string().as_bytes())
        .chain_update([0])
        .chain_update(topic.as_bytes())
        .finalize();
    hex(&digest)[..12].to_string()
}

/// `dead` without its payload: its size and SHA-256 instead, and of the headers only the
/// dead letter's own (a hostile message's headers can be as large as its payload).
pub fn without_payload(dead: &Envelope) -> Envelope {
    let mut headers = Headers::new();
    let kept = [
        ORIGINAL_ID,
        ERROR_CODE,
        ORIGINAL_TOPIC,
        header::ATTEMPT,
        ATTEMPTS,
        FIRST_FAILED_AT,
        FAILED_AT,
        FINGERPRINT,
        header::TRACEPARENT,
        header::TRACESTATE,
    ];
    for name in kept {
        if let Some(v) = dead.headers.get(name) {
            headers.insert(name, v);
        }
    }
    let reason = dead.headers.get(header::ERROR).unwrap_or_default();
    headers.insert(header::ERROR, truncate(reason, MAX_REASON));
    headers.insert(ORIGINAL_SIZE, dead.payload.len().to_string());
    headers.insert(ORIGINAL_SHA256, hex(&Sha256::digest(&dead.payload)));
    Envelope {
        id: dead.id.clone(),
        subject: dead.subject.clone(),
        headers,
        payload: bytes::Bytes::new(),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The window of the rejection log's rate limit: when it started, lines logged in it, lines
/// left out since the last one logged. Shared by every consumer of the process: the limit is
/// on the log, not per topic. (A counter under a mutex: `tracing` has no rate limit of its
/// own, and this is taken once per rejected message only.)
static LOG_WINDOW: Mutex<Option<(Instant, u32, u64)>> = Mutex::new(None);

fn log_rejection(dead: &Envelope, cause: &HandlerError) {
    let now = Instant::now();
    let suppressed = {
        let mut window = LOG_WINDOW.lock().unwrap_or_else(|p| p.into_inner());
        let (start, logged, left_out) = window.get_or_insert((now, 0, 0));
        if now.duration_since(*start) >= Duration::from_secs(1) {
            *start = now;
            *logged = 0;
        }
        if *logged >= LOG_PER_SECOND {
            *left_out += 1;
            return;
        }
        *logged += 1;
        std::mem::take(left_out)
    };
    tracing::warn!(
        target: "switchyard",
        topic = dead.headers.get(ORIGINAL_TOPIC).unwrap_or_default(),
        id = dead.headers.get(ORIGINAL_ID).unwrap_or_default(),
        size = dead.payload.len(),
        code = %cause.code(),
        reason = truncate(cause.message(), MAX_REASON),
        dead_letter = %dead.subject,
        not_logged_before = suppressed,
        "message rejected; dead-lettered"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn a_dead_letter_has_its_own_id_and_says_why() {
        let mut a = Envelope::new("orders", "not json");
        a.id = "same".into();
        let mut b = Envelope::new("orders", "also not json");
        b.id = "same".into();
        let why = HandlerError::bad_request("does not decode");
        let (da, db) = (
            dead_letter(a.clone(), &why, 1, ".dlq"),
            dead_letter(b, &why, 1, ".dlq"),
        );
        assert_ne!(
            da.id, db.id,
            "distinct messages sharing an id keep distinct dead letters"
        );
        assert_eq!(
            dead_letter(a, &why, 2, ".dlq").id,
            da.id,
            "the same message twice: one id"
        );
        assert_eq!(da.subject, "orders.dlq");
        assert_eq!(da.headers.get(ORIGINAL_ID), Some("same"));
        assert_eq!(da.headers.get(ORIGINAL_TOPIC), Some("orders"));
        assert_eq!(da.headers.get(ERROR_CODE), Some("bad_request"));
        assert_eq!(da.headers.get(header::ERROR), Some("does not decode"));
    }

    #[test]
    fn without_payload_keeps_size_hash_and_only_its_own_headers() {
        let mut big = Envelope::new("t", vec![b'x'; 3000]);
        big.headers.insert("x-hostile", "y".repeat(100_000));
        let why = HandlerError::new(ErrorCode::PayloadTooLarge, "é".repeat(2000));
        let dead = without_payload(&dead_letter(big, &why, 1, ".dlq"));
        assert!(dead.payload.is_empty());
        assert_eq!(dead.headers.get(ORIGINAL_SIZE), Some("3000"));
        assert_eq!(
            dead.headers.get(ORIGINAL_SHA256),
            Some(hex(&Sha256::digest(vec![b'x'; 3000])).as_str())
        );
        assert_eq!(dead.headers.get("x-hostile"), None);
        assert!(dead
            .headers
            .get(header::ERROR)
            .is_some_and(|e| e.len() <= MAX_REASON));
    }

    /// Captures what is logged while `f` runs.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Capture {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = capture.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn each_rejection_is_logged_once_and_a_flood_is_limited() {
        let why = HandlerError::bad_request("does not decode");
        // A fresh window of the rate limit for each part.
        std::thread::sleep(Duration::from_millis(1100));
        let one = logged(|| {
            let dead = dead_letter(Envelope::new("orders", "x"), &why, 1, ".dlq");
            log_rejection(&dead, &why);
        });
        assert_eq!(one.matches("message rejected").count(), 1, "{one}");
        assert!(
            one.contains("does not decode") && one.contains("orders"),
            "{one}"
        );
        std::thread::sleep(Duration::from_millis(1100));
        let flood = logged(|| {
            for _ in 0..100 {
                let dead = dead_letter(Envelope::new("orders", "x"), &why, 1, ".dlq");
                log_rejection(&dead, &why);
            }
        });
        let lines = flood.matches("message rejected").count();
        assert!(
            (1..=LOG_PER_SECOND as usize).contains(&lines),
            "{lines} lines for 100 rejections in well under a second"
        );
    }
}
