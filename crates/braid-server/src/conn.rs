//! The connection layer: accepts TCP connections, speaks HTTP/1.1 or h2c
//! on each (hyper-util's auto builder, as `axum::serve` does), and bounds
//! what a client can hold: a cap on open connections, a header-read
//! timeout, and an idle timeout for connections with no request in flight.
//!
//! Nothing may stall forever either: a request body must keep arriving and
//! a client must keep reading what it is sent, each with no gap longer than
//! the idle timeout.
//!
//! A connection counts against the cap for as long as its socket lives,
//! including after a WebSocket upgrade (the permit travels with the
//! socket). Requests in flight (a `?wait=true`, an event stream) keep their
//! connection; only a connection with nothing to do and no bytes moving is
//! closed as idle.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How the server treats connections and requests from browsers.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Origins, besides the server's own, whose pages may call the API and
    /// open its event streams: `scheme://host[:port]`, e.g.
    /// `https://dash.example.com`.
    pub allow_origins: Vec<String>,
    /// Serve `/metrics` without the token.
    pub public_metrics: bool,
    /// How long a client may take to send a request's headers over HTTP/1;
    /// this also closes a keep-alive connection that sends no next request.
    pub header_timeout: Duration,
    /// A connection with no request in flight and no bytes moving for this
    /// long is closed; so is one whose client reads nothing it is sent, or
    /// stops sending a request body, for this long, and a WebSocket whose
    /// client answers no ping.
    pub idle_timeout: Duration,
    /// Most connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            allow_origins: Vec::new(),
            public_metrics: false,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 2048,
        }
    }
}

/// The most an HTTP/1 connection buffers (so also the largest request
/// head): hyper's default is about 400 KiB, times every connection.
const MAX_CONNECTION_BUFFER: usize = 64 * 1024;

/// The most requests one h2c connection carries at once.
const MAX_H2_STREAMS: u32 = 100;

/// At most this many refused connections are being answered at once;
/// beyond it they are closed without a word.
const MAX_REFUSING: usize = 64;

