use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::{Outgoing, TlsConfiguration};
use switchyard_core::call::CallRequest;
use switchyard_core::codec::Codec;
use switchyard_core::error::{redact_url, CallError, ErrorCode, RemoteError, TransportError};
use switchyard_core::message::{header as h, new_id, CloudEventAttribute as Ce, Envelope, Headers};
use switchyard_core::server::Served;
use switchyard_core::transport::{
    get_or_init_boxed, Acker, Capabilities, Delivery, DeliveryGuarantee, IncomingCall, Listener,
    Ordering, PendingReplies, Publisher, ReplyTo, Requester, Responder, SubscribeOptions,
    Subscriber, Subscription, SubscriptionMode, Transport,
};
use switchyard_core::values::Reply;
use switchyard_core::wire;
use tokio::sync::{mpsc, oneshot, OnceCell, Semaphore};

/// Largest event payload published by default (1 MiB, as on the other transports).
const MAX_MESSAGE: usize = 1024 * 1024;
/// User property carrying the error code of a failed call's reply.
const STATUS: &str = "x-status";
/// CloudEvents attributes that travel as bare user properties (the MQTT 5 binding).
const CE_ATTRIBUTES: [&str; 7] = [
    "specversion",
    "id",
    "type",
    "source",
    "time",
    "subject",
    "dataschema",
];
/// Subscriptions take their messages at QoS 0. At QoS 1 Mosquitto sends a subscriber at most
/// `max_inflight_messages` unacknowledged and queues at most `max_queued_messages` (1,000 by
/// default) more, then drops the rest without telling anyone: a consumer that lags loses
/// messages (measured: 8,362 of 10,000 lost with a consumer taking 200 µs each). At QoS 0 the
/// broker writes to the connection and TCP pushes back, so a slow consumer slows delivery
/// instead. Either way a message in flight is lost if the consumer's connection dies: the
/// transport declares at-most-once delivery.
const DELIVERY_QOS: QoS = QoS::AtMostOnce;
/// Publishes a lane keeps waiting for their PUBACK at most.
const LANE_QUEUE: usize = 1024;

/// The MQTT 5 transport.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use switchyard_core::Client;
/// let mqtt = Arc::new(switchyard_mqtt::MqttTransport::from_url("mqtt://127.0.0.1:1883?ns=app1")?);
/// let reply: String = Client::new(mqtt).service("app1").call("/helloworld", "Mr. Developer".to_string()).await?;
/// # Ok(()) }
/// ```
pub struct MqttTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MqttTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttTransport")
            .field("url", &redact_url(&self.inner.url))
            .finish()
    }
}

struct Inner {
    url: String,
    host: String,
    port: u16,
    tls: Option<TlsConfiguration>,
    credentials: Option<(String, String)>,
    namespace: String,
    max_message: usize,
    lane: Mutex<Option<Arc<Lane>>>,
    opening: tokio::sync::Mutex<()>,
    replies: OnceCell<Arc<Replies>>,
}

type PubAckWaiter = oneshot::Sender<PubAckReason>;

/// A connection that publishes at QoS 1 and matches each PUBACK to its publish. rumqttc
/// reports the packet id it gave a publish (`Outgoing::Publish`) in the order publishes were
/// queued, so the waiters queue up in that order and move to a map by packet id. A lane whose
/// connection fails is dropped whole (its waiters learn it) and a new one opened: resuming it
/// could re-send queued publishes under ids the waiters never see.
struct Lane {
    client: AsyncClient,
    state: Arc<Mutex<LaneState>>,
    alive: Arc<AtomicBool>,
    room: Semaphore,
}

#[derive(Default)]
struct LaneState {
    queued: VecDeque<PubAckWaiter>,
    sent: HashMap<u16, PubAckWaiter>,
}

/// The RPC caller's reply subscription.
struct Replies {
    topic: String,
    waiting: PendingReplies<Bytes, Publish>,
    _client: AsyncClient,
}

fn check_topic(url: &str, topic: &str) -> Result<(), TransportError> {
    if topic.is_empty()
        || topic.contains(['+', '#', '\0'])
        || topic.starts_with('$')
        || topic.starts_with("sy/")
    {
        return Err(TransportError::invalid_url(
            url,
            format!("topic {topic:?} is not usable on MQTT (no '+', '#', leading '$' or 'sy/')"),
        ));
    }
    Ok(())
}

