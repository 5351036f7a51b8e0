//! Calls: sent with a reply subject, answered by the instances of the named service.

use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::StreamExt;
use switchyard_core::call::CallRequest;
use switchyard_core::codec::Codec;
use switchyard_core::error::{redact_url, CallError, RemoteError, TransportError};
use switchyard_core::message::header as h;
use switchyard_core::server::Served;
use switchyard_core::transport::{IncomingCall, Listener, ReplyTo, Requester, Responder};
use switchyard_core::values::Reply;
use switchyard_core::wire;

use crate::binding::*;
use crate::NatsTransport;

impl Requester for NatsTransport {
    fn request(&self, request: CallRequest) -> BoxFuture<'_, Result<Reply, CallError>> {
        // What needs no waiting is done before the future exists: the boxed future then holds
        // only what the call waits on.
        let CallRequest {
            service,
            route,
            args,
            token,
            headers: call_headers,
            deadline,
            ..
        } = request;
        let Some(service) = service else {
            return Box::pin(futures::future::ready(Err(CallError::NoService {
                route,
                transport: redact_url(&self.url),
            })));
        };
        let subject = match route_subject(&self.namespace, &service, &route) {
            Ok(s) => s,
            Err(reason) => {
                return Box::pin(futures::future::ready(Err(CallError::Encode {
                    route,
                    reason,
                })))
            }
        };
        let body = match wire::encode_call(&args, token.as_deref(), Codec::Json) {
            Ok(b) => b,
            Err(e) => {
                let reason = e.to_string();
                return Box::pin(futures::future::ready(Err(CallError::Encode {
                    route,
                    reason,
                })));
            }
        };
        let mut headers = to_nats_headers(&call_headers);
        if let Some(d) = deadline {
            let ms = d.saturating_duration_since(Instant::now()).as_millis();
            headers.insert(
                h::DEADLINE_MS,
                u64::try_from(ms).unwrap_or(u64::MAX).to_string().as_str(),
            );
        }
        Box::pin(async move {
            let client = self.client().await?;
            let (reply_to, waiting) = self.replies().await?.wait();
            client
                .publish_with_reply_and_headers(subject, reply_to, headers, body)
                .await
                .map_err(|e| CallError::Transport(TransportError::other(e)))?;
            // The caller's own timeout bounds the wait (it drops this future).
            let reply = waiting.await.ok_or_else(|| {
                CallError::Transport(TransportError::Other(
                    "the NATS connection closed before the reply came".into(),
                ))
            })?;
            if reply.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                return Err(CallError::Unreachable {
                    target: format!(
                        "{} (no instance of service {service} serves {route})",
                        redact_url(&self.url)
                    ),
                    source: "no responders".into(),
                });
            }
            let failed = reply
                .headers
                .as_ref()
                .is_some_and(|hm| hm.get(STATUS).is_some());
            wire::decode_reply(route, failed, &reply.payload)
        })
    }
}

/// Answers one call on its reply subject.
struct NatsReply {
    client: async_nats::Client,
    reply_to: async_nats::Subject,
}

impl ReplyTo for NatsReply {
    fn send(self: Box<Self>, outcome: Result<Reply, RemoteError>) -> BoxFuture<'static, ()> {
        let (payload, status) = wire::reply_body(outcome);
        let Self { client, reply_to } = *self;
        Box::pin(async move {
            // A success needs no header block; only an error carries its code.
            let sent = match status {
                None => client.publish(reply_to, payload).await,
                Some(code) => {
                    let mut hm = async_nats::HeaderMap::new();
                    hm.insert(STATUS, code.to_string().as_str());
                    client.publish_with_headers(reply_to, hm, payload).await
                }
            };
            if let Err(e) = sent {
                tracing::warn!(target: "switchyard", error = %e, "could not send a NATS reply");
            }
        })
    }
}

/// One received call, or `None` for a message without a reply subject.
fn incoming(
    client: &async_nats::Client,
    prefix: &str,
    message: async_nats::Message,
) -> Option<IncomingCall> {
    let reply_to = message.reply?;
    let route = route_of(message.subject.as_str(), prefix);
    let headers = from_nats_headers(message.headers.as_ref());
    let deadline = headers.deadline().map(|d| Instant::now() + d);
    Some(IncomingCall {
        request: wire::decode_call(route, &message.payload, headers, deadline),
        reply: Box::new(NatsReply {
            client: client.clone(),
            reply_to,
        }),
    })
}

impl Responder for NatsTransport {
    fn listen(&self, served: Arc<Served>) -> BoxFuture<'_, Result<Listener, TransportError>> {
        Box::pin(async move {
            let client = self.client().await?.clone();
            // Made once: every call's route is read off its subject after this prefix.
            let prefix = service_prefix(&self.namespace, served.name());
            check_subject("service", prefix.trim_end_matches('.')).map_err(|reason| {
                TransportError::InvalidName {
                    what: "service",
                    name: served.name().to_string(),
                    reason,
                }
            })?;
            // Instances of one service share its calls: the queue group is the service.
            let calls = client
                .queue_subscribe(format!("{prefix}>"), served.name().to_string())
                .await
                .map_err(TransportError::other)?;
            // The subscription is only queued for the connection to send: `listen` returns
            // once the server has it, so that a call made right after finds a responder.
            client.flush().await.map_err(TransportError::other)?;
            let calls =
                calls.filter_map(move |m| futures::future::ready(incoming(&client, &prefix, m)));
            Ok(Listener::new(Box::pin(calls), self.url.clone()))
        })
    }
}
