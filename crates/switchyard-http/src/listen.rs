//! The one place HTTP connections are accepted, for every server of the project (a service's
//! `http://` transport and the event consumer's endpoint): a client that is slow, idle or
//! one of too many cannot hold the server.
//!
//! hyper runs each connection; around it, this adds what hyper does not (hyper's header-read
//! timeout covers only the first request of a connection, and it has no idle timeout or cap
//! on connections):
//! - a **cap on connections**: beyond it a connection is answered `503` with `Retry-After`
//!   and closed, so the process keeps file descriptors for the ones it serves;
//! - an **idle timeout**: a connection with no request in flight that moves no byte for this
//!   long is closed (slow headers on a kept-alive connection, a client that went quiet);
//! - hyper's **header-read timeout** for the first request;
//! - a **body-read timeout**: a body still arriving this long after its request's head fails
//!   with [`BodyReadTimeout`] (the service answers `408`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// Limits on the connections of an HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerLimits {
    /// Connections open at once; more are answered `503` and closed.
    pub max_connections: usize,
    /// Time to receive a connection's first request head (default 10 s).
    pub header_read: Duration,
    /// Time to receive a request's whole body once its head arrived (default 30 s).
    pub body_read: Duration,
    /// Time a connection with no request in flight may stay silent (default 60 s).
    pub idle: Duration,
    /// Requests handled at once; more are answered `503` at once (default 1,024).
    pub max_in_flight: usize,
    /// Bytes of request bodies in flight at once, as declared (a body of unknown length counts
    /// as 64 KiB, one over 16 MiB as 16 MiB); more are answered `503` (default 256 MiB).
    pub max_in_flight_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            max_in_flight: 1024,
            max_in_flight_bytes: 256 << 20,
        }
    }
}

impl ServerLimits {
    /// Sets the cap on open connections.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Sets the time to receive a first request head.
    pub fn header_read(mut self, d: Duration) -> Self {
        self.header_read = d;
        self
    }

    /// Sets the time to receive a request's body.
    pub fn body_read(mut self, d: Duration) -> Self {
        self.body_read = d;
        self
    }

    /// Sets the idle timeout.
    pub fn idle(mut self, d: Duration) -> Self {
        self.idle = d;
        self
    }

    /// Sets the bound on requests in flight.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Sets the bound on request-body bytes in flight.
    pub fn max_in_flight_bytes(mut self, n: usize) -> Self {
        self.max_in_flight_bytes = n.max(1);
        self
    }
}

/// Admission: the requests and body bytes a server has in flight, bounded. Beyond either
/// bound a request is answered `503` with `Retry-After` before its body is read: an overload
/// costs the server nothing but the refusal, never memory (the adaptive limiter of the
/// resilience work is the general form; this bound holds either way).
struct Admission {
    requests: Arc<Semaphore>,
    // In KiB, so that a semaphore's `u32` counts up to 4 TiB.
    kib: Arc<Semaphore>,
}

/// A request admitted: its share of the bounds, given back when it is answered.
struct Admitted {
    _request: tokio::sync::OwnedSemaphorePermit,
    _kib: tokio::sync::OwnedSemaphorePermit,
}

impl Admission {
    fn new(limits: &ServerLimits) -> Self {
        Self {
            requests: Arc::new(Semaphore::new(limits.max_in_flight)),
            kib: Arc::new(Semaphore::new(limits.max_in_flight_bytes.div_ceil(1024))),
        }
    }

    fn admit(&self, headers: &axum::http::HeaderMap) -> Result<Admitted, &'static str> {
        let declared = headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let bytes = match (
            declared,
            headers.contains_key(axum::http::header::TRANSFER_ENCODING),
        ) {
            (Some(n), _) => n.min(16 << 20),
            (None, true) => 64 << 10,
            (None, false) => 0,
        };
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        let request = self
            .requests
            .clone()
            .try_acquire_owned()
            .map_err(|_| "too many requests in flight")?;
        let kib = self
            .kib
            .clone()
            .try_acquire_many_owned(kib)
            .map_err(|_| "too many request bytes in flight")?;
        Ok(Admitted {
            _request: request,
            _kib: kib,
        })
    }
}

/// The body of a `503`: the error shape every answer of the project has.
fn busy_body(why: &str) -> String {
    serde_json::json!({
        "error": {"code": "unavailable", "message": format!("server busy: {why}; retry later")}
    })
    .to_string()
}

/// The answer to a request over the admission bounds.
fn busy(why: &str) -> axum::response::Response {
    let mut r = axum::response::Response::new(axum::body::Body::from(busy_body(why)));
    *r.status_mut() = axum::http::StatusCode::SERVICE_UNAVAILABLE;
    let h = r.headers_mut();
    h.insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    h.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    // The body was not read: the connection is not reused.
    h.insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    r
}