fn short_id() -> String {
    new_id()[..13].replace('-', "")
}

impl MqttTransport {
    /// A transport for `mqtt://[USER:PASS@]HOST:PORT` (port 1883 when absent). Options: `ns`
    /// (the RPC namespace, default `default`), `max_message_bytes` (default 1 MiB). Connections
    /// are made on first use; an unreachable broker is then an error naming the URL.
    pub fn from_url(url: &str) -> Result<Self, TransportError> {
        let parsed =
            url::Url::parse(url).map_err(|e| TransportError::invalid_url(url, e.to_string()))?;
        let secure = match parsed.scheme() {
            "mqtt" => false,
            "mqtts" => true,
            _ => {
                return Err(TransportError::invalid_url(
                    url,
                    "expected mqtt://HOST:PORT[?ns=NAME] or mqtts://… (TLS)",
                ))
            }
        };
        let host = parsed
            .host_str()
            .ok_or_else(|| TransportError::invalid_url(url, "no host"))?
            .to_string();
        let port = parsed.port().unwrap_or(if secure { 8883 } else { 1883 });
        let mut tls_ca = None;
        let mut namespace = "default".to_string();
        let mut max_message = MAX_MESSAGE;
        for (k, v) in parsed.query_pairs() {
            match k.as_ref() {
                "ns" => {
                    if v.is_empty() || v.contains(['+', '#', '/', ' ']) {
                        return Err(TransportError::invalid_url(
                            url,
                            format!("ns={v} is not a usable namespace"),
                        ));
                    }
                    namespace = v.to_string();
                }
                "max_message_bytes" => {
                    max_message = v.parse().map_err(|_| {
                        TransportError::invalid_url(
                            url,
                            format!("max_message_bytes={v} is not a whole number"),
                        )
                    })?;
                }
                "tls_ca" if secure => {
                    tls_ca = Some(std::fs::read(v.as_ref()).map_err(|e| {
                        TransportError::invalid_url(url, format!("tls_ca={v}: {e}"))
                    })?);
                }
                "tls_ca" => {
                    return Err(TransportError::invalid_url(
                        url,
                        "tls_ca is for mqtts:// (TLS) URLs",
                    ))
                }
                unknown => {
                    return Err(TransportError::invalid_url(
                        url,
                        format!(
                            "unknown option {unknown:?} (known: ns, max_message_bytes, tls_ca)"
                        ),
                    ))
                }
            }
        }
        let credentials = match parsed.username() {
            "" => None,
            u => Some((u.to_string(), parsed.password().unwrap_or("").to_string())),
        };
        // TLS: the server's certificate checked against `tls_ca` only, when given, else
        // against the system's roots.
        let tls = match (secure, tls_ca) {
            (false, _) => None,
            (true, Some(ca)) => Some(TlsConfiguration::Simple {
                ca,
                alpn: None,
                client_auth: None,
            }),
            (true, None) => Some(system_roots(url)?),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                url: url.to_string(),
                host,
                port,
                tls,
                credentials,
                namespace,
                max_message,
                lane: Mutex::new(None),
                opening: tokio::sync::Mutex::new(()),
                replies: OnceCell::new(),
            }),
        })
    }
}

/// TLS trusting the system's root certificates. Built here rather than with rumqttc's
/// `TlsConfiguration::default()`, which panics when any system certificate fails to load:
/// an unreadable certificate is skipped, and having none at all is an error naming the URL.
fn system_roots(url: &str) -> Result<TlsConfiguration, TransportError> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        return Err(TransportError::invalid_url(
            url,
            format!(
                "no system root certificate could be loaded ({:?}); give one with tls_ca=PATH",
                loaded.errors
            ),
        ));
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

/// Polls `eventloop` until the broker's CONNACK, so that an unreachable broker is an error
/// here and not a silent retry loop.
async fn connected(inner: &Inner, eventloop: &mut EventLoop) -> Result<(), TransportError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(inner.unreachable(e)),
            Err(e) => return Err(inner.unreachable(e)),
        }
    }
}

