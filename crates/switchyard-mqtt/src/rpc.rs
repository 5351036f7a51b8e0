//! Calls: published to the named service's topic with a response topic and correlation data,
//! answered by one instance of its share group.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};
use switchyard_core::call::CallRequest;
use switchyard_core::codec::Codec;
use switchyard_core::error::{redact_url, CallError, ErrorCode, RemoteError, TransportError};
use switchyard_core::message::{header as h, new_id, Headers};
use switchyard_core::server::Served;
use switchyard_core::transport::{IncomingCall, Listener, ReplyTo, Requester, Responder};
use switchyard_core::values::Reply;
use switchyard_core::wire;
use tokio::sync::{mpsc, oneshot};

use crate::binding::*;
use crate::connection::*;

use crate::MqttTransport;

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
pub(crate) struct MqttReply {
    pub(crate) client: AsyncClient,
    pub(crate) reply_to: String,
    pub(crate) correlation: Option<Bytes>,
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
pub(crate) fn incoming(client: &AsyncClient, prefix: &str, p: Publish) -> Option<IncomingCall> {
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
            let mut link = self.inner.links.link();
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
                            link.up();
                            let _ = reader.try_subscribe(filter.clone(), QoS::AtMostOnce);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            link.down();
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