/// Three quarters of the process's open-file limit (what is left covers brokers, files and
/// the refusals themselves), at most 10,000; 1,000 where the limit cannot be read. Read from
/// `/proc/self/limits`: the standard library has no `getrlimit`, and this avoids `unsafe`.
fn default_max_connections() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse::<usize>().ok())
        });
    soft.map_or(1_000, |n| (n / 4 * 3).clamp(16, 10_000))
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves; then stops accepting
/// and lets the connections finish the requests they have in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let admission = Arc::new(Admission::new(&limits));
    // Connections watch `stop`; the server waits on `done` until every one has dropped it.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(target: "switchyard", error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small request/reply frames: without TCP_NODELAY, Nagle's algorithm holds them back.
        let _ = tcp.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tokio::spawn(refuse(tcp));
            continue;
        };
        let (app, mut stop, done) = (app.clone(), stop_rx.clone(), done_tx.clone());
        let admission = admission.clone();
        tokio::spawn(async move {
            let state = Arc::new(ConnState::default());
            let io = TokioIo::new(IdleIo::new(tcp, state.clone(), limits.idle));
            let service = TowerToHyperService::new(tower::service_fn(
                move |req: axum::http::Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    let state = state.clone();
                    let admitted = admission.admit(req.headers());
                    async move {
                        let _admitted = match admitted {
                            Ok(a) => a,
                            Err(why) => return Ok(busy(why)),
                        };
                        let _busy = Busy::enter(&state);
                        let req = req.map(|body| {
                            axum::body::Body::new(TimedBody::new(body, limits.body_read))
                        });
                        let mut response = app.oneshot(req).await;
                        if let Ok(r) = &mut response {
                            use axum::http::StatusCode;
                            match r.status() {
                                // A WebSocket now owns the connection: it is not idle when quiet.
                                StatusCode::SWITCHING_PROTOCOLS => {
                                    state.upgraded.store(true, Ordering::Release)
                                }
                                // Answered before the body was read whole: the connection
                                // cannot carry another request, and the client is told so
                                // rather than finding out by sending one.
                                StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT => {
                                    r.headers_mut().insert(
                                        axum::http::header::CONNECTION,
                                        axum::http::HeaderValue::from_static("close"),
                                    );
                                }
                                _ => {}
                            }
                        }
                        response
                    }
                },
            ));
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read);
            let mut conn = std::pin::pin!(builder.serve_connection(io, service).with_upgrades());
            let mut stopping = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    changed = stop.changed(), if !stopping => {
                        stopping = true;
                        if changed.is_ok() {
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
            drop(permit);
            drop(done);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_tx);
    // Every connection holds a `done` sender: this returns when the last one finished.
    while done_rx.changed().await.is_ok() {}
}

/// Answers a connection over the cap and closes it, bounded in time.
async fn refuse(mut tcp: TcpStream) {
    static REFUSED: AtomicUsize = AtomicUsize::new(0);
    let n = REFUSED.fetch_add(1, Ordering::Relaxed);
    if n.is_power_of_two() {
        tracing::warn!(target: "switchyard", refused = n + 1, "connection refused: too many connections");
    }
    // Written by hand: the connection is never handed to hyper.
    let body = busy_body("too many connections");
    let refusal = format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = tcp.write_all(refusal.as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

/// What a connection's reader needs to know of its requests.
#[derive(Default)]
struct ConnState {
    in_flight: AtomicUsize,
    upgraded: AtomicBool,
}

impl ConnState {
    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && !self.upgraded.load(Ordering::Acquire)
    }
}

/// A request in flight on a connection, for as long as it lives.
struct Busy(Arc<ConnState>);

impl Busy {
    fn enter(state: &Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(state.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection that fails its reads once it has been idle (no request in flight, no byte
/// moved) for `idle`. hyper reads a kept-alive connection while it waits for the next
/// request, so the timer is polled there. (`Unpin`, as hyper's upgrades need: the timer is
/// boxed.)
struct IdleIo {
    tcp: TcpStream,
    timer: Pin<Box<Sleep>>,
    state: Arc<ConnState>,
    idle: Duration,
}

impl IdleIo {
    fn new(tcp: TcpStream, state: Arc<ConnState>, idle: Duration) -> Self {
        Self {
            tcp,
            timer: Box::pin(tokio::time::sleep(idle)),
            state,
            idle,
        }
    }
}

impl AsyncRead for IdleIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.tcp).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.timer.as_mut().reset(Instant::now() + this.idle);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if !this.state.idle() {
                    // Busy: the idle time starts again once it is not.
                    this.timer.as_mut().reset(Instant::now() + this.idle);
                    return Poll::Pending;
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection idle for too long",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for IdleIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.tcp).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.timer.as_mut().reset(Instant::now() + this.idle);
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.timer.as_mut().reset(Instant::now() + this.idle);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

/// The body-read timeout behind a body's read error, if that is what it was.
pub fn body_timeout(e: &(dyn std::error::Error + 'static)) -> Option<BodyReadTimeout> {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<BodyReadTimeout>() {
            return Some(*t);
        }
        source = s.source();
    }
    None
}

/// A request body that did not arrive in time ([`ServerLimits::body_read`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyReadTimeout(pub Duration);

impl std::fmt::Display for BodyReadTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the request body did not arrive within {:?}", self.0)
    }
}

impl std::error::Error for BodyReadTimeout {}

pin_project_lite::pin_project! {
    /// A request body that fails with [`BodyReadTimeout`] once its time is up.
    struct TimedBody {
        #[pin]
        inner: hyper::body::Incoming,
        #[pin]
        deadline: Sleep,
        limit: Duration,
    }
}

impl TimedBody {
    fn new(inner: hyper::body::Incoming, limit: Duration) -> Self {
        Self {
            inner,
            deadline: tokio::time::sleep(limit),
            limit,
        }
    }
}

impl http_body::Body for TimedBody {
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Pending => match this.deadline.poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyReadTimeout(*this.limit))))),
                Poll::Pending => Poll::Pending,
            },
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