/// Polls `eventloop` until the broker acknowledged `count` subscriptions (10 s at most), so
/// that what is published next reaches them. Returns the messages that arrived meanwhile.
async fn subscribed(
    inner: &Inner,
    eventloop: &mut EventLoop,
    count: usize,
) -> Result<Vec<Publish>, TransportError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut acked, mut early) = (0, Vec::new());
    while acked < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => acked += 1,
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => early.push(p),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(inner.unreachable(e)),
            Err(e) => return Err(inner.unreachable(e)),
        }
    }
    Ok(early)
}

impl Inner {
    fn unreachable(&self, e: impl std::error::Error + Send + Sync + 'static) -> TransportError {
        TransportError::Unreachable {
            url: redact_url(&self.url),
            source: Box::new(e),
        }
    }

    fn options(&self, role: &str) -> MqttOptions {
        let mut o = MqttOptions::new(
            format!("sy-{role}-{}", short_id()),
            self.host.clone(),
            self.port,
        );
        o.set_keep_alive(Duration::from_secs(10));
        o.set_clean_start(true);
        let packet = u32::try_from(self.max_message.saturating_add(64 * 1024)).unwrap_or(u32::MAX);
        o.set_max_packet_size(Some(packet));
        if let Some((u, p)) = &self.credentials {
            o.set_credentials(u.clone(), p.clone());
        }
        if let Some(tls) = &self.tls {
            o.set_transport(rumqttc::Transport::tls_with_config(tls.clone()));
        }
        o
    }

    fn live_lane(&self) -> Option<Arc<Lane>> {
        let slot = self.lane.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref()
            .filter(|l| l.alive.load(AtomicOrdering::Acquire))
            .cloned()
    }

    async fn lane(&self) -> Result<Arc<Lane>, TransportError> {
        if let Some(l) = self.live_lane() {
            return Ok(l);
        }
        // Boxed: the connecting future would otherwise be part of every publish's future.
        Box::pin(self.open_lane()).await
    }

    async fn open_lane(&self) -> Result<Arc<Lane>, TransportError> {
        let _one_at_a_time = self.opening.lock().await;
        if let Some(l) = self.live_lane() {
            return Ok(l);
        }
        let (client, mut eventloop) = AsyncClient::new(self.options("pub"), LANE_QUEUE);
        connected(self, &mut eventloop).await?;
        let state: Arc<Mutex<LaneState>> = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (s, a) = (state.clone(), alive.clone());
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                        let mut st = s.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(w) = st.queued.pop_front() {
                            st.sent.insert(pkid, w);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        let w = s
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .sent
                            .remove(&ack.pkid);
                        if let Some(w) = w {
                            let _ = w.send(ack.reason);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(target: "switchyard", error = %e, "MQTT publishing connection lost");
                        break;
                    }
                }
            }
            a.store(false, AtomicOrdering::Release);
            // Dropping the waiters tells every publish still waiting that it failed.
            let mut st = s.lock().unwrap_or_else(|p| p.into_inner());
            st.queued.clear();
            st.sent.clear();
        });
        let lane = Arc::new(Lane {
            client,
            state,
            alive,
            room: Semaphore::new(LANE_QUEUE),
        });
        *self.lane.lock().unwrap_or_else(|p| p.into_inner()) = Some(lane.clone());
        Ok(lane)
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK.
    async fn publish_acked(
        &self,
        topic: String,
        payload: Bytes,
        properties: PublishProperties,
    ) -> Result<PubAckReason, TransportError> {
        let lane = self.lane().await?;
        let _room = lane.room.acquire().await.map_err(TransportError::other)?;
        let (tx, rx) = oneshot::channel();
        {
            let mut st = lane.state.lock().unwrap_or_else(|p| p.into_inner());
            st.queued.push_back(tx);
            if let Err(e) = lane.client.try_publish_with_properties(
                topic,
                QoS::AtLeastOnce,
                false,
                payload,
                properties,
            ) {
                st.queued.pop_back();
                return Err(TransportError::other(e));
            }
        }
        rx.await.map_err(|_| {
            TransportError::Other(
                "the MQTT connection was lost before the broker acknowledged the publish".into(),
            )
        })
    }

    async fn replies(self: &Arc<Self>) -> Result<Arc<Replies>, TransportError> {
        get_or_init_boxed(&self.replies, || async {
                let opts = self.options("rpc");
                let topic = format!("sy/reply/{}", opts.client_id());
                let (client, mut eventloop) = AsyncClient::new(opts, 64);
                connected(self, &mut eventloop).await?;
                client
                    .subscribe(topic.clone(), QoS::AtMostOnce)
                    .await
                    .map_err(TransportError::other)?;
                // Calls go out only once replies can arrive (none can before).
                subscribed(self, &mut eventloop, 1).await?;
                let replies = Arc::new(Replies {
                    topic: topic.clone(),
                    waiting: PendingReplies::default(),
                    _client: client.clone(),
                });
                let r = Arc::downgrade(&replies);
                tokio::spawn(async move {
                    loop {
                        match eventloop.poll().await {
                            Ok(Event::Incoming(Packet::Publish(p))) => {
                                let Some(r) = r.upgrade() else { return };
                                let cid = p
                                    .properties
                                    .as_ref()
                                    .and_then(|pp| pp.correlation_data.clone());
                                // A reply nobody waits for any more is dropped.
                                if let Some(cid) = cid {
                                    r.waiting.complete(&cid, p);
                                }
                            }
                            // Clean sessions lose the subscription on reconnect: renew it.
                            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                                let _ = client.try_subscribe(topic.clone(), QoS::AtMostOnce);
                            }
                            Ok(_) => {}
                            Err(e) => {
                                if r.strong_count() == 0 {
                                    return;
                                }
                                tracing::warn!(target: "switchyard", error = %e, "MQTT reply connection lost; reconnecting");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                    }
                });
                Ok(replies)
            })
            .await
            .cloned()
    }
}

