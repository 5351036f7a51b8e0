//! Events: publish to JetStream, subscribe with durable or ephemeral pull consumers, settle.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{
    self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy, AckKind,
};
use futures::future::BoxFuture;
use futures::StreamExt;
use switchyard_core::error::TransportError;
use switchyard_core::event_log::{position, LogCursor, SINGLE_LANE};
use switchyard_core::message::{header as h, Envelope};
use switchyard_core::transport::{
    Acker, Delivery, HeldDeliveries, Holding, Publisher, SubscribeOptions, Subscriber,
    Subscription, SubscriptionMode,
};

use crate::binding::*;
use crate::NatsTransport;

struct NatsAcker {
    message: Option<jetstream::Message>,
    flush: Arc<FlushOnDrop>,
    /// Renewed while held; given up once settled (see [`keep_held`]).
    lease: Option<Holding<Reply>>,
}

/// A delivery's reply subject, what its acknowledgements go to: the key it is held by
/// (`async_nats::Subject` is not `Hash`; its text is, and copying the subject is a count).
#[derive(Clone, PartialEq, Eq)]
struct Reply(async_nats::Subject);

impl std::hash::Hash for Reply {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_str().hash(state);
    }
}

/// Renews, while held, the deliveries of a subscription: JetStream redelivers a message not
/// acknowledged within the ack wait, to any member, so a handler slower than that (or a letter
/// `yard dlq` holds for a look) would have its message run a second time beside it. Every
/// third of the ack wait, each held delivery's reply subject is told it is still being worked
/// on (`+WPI`, which restarts the ack wait); a member that dies tells nothing, and its
/// messages are redelivered after the ack wait as before.
fn keep_held(held: &HeldDeliveries<Reply>, client: async_nats::Client, ack_wait: Duration) {
    held.renew_every((ack_wait / 3).max(Duration::from_millis(10)), move |replies| {
        let client = client.clone();
        async move {
            for Reply(reply) in replies {
                if let Err(e) = client
                    .publish(reply, bytes::Bytes::from_static(b"+WPI"))
                    .await
                {
                    tracing::debug!(target: "switchyard", error = %e, "could not renew a message held");
                }
            }
        }
    });
}

/// An ack is a plain publish, written by the client's connection task some time later, and
/// async-nats drops what is still unwritten when its last handle goes: a consumer that acked
/// and then left had its last acks lost and redelivered (caught by the conformance case
/// `group_resumes_after_settled`). Shared by a subscription and its unsettled deliveries, the
/// last one dropped flushes the connection, and the flush holds the client open until done.
struct FlushOnDrop(async_nats::Client);

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let client = self.0.clone();
            rt.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
            });
        }
    }
}

/// When a message handed back as it is (`nack(None)`) is delivered again.
const HAND_BACK_DELAY: Duration = Duration::from_millis(500);

impl Acker for NatsAcker {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        // What `jetstream::Message::ack` sends (an empty message to the delivery's reply
        // subject), without holding the whole message and its context in the boxed future
        // (1,432 bytes, past the allocator's small-size cache). The connection guard is held
        // until the ack is handed to the client.
        let reply = self.message.take().and_then(|m| m.message.reply);
        let flush = self.flush.clone();
        let lease = self.lease.take();
        Box::pin(async move {
            let acked = match reply {
                Some(reply) => flush
                    .0
                    .publish(reply, bytes::Bytes::new())
                    .await
                    .map_err(TransportError::other),
                None => Ok(()),
            };
            drop(lease);
            acked
        })
    }

    fn nack(
        mut self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        let m = self.message.take();
        let lease = self.lease.take();
        // Handed back as it is: not straight back to a reader that is stopping (it would be
        // in flight to a pull stream about to go, and wait out the ack wait there).
        let delay = delay.or(Some(HAND_BACK_DELAY));
        Box::pin(async move {
            let nacked = match m {
                Some(m) => m
                    .ack_with(AckKind::Nak(delay))
                    .await
                    .map_err(TransportError::Other),
                None => Ok(()),
            };
            drop(lease);
            nacked
        })
    }
}

impl Drop for NatsAcker {
    fn drop(&mut self) {
        // Dropped unsettled: the consumer died mid-message. Hand it back at once rather than
        // after the ack wait.
        if let Some(m) = self.message.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = m.ack_with(AckKind::Nak(None)).await;
                });
            }
        }
    }
}

