//! The in-process transport (`mem://NAME`): services and callers in one process, through the
//! same API, with no serialization and no network. Every `MemTransport` made from the same
//! URL shares one bus.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;

use crate::call::CallRequest;
use crate::error::{CallError, TransportError};
use crate::message::{header, Envelope};
use crate::served::Served;
use crate::transport::{
    Acker, Capabilities, Delivery, DeliveryGuarantee, Listener, LocalInstance, Ordering, Publisher,
    Requester, Responder, SubscribeOptions, Subscriber, Subscription, SubscriptionMode, Transport,
};
use crate::url_options::UrlOptions;
use crate::values::Reply;

/// Default largest in-process message: 1 MiB, as on the wire transports, so that code tested
/// in process does not fail later on a broker.
pub const DEFAULT_MAX_MESSAGE: usize = 1024 * 1024;

#[derive(Default)]
struct Bus {
    services: RwLock<Vec<Arc<Served>>>,
    // Changes to `services` so far, counted while it is written: a caller that found the
    // only instance of a service keeps calling it until this moves (`LocalInstance`).
    changes: Arc<AtomicU64>,
    next: AtomicUsize,
    topics: Mutex<HashMap<String, Topic>>,
}

#[derive(Default)]
struct Topic {
    groups: HashMap<
        String,
        (
            async_channel::Sender<Envelope>,
            async_channel::Receiver<Envelope>,
        ),
    >,
    broadcast: Vec<async_channel::Sender<Envelope>>,
}

static BUSES: LazyLock<Mutex<HashMap<String, Arc<Bus>>>> = LazyLock::new(Default::default);

/// The in-process transport.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::sync::Arc;
/// use switchyard_core::{client::Client, handler::rpc, mem::MemTransport, server, service::Service};
/// async fn hello(name: String) -> String { format!("Welcome {name}") }
/// let bus = Arc::new(MemTransport::new("doc-example"));
/// let _server = server::serve(bus.clone(), Service::new("app1").route("/helloworld", rpc(hello))).await.unwrap();
/// let reply: String = Client::new(bus).service("app1").call("/helloworld", "Mr. Developer".to_string()).await.unwrap();
/// assert_eq!(reply, "Welcome Mr. Developer");
/// # }
/// ```
#[derive(Clone)]
pub struct MemTransport {
    name: String,
    bus: Arc<Bus>,
    max_message: usize,
}

impl std::fmt::Debug for MemTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemTransport")
            .field("name", &self.name)
            .finish()
    }
}

impl MemTransport {
    /// The bus named `name` (created on first use).
    pub fn new(name: &str) -> Self {
        let bus = BUSES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone();
        Self {
            name: name.to_string(),
            bus,
            max_message: DEFAULT_MAX_MESSAGE,
        }
    }

    /// The bus of a `mem://NAME[?max_message_bytes=N]` URL (`mem://` alone is the bus named
    /// `default`).
    pub fn from_url(url: &str) -> Result<Self, TransportError> {
        let rest = url
            .strip_prefix("mem://")
            .ok_or_else(|| TransportError::InvalidUrl {
                url: url.to_string(),
                reason: "expected mem://NAME".into(),
            })?;
        let name = rest.split('?').next().unwrap_or(rest).trim_matches('/');
        let options = UrlOptions::parse(url, &[])?;
        options.no_namespace("in process: the bus's name is the namespace")?;
        let mut transport = Self::new(if name.is_empty() { "default" } else { name });
        if let Some(bytes) = options.number("max_message_bytes")? {
            transport.max_message = bytes;
        }
        Ok(transport)
    }

    /// Sets the largest message accepted by `publish`.
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }
}

struct MemAcker {
    envelope: Option<Envelope>,
    queue: async_channel::Sender<Envelope>,
}

impl MemAcker {
    fn requeue(
        envelope: Envelope,
        queue: async_channel::Sender<Envelope>,
        delay: Option<Duration>,
    ) {
        let mut env = envelope;
        let attempt = env.headers.attempt() + 1;
        env.headers.insert(header::ATTEMPT, attempt.to_string());
        match delay {
            Some(d) if !d.is_zero() => {
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    let _ = queue.send(env).await;
                });
            }
            _ => {
                let _ = queue.try_send(env);
            }
        }
    }
}