/// User properties and content type of an outgoing event.
fn event_properties(envelope: &Envelope) -> PublishProperties {
    let mut user = Vec::with_capacity(envelope.headers.len() + 4);
    for (k, v) in envelope.headers.iter() {
        if k != h::CONTENT_TYPE && !k.starts_with("ce-") {
            user.push((k.to_string(), v.to_string()));
        }
    }
    for (attr, value) in envelope.cloud_event_attributes() {
        // The binding puts the content type in the content-type property, set below.
        if attr != Ce::DataContentType {
            user.push((attr.name().to_string(), value.to_string()));
        }
    }
    PublishProperties {
        user_properties: user,
        content_type: Some(
            envelope
                .headers
                .get(h::CONTENT_TYPE)
                .unwrap_or("application/json")
                .to_string(),
        ),
        ..Default::default()
    }
}

/// The envelope of a received publish. Its properties are taken, not copied: what is kept of
/// the publish afterwards (to acknowledge or redeliver it) needs only its packet id and QoS.
fn envelope_of(topic: &str, p: &mut Publish) -> Envelope {
    let mut headers = Headers::new();
    let mut id = None;
    let mut content_type = None;
    if let Some(props) = p.properties.take() {
        for (k, v) in props.user_properties {
            match k.as_str() {
                "id" => id = Some(v),
                "specversion" => {}
                attr => match Ce::from_name(attr) {
                    Some(known) => headers.insert(known.header(), v),
                    // `dataschema`, which no envelope header names.
                    None if CE_ATTRIBUTES.contains(&attr) => {
                        headers.insert(format!("ce-{attr}"), v)
                    }
                    None => headers.insert(k, v),
                },
            }
        }
        content_type = props.content_type;
    }
    headers.insert(
        h::CONTENT_TYPE,
        content_type.unwrap_or_else(|| Codec::Json.content_type().to_string()),
    );
    if headers.get(h::ATTEMPT).is_none() {
        headers.insert(h::ATTEMPT, "1");
    }
    Envelope {
        id: id.unwrap_or_else(new_id),
        subject: topic.to_string(),
        headers,
        payload: p.payload.clone(),
    }
}

