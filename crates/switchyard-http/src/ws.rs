//! WebSocket routes (microservices_connector's minisocket) on the same port as RPC.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use switchyard_core::service::{WsMessage, WsRoute};
use tokio::sync::broadcast::error::RecvError;

use crate::server::ServerState;

/// The frame an unknown path gets before the socket closes, as microservices_connector sends it.
pub(crate) const NO_PATH: &str = "Websocket close: path does not exist";

pub(crate) async fn upgrade(state: ServerState, req: Request, path: String) -> Response {
    let (mut parts, _body) = req.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    let service = state.served.as_ref().map(|s| s.service().clone());
    // The body limit holds for WebSocket messages too (tungstenite's default is 64 MiB).
    let limit = service
        .as_ref()
        .map_or(switchyard_core::service::DEFAULT_MAX_BODY, |s| {
            s.body_limit()
        });
    let upgrade = upgrade.max_message_size(limit).max_frame_size(limit);
    if let Some(service) = &service {
        if !service.ws_token_accepts(ws_token(&parts).as_deref()) {
            return crate::server::error_response(
                switchyard_core::error::ErrorCode::Unauthorized,
                format!("missing or invalid token for {path}"),
            );
        }
    }
    let route = service
        .as_ref()
        .and_then(|s| s.ws_route(&path).map(|(r, p)| (r.clone(), p)));
    upgrade.on_upgrade(move |socket| async move {
        match route {
            None => not_found(socket).await,
            Some((WsRoute::Handler(f), params)) => {
                let f = move |text| {
                    f(WsMessage {
                        text,
                        params: params.clone(),
                    })
                };
                handler_loop(socket, f).await
            }
            Some((WsRoute::Events { topic }, params)) => {
                let topic = topic.or_else(|| params.get("topic").cloned());
                match (topic, service) {
                    (Some(topic), Some(service)) => match service.hub().subscribe(&topic) {
                        Ok(watch) => events_loop(socket, watch).await,
                        Err(full) => refuse(socket, &full.to_string()).await,
                    },
                    _ => not_found(socket).await,
                }
            }
            #[allow(unreachable_patterns)]
            Some(_) => not_found(socket).await,
        }
    })
}

/// The token given with an upgrade request: `?token=`, `Authorization: Bearer`, `x-token`.
fn ws_token(parts: &axum::http::request::Parts) -> Option<String> {
    let query = parts.uri.query().unwrap_or("");
    let from_query = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned());
    from_query
        .or_else(|| crate::server::bearer(&parts.headers))
        .or_else(|| {
            let given = parts.headers.get(switchyard_core::message::header::TOKEN)?;
            given.to_str().ok().map(str::to_string)
        })
}

/// Closes a watcher over the hub's caps: "try again later".
async fn refuse(mut socket: WebSocket, why: &str) {
    let frame = axum::extract::ws::CloseFrame {
        code: 1013,
        reason: why.to_string().into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

async fn not_found(mut socket: WebSocket) {
    let _ = socket.send(Message::Text(NO_PATH.into())).await;
    let _ = socket.send(Message::Close(None)).await;
}

async fn handler_loop<F, Fut>(mut socket: WebSocket, handler: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    while let Some(Ok(msg)) = socket.recv().await {
        match msg {
            Message::Text(text) => {
                if text.as_str() == "exit" {
                    let _ = socket.send(Message::Close(None)).await;
                    break;
                }
                if let Some(reply) = handler(text.to_string()).await {
                    if socket.send(Message::Text(reply.into())).await.is_err() {
                        break;
                    }
                }
            }
            Message::Binary(_) => {
                let _ = socket
                    .send(Message::Text(
                        "error: binary frames are not supported; send text".into(),
                    ))
                    .await;
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
}

async fn events_loop(mut socket: WebSocket, mut rx: switchyard_core::push::Watch) {
    loop {
        tokio::select! {
            event = rx.recv() => match event {
                Ok(text) => {
                    if socket.send(Message::Text(text.as_ref().into())).await.is_err() {
                        break;
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    let note = format!("{{\"warning\": \"{n} events dropped: reading too slowly\"}}");
                    if socket.send(Message::Text(note.into())).await.is_err() {
                        break;
                    }
                }
                Err(RecvError::Closed) => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(t))) if t.as_str() == "exit" => {
                    let _ = socket.send(Message::Close(None)).await;
                    break;
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                _ => {}
            }
        }
    }
}