impl Acker for MemAcker {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        self.envelope = None;
        Box::pin(async { Ok(()) })
    }

    fn nack(
        mut self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        if let Some(env) = self.envelope.take() {
            Self::requeue(env, self.queue.clone(), delay);
        }
        Box::pin(async { Ok(()) })
    }

    /// Requeues the envelope handed back (with what the consumer added to it, such as the
    /// first failure's time), not the copy kept for a consumer that dies.
    fn nack_with(
        mut self: Box<Self>,
        envelope: Envelope,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        if self.envelope.take().is_some() {
            Self::requeue(envelope, self.queue.clone(), delay);
        }
        Box::pin(async { Ok(()) })
    }
}

impl Drop for MemAcker {
    fn drop(&mut self) {
        // Dropped without ack or nack: the consumer died mid-message. Put it back for another.
        if let Some(env) = self.envelope.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                Self::requeue(env, self.queue.clone(), None);
            } else {
                let mut env = env;
                let attempt = env.headers.attempt() + 1;
                env.headers.insert(header::ATTEMPT, attempt.to_string());
                let _ = self.queue.try_send(env);
            }
        }
    }
}

impl Publisher for MemTransport {
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            if envelope.payload.len() > self.max_message {
                return Err(TransportError::PayloadTooLarge {
                    size: envelope.payload.len(),
                    limit: self.max_message,
                });
            }
            let mut topics = self.bus.topics.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(topic) = topics.get_mut(&envelope.subject) {
                for (tx, _) in topic.groups.values() {
                    // Unbounded: the queue is the group's backlog; a full queue would lose
                    // messages that publish already confirmed.
                    let _ = tx.try_send(envelope.clone());
                }
                topic
                    .broadcast
                    .retain(|tx| tx.try_send(envelope.clone()).is_ok());
            }
            Ok(())
        })
    }

    fn keep(&self, topic: &str, group: &str) -> BoxFuture<'_, Result<(), TransportError>> {
        // The group's queue made now holds what comes until a member subscribes (in this
        // process: the bus is not durable).
        let mut topics = self.bus.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics
            .entry(topic.to_string())
            .or_default()
            .groups
            .entry(group.to_string())
            .or_insert_with(async_channel::unbounded);
        Box::pin(async { Ok(()) })
    }
}

impl Subscriber for MemTransport {
    fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Subscription, TransportError>> {
        let topic = topic.to_string();
        Box::pin(async move {
            let mut topics = self.bus.topics.lock().unwrap_or_else(|p| p.into_inner());
            let entry = topics.entry(topic).or_default();
            let (tx, rx) = match options.mode {
                SubscriptionMode::Group(name) => entry
                    .groups
                    .entry(name)
                    .or_insert_with(async_channel::unbounded)
                    .clone(),
                SubscriptionMode::Broadcast => {
                    let (tx, rx) = async_channel::unbounded();
                    entry.broadcast.push(tx.clone());
                    (tx, rx)
                }
                #[allow(unreachable_patterns)]
                _ => {
                    return Err(TransportError::Unsupported {
                        transport: "mem",
                        operation: "this subscription mode",
                    })
                }
            };
            let stream = rx.map(move |envelope| {
                Ok(Delivery::new(
                    envelope.clone(),
                    Box::new(MemAcker {
                        envelope: Some(envelope),
                        queue: tx.clone(),
                    }),
                ))
            });
            Ok(Box::pin(stream) as Subscription)
        })
    }
}

impl MemTransport {
    /// An instance of the service named `name` on this bus, taking turns between instances.
    /// With it, when it is the only one, the count of the bus's changes it was picked at.
    fn pick(&self, name: &str) -> Option<(Arc<Served>, Option<u64>)> {
        let services = self.bus.services.read().unwrap_or_else(|p| p.into_inner());
        let mut named = services.iter().filter(|s| s.name() == name);
        let first = named.next()?;
        let others = named.count();
        if others == 0 {
            // Read under the lock its writers hold: the count of the services seen here.
            let seen = self.bus.changes.load(AtomicOrdering::Acquire);
            return Some((first.clone(), Some(seen)));
        }
        let i = self.bus.next.fetch_add(1, AtomicOrdering::Relaxed) % (others + 1);
        let served = services.iter().filter(|s| s.name() == name).nth(i)?;
        Some((served.clone(), None))
    }
}