/// Times a publish is sent when its ack is lost on the way.
const PUBLISH_TRIES: u32 = 3;

/// Whether a publish failed for want of its ack (the connection went), not for a refusal.
fn ack_lost(e: &async_nats::jetstream::context::PublishError) -> bool {
    use async_nats::jetstream::context::PublishErrorKind;
    matches!(
        e.kind(),
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
    )
}

impl Publisher for NatsTransport {
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), TransportError>> {
        // The headers are built before the future exists: it holds only what it sends.
        // JetStream de-duplicates on the message id within its window: a retried publish is
        // stored once. A replay of a dead letter is another publish of the same message.
        let headers = match envelope
            .headers
            .get(switchyard_core::message::header::REPLAY_OF)
        {
            None => publish_headers(&envelope, &envelope.id),
            Some(replay) => publish_headers(&envelope, &format!("{}/{replay}", envelope.id)),
        };
        let Envelope {
            subject, payload, ..
        } = envelope;
        // The server counts the header block in its `max_payload`: a message just under it
        // with headers added (a dead letter's) is refused by the server, not here, with an
        // error that does not say it is too large.
        let size = payload.len() + header_block_len(&headers);
        Box::pin(async move {
            let limit = self.client().await?.max_payload().min(self.max_message);
            if size > limit {
                return Err(TransportError::PayloadTooLarge { size, limit });
            }
            // Create the topic's stream once per transport, not on every publish (that is a
            // JetStream API round trip).
            let known = self
                .streams
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(subject.as_str());
            if !known {
                // Boxed: the stream look-up's future is several KB, and inline it would be
                // part of (and copied into) every publish's boxed future, not only the first.
                Box::pin(self.stream(&subject)).await?;
            }
            let js = self.js().await?;
            // An ack lost with its connection (the server dropped it, or async-nats did on a
            // message it could not read) is a publish that may or may not be stored: send it
            // again, a few times; JetStream stores it once (`Nats-Msg-Id`).
            let mut tries = 1;
            loop {
                // Boxed on its own: async-nats' publish future with this one's state was just
                // over the allocator's small-size cache (1,136 bytes; two small boxes cost
                // less than one large).
                let sent = Box::pin(js.publish_with_headers(
                    subject.clone(),
                    headers.clone(),
                    payload.clone(),
                ))
                .await;
                let acked = match sent {
                    Ok(ack) => ack.await,
                    Err(e) => Err(e),
                };
                match acked {
                    Ok(_) => return Ok(()),
                    Err(e) if tries < PUBLISH_TRIES && ack_lost(&e) => {
                        tracing::warn!(target: "switchyard", %subject, error = %e, tries, "publish not acknowledged: sending it again");
                        tries += 1;
                    }
                    Err(e) => return Err(TransportError::other(e)),
                }
            }
        })
    }
}