/// A received publish as a delivery of `topic`, settled through `client`.
fn delivery(
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

struct MqttAcker {
    client: AsyncClient,
    publish: Option<Publish>,
    inner: Arc<Inner>,
    retry_topic: Arc<str>,
    envelope: Option<Envelope>,
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

async fn pump(
    inner: Arc<Inner>,
    topic: String,
    client: AsyncClient,
    mut eventloop: EventLoop,
    filters: Vec<String>,
    retry_topic: Arc<str>,
    tx: mpsc::Sender<Result<Delivery, TransportError>>,
) {
    let mut backoff = Duration::from_millis(100);
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
                for f in &filters {
                    let _ = client.try_subscribe(f.clone(), DELIVERY_QOS);
                }
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx.try_send(Err(inner.unreachable(e)));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    let _ = client.try_disconnect();
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

/// A service name usable as one topic level.
fn check_service(service: &str) -> Result<(), String> {
    if service.is_empty() || service.contains(['+', '#', '/', '\0']) {
        return Err(format!(
            "service name {service:?} is not usable as an MQTT topic level"
        ));
    }
    Ok(())
}

/// `sy/rpc/<namespace>/<service>/<route>`.
fn route_topic(namespace: &str, service: &str, route: &str) -> Result<String, String> {
    check_service(service)?;
    let path = route.trim_start_matches('/');
    if path.is_empty() || path.contains(['+', '#', '\0']) {
        return Err(format!("route {route:?} is not usable as an MQTT topic"));
    }
    Ok(format!("sy/rpc/{namespace}/{service}/{path}"))
}

impl Requester for MqttTransport {
    fn request(&self, request: CallRequest) -> BoxFuture<'_, Result<Reply, CallError>> {
        Box::pin(async move {
            let route = request.route.clone();
            let Some(service) = request.service.as_deref() else {
                return Err(CallError::NoService {
                    route,
                    transport: redact_url(&self.inner.url),
                });
            };
            let topic = route_topic(&self.inner.namespace, service, &route).map_err(|reason| {
                CallError::Encode {
                    route: route.clone(),
                    reason,
                }
            })?;
            let body = wire::encode_call(&request.args, request.token.as_deref(), Codec::Json)
                .map_err(|e| CallError::Encode {
                    route: route.clone(),
                    reason: e.to_string(),
                })?;
            let replies = self.inner.replies().await?;
            let mut user: Vec<(String, String)> = request
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let wait = request
                .deadline
                .map(|d| d.saturating_duration_since(Instant::now()));
            let mut expiry = None;
            if let Some(w) = wait {
                user.push((h::DEADLINE_MS.to_string(), w.as_millis().to_string()));
                // Whole seconds, rounded up: a call nobody took in time is dropped.
                expiry = Some(u32::try_from(w.as_secs() + 1).unwrap_or(u32::MAX));
            }
            let cid = Bytes::from(new_id());
            // Forgotten when this call stops waiting (reply, error or timeout).
            let reply = replies.waiting.wait(cid.clone());
            let props = PublishProperties {
                response_topic: Some(replies.topic.clone()),
                correlation_data: Some(cid),
                user_properties: user,
                content_type: Some(Codec::Json.content_type().to_string()),
                message_expiry_interval: expiry,
                ..Default::default()
            };
            let reason = self.inner.publish_acked(topic, body, props).await?;
            match reason {
                PubAckReason::Success => {}
                PubAckReason::NoMatchingSubscribers => {
                    return Err(CallError::Unreachable {
                        target: format!(
                            "{} (no instance of service {service} in namespace {})",
                            redact_url(&self.inner.url),
                            self.inner.namespace
                        ),
                        source: "the broker has no subscriber for the call's topic".into(),
                    })
                }
                refused => {
                    return Err(CallError::Transport(TransportError::Rejected(
                        RemoteError::new(
                            ErrorCode::Unavailable,
                            format!("the broker refused the call: {refused:?}"),
                        ),
                    )))
                }
            }
            let reply = reply.await.ok_or_else(|| {
                CallError::Transport(TransportError::Other(
                    "the MQTT reply subscription closed before the reply came".into(),
                ))
            })?;
            let status = reply.properties.as_ref().and_then(|p| {
                p.user_properties
                    .iter()
                    .find(|(k, _)| k == STATUS)
                    .map(|(_, v)| v.clone())
            });
            wire::decode_reply(route, status.is_some(), &reply.payload)
        })
    }
}

/// Answers one call on its response topic.
struct MqttReply {
    client: AsyncClient,
    reply_to: String,
    correlation: Option<Bytes>,
}

impl ReplyTo for MqttReply {
    fn send(self: Box<Self>, outcome: Result<Reply, RemoteError>) -> BoxFuture<'static, ()> {
        let (payload, status) = wire::reply_body(outcome);
        let reply = PublishProperties {
            correlation_data: self.correlation,
            user_properties: status
                .map(|c| vec![(STATUS.to_string(), c.to_string())])
                .unwrap_or_default(),
            content_type: Some(Codec::Json.content_type().to_string()),
            ..Default::default()
        };
        let (client, reply_to) = (self.client, self.reply_to);
        Box::pin(async move {
            if let Err(e) = client
                .publish_with_properties(reply_to, QoS::AtMostOnce, false, payload, reply)
                .await
            {
                tracing::warn!(target: "switchyard", error = %e, "could not send an MQTT reply");
            }
        })
    }
}

/// One received call, or `None` for a publish without a response topic.
fn incoming(client: &AsyncClient, prefix: &str, p: Publish) -> Option<IncomingCall> {
    let props = p.properties?;
    let reply_to = props.response_topic?;
    let topic = String::from_utf8_lossy(&p.topic);
    let route = format!("/{}", topic.strip_prefix(prefix).unwrap_or(""));
    let headers: Headers = props.user_properties.into_iter().collect();
    let deadline = headers.deadline().map(|w| Instant::now() + w);
    Some(IncomingCall {
        request: wire::decode_call(route, &p.payload, headers, deadline),
        reply: Box::new(MqttReply {
            client: client.clone(),
            reply_to,
            correlation: props.correlation_data,
        }),
    })
}

impl Responder for MqttTransport {
    /// The calls come on a connection of the instance's own, whose event loop runs in a task
    /// until the server closes: replies are sent through it while the last calls finish.
    fn listen(&self, served: Arc<Served>) -> BoxFuture<'_, Result<Listener, TransportError>> {
        Box::pin(async move {
            let (ns, service) = (self.inner.namespace.clone(), served.name().to_string());
            check_service(&service).map_err(|reason| TransportError::InvalidName {
                what: "service",
                name: service.clone(),
                reason,
            })?;
            let prefix = format!("sy/rpc/{ns}/{service}/");
            // Instances of one service share its calls: the share group is the service.
            let filter = format!("$share/{service}/{prefix}#");
            let (client, mut eventloop) = AsyncClient::new(self.inner.options("srv"), 1024);
            connected(&self.inner, &mut eventloop).await?;
            client
                .subscribe(filter.clone(), QoS::AtMostOnce)
                .await
                .map_err(TransportError::other)?;
            // No call can arrive before the subscription exists.
            subscribed(&self.inner, &mut eventloop, 1).await?;
            let (calls_tx, calls_rx) = mpsc::channel::<IncomingCall>(256);
            let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
            let reader = client.clone();
            let task = tokio::spawn(async move {
                loop {
                    let event = tokio::select! {
                        _ = &mut stop_rx => break,
                        e = eventloop.poll() => e,
                    };
                    match event {
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            if let Some(call) = incoming(&reader, &prefix, p) {
                                // Closed once the server stops taking calls: the call is
                                // dropped unanswered, as one arriving after it stopped.
                                let _ = calls_tx.send(call).await;
                            }
                        }
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = reader.try_subscribe(filter.clone(), QoS::AtMostOnce);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(target: "switchyard", error = %e, "MQTT RPC server connection lost; reconnecting");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                let _ = reader.try_unsubscribe(filter);
                let _ = reader.try_disconnect();
                let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
            });
            let calls = futures::stream::unfold(calls_rx, |mut rx| async move {
                rx.recv().await.map(|c| (c, rx))
            });
            Ok(
                Listener::new(Box::pin(calls), self.inner.url.clone()).on_close(async move {
                    let _ = stop_tx.send(());
                    let _ = task.await;
                }),
            )
        })
    }
}

impl Transport for MqttTransport {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // Clean sessions: a message reaches the subscribers connected when it is
            // published; one that dies mid-message loses it (no other member gets it).
            durable: false,
            ordering: Ordering::None,
            delivery: DeliveryGuarantee::AtMostOnce,
            request_reply: true,
            consumer_groups: true,
            broadcast: true,
            // A nack (and a handler error) is redelivered through the retry topic.
            redelivery: true,
            services_share_url: true,
        }
    }

    fn url(&self) -> String {
        redact_url(&self.inner.url)
    }

    fn requester(&self) -> Option<&dyn Requester> {
        Some(self)
    }

    fn responder(&self) -> Option<&dyn Responder> {
        Some(self)
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move { self.inner.lane().await.map(drop) })
    }
}