impl Requester for MemTransport {
    fn request(&self, request: CallRequest) -> BoxFuture<'_, Result<Reply, CallError>> {
        Box::pin(async move {
            let Some(name) = request.service.clone() else {
                return Err(CallError::NoService {
                    route: request.route,
                    transport: self.url(),
                });
            };
            let (served, _) = self.pick(&name).ok_or_else(|| CallError::Unreachable {
                target: format!("mem://{} (service {name})", self.name),
                source: "no instance of the service is serving on this bus".into(),
            })?;
            let route = request.route.clone();
            served.call(request).await.map_err(|e| CallError::Remote {
                route,
                error: e.into_remote(),
            })
        })
    }
}

impl Responder for MemTransport {
    /// Calls in process are answered in the caller's task (see [`Transport::local`]): the
    /// listener only makes the service findable by name until the server stops.
    fn listen(&self, served: Arc<Served>) -> BoxFuture<'_, Result<Listener, TransportError>> {
        Box::pin(async move {
            {
                let mut services = self.bus.services.write().unwrap_or_else(|p| p.into_inner());
                services.push(served.clone());
                self.bus.changes.fetch_add(1, AtomicOrdering::Release);
            }
            let bus = self.bus.clone();
            Ok(Listener::driven(self.url(), false).on_close(async move {
                let mut services = bus.services.write().unwrap_or_else(|p| p.into_inner());
                services.retain(|s| !Arc::ptr_eq(s, &served));
                bus.changes.fetch_add(1, AtomicOrdering::Release);
            }))
        })
    }
}

impl Transport for MemTransport {
    fn name(&self) -> &'static str {
        "mem"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: false,
            ordering: Ordering::None,
            delivery: DeliveryGuarantee::AtLeastOnce,
            request_reply: true,
            consumer_groups: true,
            broadcast: true,
            redelivery: true,
            services_share_url: true,
            keeps_for_later_groups: true,
            replay: false,
        }
    }

    fn url(&self) -> String {
        format!("mem://{}", self.name)
    }

    fn requester(&self) -> Option<&dyn Requester> {
        Some(self)
    }

    fn responder(&self) -> Option<&dyn Responder> {
        Some(self)
    }

    fn local(&self, service: &str) -> Option<LocalInstance> {
        let (served, seen) = self.pick(service)?;
        Some(match seen {
            Some(seen) => LocalInstance::kept_while(served, self.bus.changes.clone(), seen),
            None => LocalInstance::new(served),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::client::Client;
    use crate::handler::rpc;
    use crate::server::serve;
    use crate::service::Service;

    fn numbered(n: u32) -> Service {
        Service::new("a").route("/n", rpc(move || async move { n }))
    }

    #[tokio::test]
    async fn a_kept_instance_gives_way_when_the_services_change() {
        let bus: Arc<dyn Transport> = Arc::new(MemTransport::new("kept-instance"));
        let first = serve(bus.clone(), numbered(1)).await.unwrap();
        let client = Client::new(bus.clone()).service("a");
        for _ in 0..3 {
            assert_eq!(client.call::<_, u32>("/n", ()).await.unwrap(), 1);
        }
        // A second instance: the calls take turns again.
        let second = serve(bus.clone(), numbered(2)).await.unwrap();
        let mut answered = HashSet::new();
        for _ in 0..10 {
            answered.insert(client.call::<_, u32>("/n", ()).await.unwrap());
        }
        assert_eq!(answered, HashSet::from([1, 2]));
        // The first stopped: never called again, by this client or a new one.
        first.shutdown().await;
        let fresh = Client::new(bus.clone()).service("a");
        for _ in 0..5 {
            assert_eq!(client.call::<_, u32>("/n", ()).await.unwrap(), 2);
            assert_eq!(fresh.call::<_, u32>("/n", ()).await.unwrap(), 2);
        }
        second.shutdown().await;
        let gone = fresh.call::<_, u32>("/n", ()).await.unwrap_err();
        assert!(matches!(gone, CallError::Unreachable { .. }), "{gone}");
        assert!(client.call::<_, u32>("/n", ()).await.is_err());
    }
}