impl Subscriber for NatsTransport {
    fn lag(&self, topic: &str, group: &str) -> BoxFuture<'_, Result<Option<u64>, TransportError>> {
        let (topic, durable) = (topic.to_string(), jetstream_name(group));
        Box::pin(async move {
            let stream = self.stream(&topic).await?;
            let mut consumer: jetstream::consumer::PullConsumer = stream
                .get_consumer(&durable)
                .await
                .map_err(TransportError::Other)?;
            let info = consumer.info().await.map_err(TransportError::other)?;
            Ok(Some(info.num_pending))
        })
    }

    fn log_end(&self, topic: &str) -> BoxFuture<'_, Result<Option<LogCursor>, TransportError>> {
        let topic = topic.to_string();
        Box::pin(async move {
            let mut stream = self.stream(&topic).await?;
            let info = stream.info().await.map_err(TransportError::other)?;
            let mut end = LogCursor::new();
            if info.state.messages > 0 {
                end.set(SINGLE_LANE, info.state.last_sequence.to_string());
            }
            Ok(Some(end))
        })
    }

    fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Subscription, TransportError>> {
        let topic = topic.to_string();
        Box::pin(async move {
            let stream = self.stream(&topic).await?;
            let max_ack_pending = i64::try_from(options.prefetch).unwrap_or(i64::MAX);
            let max_deliver = options.max_deliveries.map_or(-1, i64::from);
            let replay = matches!(options.mode, SubscriptionMode::Replay { .. });
            let consumer: jetstream::consumer::PullConsumer = match options.mode {
                SubscriptionMode::Group(group) => {
                    let durable = jetstream_name(&group);
                    let consumer: jetstream::consumer::PullConsumer = stream
                        .get_or_create_consumer(
                            &durable,
                            pull::Config {
                                durable_name: Some(durable.clone()),
                                ack_policy: AckPolicy::Explicit,
                                deliver_policy: DeliverPolicy::All,
                                ack_wait: self.ack_wait,
                                max_ack_pending,
                                max_deliver,
                                ..Default::default()
                            },
                        )
                        .await
                        .map_err(TransportError::other)?;
                    // A durable consumer keeps the settings of the member that made it: one
                    // that asks for more in flight (a dead-letter reader holding thousands)
                    // raises the bound rather than being held to another's.
                    let made = consumer.cached_info().config.clone();
                    if made.max_ack_pending < max_ack_pending {
                        stream
                            .update_consumer(pull::Config {
                                durable_name: made.durable_name.clone(),
                                ack_policy: made.ack_policy,
                                deliver_policy: made.deliver_policy,
                                ack_wait: made.ack_wait,
                                max_ack_pending,
                                max_deliver: made.max_deliver,
                                ..Default::default()
                            })
                            .await
                            .map_err(TransportError::other)?
                    } else {
                        consumer
                    }
                }
                // A log reader: an ephemeral consumer from the stream's first message (or just
                // after the cursor's), acknowledging nothing.
                SubscriptionMode::Replay { after } => {
                    let deliver_policy = match after
                        .as_ref()
                        .and_then(|a| a.get(SINGLE_LANE))
                        .and_then(|s| s.parse::<u64>().ok())
                    {
                        Some(seq) => DeliverPolicy::ByStartSequence {
                            start_sequence: seq + 1,
                        },
                        None => DeliverPolicy::All,
                    };
                    stream
                        .create_consumer(pull::Config {
                            ack_policy: AckPolicy::None,
                            deliver_policy,
                            inactive_threshold: Duration::from_secs(60),
                            ..Default::default()
                        })
                        .await
                        .map_err(TransportError::other)?
                }
                _ => stream
                    .create_consumer(pull::Config {
                        ack_policy: AckPolicy::Explicit,
                        ack_wait: self.ack_wait,
                        deliver_policy: DeliverPolicy::New,
                        inactive_threshold: Duration::from_secs(60),
                        max_ack_pending,
                        max_deliver,
                        ..Default::default()
                    })
                    .await
                    .map_err(TransportError::other)?,
            };
            let client = self.client().await?.clone();
            let control = self.control().await?.clone();
            let stream_name = stream_name(&topic);
            // Messages the client library could not read (see `Pump`) come back through the
            // advisory JetStream publishes when one reaches `max_deliver`, on the connection
            // they cannot drop.
            let advisories = control
                .subscribe(format!(
                    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream_name}.{}",
                    consumer.cached_info().name
                ))
                .await
                .map_err(TransportError::other)?;
            let messages = consumer.messages().await.map_err(TransportError::other)?;
            let topic = Arc::new(topic);
            let held = (!replay).then(|| {
                let held = HeldDeliveries::default();
                keep_held(
                    &held,
                    client.clone(),
                    consumer.cached_info().config.ack_wait,
                );
                held
            });
            let pump = Pump {
                topic: topic.clone(),
                flush: Arc::new(FlushOnDrop(client)),
                consumer,
                messages: Some(messages),
                advisories,
                recovery: Arc::new(Recovery {
                    topic,
                    stream: stream_name,
                    js: jetstream::new(control),
                }),
                side: None,
                replay,
                held,
            };
            Ok(Box::pin(pump) as Subscription)
        })
    }
}

