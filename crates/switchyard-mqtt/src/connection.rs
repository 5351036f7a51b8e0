//! The connections (lanes), made on first use and kept connected: publishing with PUBACKs,
//! subscribing, and the reply topic calls wait on.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::{Outgoing, TlsConfiguration};

use switchyard_core::error::{redact_url, TransportError};
use switchyard_core::message::new_id;

use switchyard_core::transport::{get_or_init_boxed, PendingReplies};

use tokio::sync::{oneshot, OnceCell, Semaphore};

/// Publishes a lane keeps waiting for their PUBACK at most.
pub(crate) const LANE_QUEUE: usize = 1024;

pub(crate) struct Inner {
    pub(crate) url: String,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: Option<TlsConfiguration>,
    pub(crate) credentials: Option<(String, String)>,
    pub(crate) namespace: String,
    pub(crate) max_message: usize,
    pub(crate) lane: Mutex<Option<Arc<Lane>>>,
    pub(crate) opening: tokio::sync::Mutex<()>,
    pub(crate) replies: OnceCell<Arc<Replies>>,
    // What the serving connections' event loops last said (`connected`).
    pub(crate) links: switchyard_core::transport::LinkHealth,
}

pub(crate) type PubAckWaiter = oneshot::Sender<PubAckReason>;

/// A connection that publishes at QoS 1 and matches each PUBACK to its publish. rumqttc
/// reports the packet id it gave a publish (`Outgoing::Publish`) in the order publishes were
/// queued, so the waiters queue up in that order and move to a map by packet id. A lane whose
/// connection fails is dropped whole (its waiters learn it) and a new one opened: resuming it
/// could re-send queued publishes under ids the waiters never see.
pub(crate) struct Lane {
    pub(crate) client: AsyncClient,
    pub(crate) state: Arc<Mutex<LaneState>>,
    pub(crate) alive: Arc<AtomicBool>,
    pub(crate) room: Semaphore,
}

#[derive(Default)]
pub(crate) struct LaneState {
    pub(crate) queued: VecDeque<PubAckWaiter>,
    pub(crate) sent: HashMap<u16, PubAckWaiter>,
}

/// The RPC caller's reply subscription.
pub(crate) struct Replies {
    pub(crate) topic: String,
    pub(crate) waiting: PendingReplies<Bytes, Publish>,
    pub(crate) _client: AsyncClient,
}

pub(crate) fn short_id() -> String {
    new_id()[..13].replace('-', "")
}

/// Polls `eventloop` until the broker's CONNACK, so that an unreachable broker is an error
/// here and not a silent retry loop.
pub(crate) async fn connected(
    inner: &Inner,
    eventloop: &mut EventLoop,
) -> Result<(), TransportError> {
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
pub(crate) async fn subscribed(
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

/// The smallest cap on an incoming packet (see [`Inner::options`]): 32 MiB.
const INCOMING_PACKET_FLOOR: usize = 32 * 1024 * 1024;

impl Inner {
    pub(crate) fn unreachable(
        &self,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> TransportError {
        TransportError::Unreachable {
            url: redact_url(&self.url),
            source: Box::new(e),
        }
    }

    pub(crate) fn options(&self, role: &str) -> MqttOptions {
        let mut o = MqttOptions::new(
            format!("sy-{role}-{}", short_id()),
            self.host.clone(),
            self.port,
        );
        o.set_keep_alive(Duration::from_secs(10));
        o.set_clean_start(true);
        // The largest packet this client takes. An MQTT 5 broker silently drops what is larger
        // for this client, so it is not the publish limit but well above it: an oversized event
        // must arrive to be refused by the consumer (and dead-lettered with the reason), not
        // vanish at the broker.
        let packet = self
            .max_message
            .saturating_add(64 * 1024)
            .max(INCOMING_PACKET_FLOOR);
        o.set_max_packet_size(Some(u32::try_from(packet).unwrap_or(u32::MAX)));
        if let Some((u, p)) = &self.credentials {
            o.set_credentials(u.clone(), p.clone());
        }
        if let Some(tls) = &self.tls {
            o.set_transport(rumqttc::Transport::tls_with_config(tls.clone()));
        }
        o
    }

    pub(crate) fn live_lane(&self) -> Option<Arc<Lane>> {
        let slot = self.lane.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref()
            .filter(|l| l.alive.load(AtomicOrdering::Acquire))
            .cloned()
    }

    pub(crate) async fn lane(&self) -> Result<Arc<Lane>, TransportError> {
        if let Some(l) = self.live_lane() {
            return Ok(l);
        }
        // Boxed: the connecting future would otherwise be part of every publish's future.
        Box::pin(self.open_lane()).await
    }

    pub(crate) async fn open_lane(&self) -> Result<Arc<Lane>, TransportError> {
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
    pub(crate) async fn publish_acked(
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

    pub(crate) async fn replies(self: &Arc<Self>) -> Result<Arc<Replies>, TransportError> {
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
