//! Events: QoS 1 publishes, shared subscriptions for groups, redelivery through a retry topic.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop};

use switchyard_core::error::{ErrorCode, RemoteError, TransportError};
use switchyard_core::message::{header as h, Envelope};

use switchyard_core::transport::{
    Acker, Delivery, Publisher, SubscribeOptions, Subscriber, Subscription, SubscriptionMode,
};

use tokio::sync::mpsc;

use crate::binding::*;
use crate::connection::*;

use crate::MqttTransport;

/// Largest event payload published by default (1 MiB, as on the other transports).
pub(crate) const MAX_MESSAGE: usize = 1024 * 1024;

/// Subscriptions take their messages at QoS 0. At QoS 1 Mosquitto sends a subscriber at most
/// `max_inflight_messages` unacknowledged and queues at most `max_queued_messages` (1,000 by
/// default) more, then drops the rest without telling anyone: a consumer that lags loses
/// messages (measured: 8,362 of 10,000 lost with a consumer taking 200 µs each). At QoS 0 the
/// broker writes to the connection and TCP pushes back, so a slow consumer slows delivery
/// instead. Either way a message in flight is lost if the consumer's connection dies: the
/// transport declares at-most-once delivery.
pub(crate) const DELIVERY_QOS: QoS = QoS::AtMostOnce;

/// A received publish as a delivery of `topic`, settled through `client`.
pub(crate) fn delivery(
    topic: &str,
    mut p: Publish,
    client: &AsyncClient,
    inner: &Arc<Inner>,
    retry_topic: &Arc<str>,
) -> Delivery {
    let envelope = envelope_of(topic, &mut p);
    let acker = MqttAcker {
        client: client.clone(),
        publish: Some(p),
        inner: inner.clone(),
        retry_topic: retry_topic.clone(),
        // Handed back on nack or abandon: no copy per delivery.
        envelope: None,
    };
    Delivery::new(envelope, Box::new(acker))
}

pub(crate) struct MqttAcker {
    pub(crate) client: AsyncClient,
    pub(crate) publish: Option<Publish>,
    pub(crate) inner: Arc<Inner>,
    pub(crate) retry_topic: Arc<str>,
    pub(crate) envelope: Option<Envelope>,
}

impl MqttAcker {
    async fn redeliver(
        client: AsyncClient,
        publish: Publish,
        inner: Arc<Inner>,
        retry_topic: Arc<str>,
        mut env: Envelope,
        delay: Option<Duration>,
    ) -> Result<(), TransportError> {
        // MQTT has no negative acknowledgement: hold the message for the delay, hand it to
        // the group's retry topic with its attempt counted, then acknowledge the original.
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let attempt = env.headers.attempt();
        env.headers.insert(h::ATTEMPT, (attempt + 1).to_string());
        let props = event_properties(&env);
        inner
            .publish_acked(retry_topic.to_string(), env.payload.clone(), props)
            .await?;
        client.ack(&publish).await.map_err(TransportError::other)
    }
}

impl Acker for MqttAcker {
    fn nack_with(
        mut self: Box<Self>,
        envelope: Envelope,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        self.envelope = Some(envelope);
        self.nack(delay)
    }

    fn abandon(mut self: Box<Self>, envelope: Envelope) {
        // `Drop` hands it back through the retry topic.
        self.envelope = Some(envelope);
    }

    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        // A QoS 0 delivery needs no PUBACK (rumqttc sends none); one that arrived at QoS 1
        // (a subscription made by another client with the same filter) gets its PUBACK.
        let (client, publish) = (self.client.clone(), self.publish.take());
        Box::pin(async move {
            if let Some(p) = publish {
                client.ack(&p).await.map_err(TransportError::other)?;
            }
            Ok(())
        })
    }

    fn nack(
        mut self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        let (publish, env) = (self.publish.take(), self.envelope.take());
        let (client, inner) = (self.client.clone(), self.inner.clone());
        let retry = self.retry_topic.clone();
        Box::pin(async move {
            match (publish, env) {
                (Some(p), Some(e)) => Self::redeliver(client, p, inner, retry, e, delay).await,
                _ => Ok(()),
            }
        })
    }
}

impl Drop for MqttAcker {
    fn drop(&mut self) {
        // Dropped unsettled: hand it back through the retry topic at once.
        if let (Some(p), Some(e)) = (self.publish.take(), self.envelope.take()) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let (client, inner) = (self.client.clone(), self.inner.clone());
                let retry = self.retry_topic.clone();
                rt.spawn(async move {
                    let _ = Self::redeliver(client, p, inner, retry, e, None).await;
                });
            }
        }
    }
}