/// Reads a subscription from a pull consumer.
///
/// async-nats reads a stream message's header block as its own protocol: a message whose
/// headers start with a status line (`NATS/1.0 409 …`) is taken for a server status (and may
/// end the pull stream), and one whose headers do not parse drops the whole connection. Such
/// a message is never handed over nor settled, so it is redelivered until `max_deliver`; the
/// pump then reads it through the stream's JSON API, which carries the headers as bytes, and
/// hands it over as unreadable, to be dead-lettered. A pull stream that ends is started again.
struct Pump {
    topic: Arc<String>,
    flush: Arc<FlushOnDrop>,
    consumer: jetstream::consumer::PullConsumer,
    /// `None` only once dropped: the stream is handed to the task that hands back its last
    /// messages.
    messages: Option<pull::Stream>,
    advisories: async_nats::Subscriber,
    recovery: Arc<Recovery>,
    // What the pump is doing besides reading: restarting the pull stream, or bringing back a
    // message an advisory named. Rare, hence boxed.
    side: Option<Side>,
    // A log reader: each delivery says where it stands; nothing is acknowledged.
    replay: bool,
    /// The deliveries held, renewed until settled; `None` for a log reader.
    held: Option<HeldDeliveries<Reply>>,
}

enum Side {
    Restart(BoxFuture<'static, Option<pull::Stream>>),
    Recover(BoxFuture<'static, Option<Delivery>>),
}

/// How long a reader that stopped still takes what JetStream sends it, to hand it back. The
/// server keeps a stopped reader's open pull request until it learns the reader unsubscribed,
/// and a message published meanwhile (by another connection) goes to it and would wait out the
/// ack wait. Shorter than [`HAND_BACK_DELAY`], so what it hands back is not sent to it again.
const STOPPING_GRACE: Duration = Duration::from_millis(300);

impl Drop for Pump {
    fn drop(&mut self) {
        // Messages the pull stream already received but nobody took, and those still on their
        // way to it, would wait out the ack wait before anybody else got them (a reader that
        // stops, a service that stops): each is handed back instead, for a moment after the
        // reader is gone. What the stream asks for in that moment is handed back too.
        let (Some(mut messages), Ok(rt)) =
            (self.messages.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        rt.spawn(async move {
            let gone = tokio::time::sleep(STOPPING_GRACE);
            tokio::pin!(gone);
            loop {
                tokio::select! {
                    biased;
                    () = &mut gone => break,
                    m = messages.next() => match m {
                        Some(Ok(m)) => {
                            let _ = m.ack_with(AckKind::Nak(Some(HAND_BACK_DELAY))).await;
                        }
                        Some(Err(_)) => {}
                        None => break,
                    },
                }
            }
        });
    }
}

/// A `Stream` by hand rather than `unfold` over an `async fn`: a message costs one poll of the
/// pull stream, with no future made per message (that cost a tenth of the consume throughput).
impl futures::Stream for Pump {
    type Item = Result<Delivery, TransportError>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            match &mut this.side {
                Some(Side::Restart(f)) => match f.as_mut().poll(cx) {
                    Poll::Ready(restarted) => {
                        this.side = None;
                        if let Some(m) = restarted {
                            this.messages = Some(m);
                        }
                    }
                    Poll::Pending => return Poll::Pending,
                },
                Some(Side::Recover(f)) => match f.as_mut().poll(cx) {
                    Poll::Ready(recovered) => {
                        this.side = None;
                        if let Some(d) = recovered {
                            return Poll::Ready(Some(Ok(d)));
                        }
                    }
                    Poll::Pending => return Poll::Pending,
                },
                None => {}
            }
            let Some(messages) = this.messages.as_mut() else {
                return Poll::Ready(None);
            };
            match messages.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(m))) => {
                    let info = m.info().ok().map(|i| (i.delivered, i.stream_sequence));
                    let mut env = envelope_of(&this.topic, &m.message, info.map(|i| i.0));
                    let message = if this.replay {
                        if let Some((_, seq)) = info {
                            env.headers
                                .insert(h::LOG_POSITION, position(SINGLE_LANE, seq));
                        }
                        None
                    } else {
                        Some(m)
                    };
                    let lease = match (&this.held, &message) {
                        (Some(held), Some(m)) => {
                            m.message.reply.clone().and_then(|r| held.hold(Reply(r)))
                        }
                        _ => None,
                    };
                    let acker = NatsAcker {
                        message,
                        flush: this.flush.clone(),
                        lease,
                    };
                    return Poll::Ready(Some(Ok(Delivery::new(env, Box::new(acker)))));
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(target: "switchyard", topic = %this.topic, error = %e, "NATS pull stream error");
                    continue;
                }
                Poll::Ready(None) => {
                    let (consumer, topic) = (this.consumer.clone(), this.topic.clone());
                    this.side = Some(Side::Restart(Box::pin(restart(consumer, topic))));
                    continue;
                }
                Poll::Pending => {}
            }
            match this.advisories.poll_next_unpin(cx) {
                Poll::Ready(Some(advisory)) => {
                    let recovery = this.recovery.clone();
                    this.side = Some(Side::Recover(Box::pin(async move {
                        recovery.undeliverable(&advisory.payload).await
                    })));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A new pull stream for `consumer`, after a short pause.
async fn restart(
    consumer: jetstream::consumer::PullConsumer,
    topic: Arc<String>,
) -> Option<pull::Stream> {
    tracing::warn!(target: "switchyard", topic = %topic, "NATS pull stream ended; starting it again");
    tokio::time::sleep(Duration::from_millis(200)).await;
    match consumer.messages().await {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(target: "switchyard", topic = %topic, error = %e, "cannot restart the NATS pull stream");
            None
        }
    }
}

/// What brings back a message an advisory names: the stream's JSON API, on the second
/// connection.
struct Recovery {
    topic: Arc<String>,
    stream: String,
    js: jetstream::Context,
}

impl Recovery {
    /// Hands over the message a `MAX_DELIVERIES` advisory names, read as bytes.
    async fn undeliverable(&self, advisory: &[u8]) -> Option<Delivery> {
        #[derive(serde::Deserialize)]
        struct Advisory {
            stream_seq: u64,
            deliveries: u64,
        }
        let Ok(advisory) = serde_json::from_slice::<Advisory>(advisory) else {
            return None;
        };
        let request = serde_json::json!({ "seq": advisory.stream_seq });
        let got: Result<serde_json::Value, _> = self
            .js
            .request(format!("STREAM.MSG.GET.{}", self.stream), &request)
            .await;
        let raw = match got {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(target: "switchyard", topic = %self.topic, seq = advisory.stream_seq, error = %e, "cannot read an undeliverable message; it stays in the stream");
                return None;
            }
        };
        let Some((mut env, why)) = raw_envelope(&self.topic, &raw["message"], advisory.deliveries)
        else {
            tracing::error!(target: "switchyard", topic = %self.topic, seq = advisory.stream_seq, answer = %raw, "undeliverable message not found; it stays in the stream");
            return None;
        };
        let requeued: u32 = env
            .headers
            .get(REQUEUED)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let reason = match why {
            Some(why) => format!(
                "delivered {} times and never settled: the NATS client cannot read it ({why})",
                advisory.deliveries
            ),
            None if requeued >= MAX_REQUEUES => format!(
                "delivered {} times and never settled, {requeued} times over",
                advisory.deliveries
            ),
            None => {
                // Readable: its deliveries were cut off (a connection dropped by another
                // message, a consumer that died). It goes to the back of the topic again, with
                // an id JetStream has not seen, for another round of deliveries.
                tracing::warn!(target: "switchyard", topic = %self.topic, id = %env.id, deliveries = advisory.deliveries, "message delivered too often without being settled; requeued");
                env.headers.insert(REQUEUED, (requeued + 1).to_string());
                env.headers
                    .remove(switchyard_core::message::header::ATTEMPT);
                let publish = self.requeue(env).await;
                if let Err(e) = publish {
                    tracing::error!(target: "switchyard", topic = %self.topic, error = %e, "cannot requeue; the message stays in the stream");
                }
                return None;
            }
        };
        // JetStream delivers it no more: there is nothing to settle.
        Some(Delivery::unreadable(env, reason, Box::new(Settled)))
    }

    async fn requeue(&self, env: Envelope) -> Result<(), TransportError> {
        // A message id JetStream has not seen: the original's is within its window.
        let headers = publish_headers(&env, &switchyard_core::message::new_id());
        self.js
            .publish_with_headers(self.topic.to_string(), headers, env.payload)
            .await
            .map_err(TransportError::other)?
            .await
            .map_err(TransportError::other)?;
        Ok(())
    }
}

/// How often a readable message that was never settled is put back on its topic before it is
/// given up as a dead letter; counted in its [`REQUEUED`] header.
const MAX_REQUEUES: u32 = 3;
/// Header counting a message's requeues.
const REQUEUED: &str = "x-requeued";

/// The acker of a message the broker no longer delivers.
struct Settled;

impl Acker for Settled {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        Box::pin(async { Ok(()) })
    }

    fn nack(
        self: Box<Self>,
        _: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        Box::pin(async { Ok(()) })
    }
}