/// The answer to a connection beyond the cap.
fn refusal() -> String {
    let body = r#"{"error":{"code":"too_many_connections","message":"the server has as many connections open as it takes; try again later"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Serves `router` on `listener` until `stop` is cancelled; then stops
/// accepting, lets each connection finish its requests in flight and
/// returns once all have closed, or at once when `force` is cancelled.
pub(crate) async fn serve_connections(
    listener: TcpListener,
    router: Router,
    config: HttpConfig,
    stop: CancellationToken,
    force: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(MAX_CONNECTION_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS);
    let builder = Arc::new(builder);
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, a connection reset before it
                    // was taken: wait a moment rather than spin.
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("braid_server_connections_refused_total").increment(1);
            tracing::debug!(%peer, max = config.max_connections, "connection refused: at the connection cap");
            refuse(stream, &refusing);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Tracked {
            inner: stream,
            activity: activity.clone(),
            stall_limit: config.idle_timeout,
            stalled: None,
            _permit: permit,
        });
        let service = {
            let activity = activity.clone();
            let router = router.clone();
            let gap = config.idle_timeout;
            hyper::service::service_fn(move |request: Request<Incoming>| {
                let busy = Busy::new(activity.clone());
                let router = router.clone();
                async move {
                    let request = request.map(|body| {
                        Body::new(Arriving {
                            body,
                            gap,
                            waiting: None,
                        })
                    });
                    let response = router.oneshot(request).await?;
                    Ok::<_, Infallible>(
                        response.map(|body| Body::new(Guarded { body, _busy: busy })),
                    )
                }
            })
        };
        let builder = builder.clone();
        let stop = stop.clone();
        let force = force.clone();
        let idle = config.idle_timeout;
        connections.spawn(async move {
            let connection = builder.serve_connection_with_upgrades(io, service);
            tokio::pin!(connection);
            let mut closing = false;
            loop {
                let wait = if activity.in_flight() > 0 {
                    idle
                } else {
                    idle.saturating_sub(activity.idle_for())
                };
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(err) = result {
                            tracing::debug!(%peer, error = %err, "connection ended");
                        }
                        break;
                    }
                    () = stop.cancelled(), if !closing => {
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    () = force.cancelled() => break,
                    () = tokio::time::sleep(wait.max(Duration::from_millis(5))), if !closing => {
                        if activity.in_flight() == 0 && activity.idle_for() >= idle {
                            tracing::debug!(%peer, "closing an idle connection");
                            closing = true;
                            connection.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Answers a connection beyond the cap with 503 and closes it, reading
/// what the client already sent so that the close does not reset the
/// answer away. Bounded in number and time.
fn refuse(mut stream: TcpStream, refusing: &Arc<Semaphore>) {
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            stream.write_all(refusal().as_bytes()).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 1024];
            let mut drained = 0;
            while drained < 64 * 1024 {
                match tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await? {
                    0 => break,
                    n => drained += n,
                }
            }
            io::Result::Ok(())
        })
        .await;
    });
}

/// What a connection is doing: when bytes last moved, and how many of its
/// requests are in flight.
struct Activity {
    born: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            born: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let now = self.born.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(last)
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// One request in flight, until its response body is done with.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A response body that keeps its request counted as in flight.
struct Guarded {
    body: Body,
    _busy: Busy,
}

impl http_body::Body for Guarded {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A request body that must keep arriving: a gap of more than `gap`
/// between its pieces fails it (a client that announced a body and stopped
/// sending would otherwise hold its handler forever).
struct Arriving {
    body: Incoming,
    gap: Duration,
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for Arriving {
    type Data = axum::body::Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Pending => {
                let gap = self.gap;
                let waiting = self
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
                if waiting.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the request body stopped arriving for {gap:?}"),
                    ))));
                }
                Poll::Pending
            }
            Poll::Ready(frame) => {
                self.waiting = None;
                Poll::Ready(frame.map(|f| f.map_err(io::Error::other)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A socket that notes when bytes move, fails a write that has made no
/// progress for `stall_limit` (a client that stopped reading, say an event
/// stream's), and holds its connection permit.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
    stall_limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    _permit: OwnedSemaphorePermit,
}

impl Tracked {
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Pending => {
                let limit = self.stall_limit;
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if stalled.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the client has read nothing for {limit:?}"),
                    )));
                }
                Poll::Pending
            }
            Poll::Ready(result) => {
                self.stalled = None;
                if matches!(result, Ok(n) if n > 0) {
                    self.activity.touch();
                }
                Poll::Ready(result)
            }
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Largest message or frame a WebSocket client may send. The server only
/// streams; what it reads from clients is control frames (pings, pongs,
/// close), so a few KB is plenty, and it bounds the memory each client can
/// make the server hold.
pub const WS_MAX_MESSAGE_BYTES: usize = 4 * 1024;

/// The longest a WebSocket waits between pings to its client.
const WS_MAX_PING_INTERVAL: Duration = Duration::from_secs(15);

/// A WebSocket upgrade with this server's transport settings: small read
/// and write buffers and the [`WS_MAX_MESSAGE_BYTES`] limit.
pub(crate) fn limit_websocket(
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> axum::extract::ws::WebSocketUpgrade {
    upgrade
        .read_buffer_size(WS_MAX_MESSAGE_BYTES)
        .write_buffer_size(8 * 1024)
        .max_message_size(WS_MAX_MESSAGE_BYTES)
        .max_frame_size(WS_MAX_MESSAGE_BYTES)
}

/// How often a WebSocket pings its client, given the idle timeout: often
/// enough that a live client answers several times before it runs out.
pub(crate) fn ws_ping_interval(idle: Duration) -> Duration {
    (idle / 3)
        .min(WS_MAX_PING_INTERVAL)
        .max(Duration::from_millis(10))
}