pub(crate) async fn pump(
    inner: Arc<Inner>,
    topic: String,
    client: AsyncClient,
    mut eventloop: EventLoop,
    filters: Vec<String>,
    retry_topic: Arc<str>,
    tx: mpsc::Sender<Result<Delivery, TransportError>>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut link = inner.links.link();
    loop {
        let event = tokio::select! {
            _ = tx.closed() => break,
            e = eventloop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                backoff = Duration::from_millis(100);
                let delivery = delivery(&topic, p, &client, &inner, &retry_topic);
                // Waiting here stops reading the socket: TCP pushes back on the broker.
                if tx.send(Ok(delivery)).await.is_err() {
                    break;
                }
            }
            // A clean session starts without subscriptions: (re)subscribe on every CONNACK.
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                link.up();
                for f in &filters {
                    let _ = client.try_subscribe(f.clone(), DELIVERY_QOS);
                }
            }
            Ok(_) => {}
            Err(e) => {
                link.down();
                let _ = tx.try_send(Err(inner.unreachable(e)));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    hand_back(
        &inner,
        &topic,
        &client,
        &mut eventloop,
        &filters,
        &retry_topic,
    )
    .await;
    let _ = client.try_disconnect();
}

/// The subscription was dropped (its consumer stopped): unsubscribes, and hands what the
/// broker had already sent (in the socket, never delivered; at QoS 0 it is nowhere else) to
/// the group's retry topic, until the broker confirms the unsubscribe — it sent nothing
/// after that. Deliveries the consumer held go back by their own `Drop`. Without this a
/// graceful stop lost every message sent to it but not yet read (31 of 40 in the
/// conformance case).
async fn hand_back(
    inner: &Arc<Inner>,
    topic: &str,
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    filters: &[String],
    retry_topic: &str,
) {
    for f in filters {
        let _ = client.try_unsubscribe(f.clone());
    }
    let mut unconfirmed = filters.len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut handed = 0usize;
    while unconfirmed > 0 {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(mut p)))) => {
                // Not a failure: its attempt is not counted.
                let env = envelope_of(topic, &mut p);
                let props = event_properties(&env);
                match inner
                    .publish_acked(retry_topic.to_string(), env.payload.clone(), props)
                    .await
                {
                    Ok(_) => handed += 1,
                    Err(e) => {
                        tracing::warn!(target: "switchyard", %topic, id = %env.id, error = %e, "a message received while unsubscribing could not be handed back: lost");
                    }
                }
            }
            Ok(Ok(Event::Incoming(Packet::UnsubAck(_)))) => unconfirmed -= 1,
            Ok(Ok(_)) => {}
            // Connection gone or no answer: what the broker sent is gone with it.
            Ok(Err(_)) | Err(_) => break,
        }
    }
    if handed > 0 {
        tracing::debug!(target: "switchyard", %topic, handed, "messages handed back to the group at unsubscribe");
    }
}

impl Publisher for MqttTransport {
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            if envelope.payload.len() > self.inner.max_message {
                return Err(TransportError::PayloadTooLarge {
                    size: envelope.payload.len(),
                    limit: self.inner.max_message,
                });
            }
            check_topic(&self.inner.url, &envelope.subject)?;
            let props = event_properties(&envelope);
            let reason = self
                .inner
                .publish_acked(envelope.subject, envelope.payload, props)
                .await?;
            match reason {
                // Nobody subscribed: MQTT drops the message by design (not durable).
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                refused => Err(TransportError::Rejected(RemoteError::new(
                    ErrorCode::Unavailable,
                    format!("the broker refused the message: {refused:?}"),
                ))),
            }
        })
    }

    fn keep(&self, topic: &str, group: &str) -> BoxFuture<'_, Result<(), TransportError>> {
        // MQTT keeps a message only for a subscriber's session, and a group's members share
        // none: what comes while no member is subscribed is dropped (capabilities say "not
        // durable"). Said once per topic, loudly, rather than pretended.
        tracing::warn!(target: "switchyard", %topic, %group, "MQTT keeps nothing for a group with no member subscribed: messages on this topic are lost until one subscribes");
        Box::pin(async { Ok(()) })
    }
}

impl Subscriber for MqttTransport {
    fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Subscription, TransportError>> {
        let topic = topic.to_string();
        Box::pin(async move {
            check_topic(&self.inner.url, &topic)?;
            let opts = self.inner.options("sub");
            let prefetch = u16::try_from(options.prefetch).unwrap_or(u16::MAX).max(1);
            let (filters, retry_topic) = match &options.mode {
                SubscriptionMode::Group(g) => {
                    let retry = format!("sy/retry/{g}/{topic}");
                    (
                        vec![format!("$share/{g}/{topic}"), format!("$share/{g}/{retry}")],
                        retry,
                    )
                }
                _ => {
                    let retry = format!("sy/retry/{}/{topic}", opts.client_id());
                    (vec![topic.clone(), retry.clone()], retry)
                }
            };
            let (client, mut eventloop) = AsyncClient::new(opts, 2 * usize::from(prefetch) + 64);
            connected(&self.inner, &mut eventloop).await?;
            for f in &filters {
                client
                    .subscribe(f.clone(), DELIVERY_QOS)
                    .await
                    .map_err(TransportError::other)?;
            }
            // Return only once the broker confirmed the subscriptions: a publish right after
            // `subscribe` returns must reach this subscriber.
            let early = subscribed(&self.inner, &mut eventloop, filters.len()).await?;
            let (tx, rx) = mpsc::channel(usize::from(prefetch) + early.len());
            let retry_topic: Arc<str> = retry_topic.into();
            for p in early {
                let _ = tx.try_send(Ok(delivery(&topic, p, &client, &self.inner, &retry_topic)));
            }
            tokio::spawn(pump(
                self.inner.clone(),
                topic,
                client,
                eventloop,
                filters,
                retry_topic,
                tx,
            ));
            let stream =
                futures::stream::unfold(
                    rx,
                    |mut rx| async move { rx.recv().await.map(|d| (d, rx)) },
                );
            Ok(Box::pin(stream) as Subscription)
        })
    }
}
