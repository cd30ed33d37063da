//! The HTTP listener: accepts connections and serves each with hyper's HTTP/1.1 connection,
//! so that no client, with a token or without, holds a connection or a request open at will.
//!
//! Per connection (limits from `[server]`, see [`ConnectionLimits`]):
//! - **header read**: a connection must send a request's complete head within
//!   `header_read_timeout` of its first byte (of the accept, for the first request), else it
//!   is closed;
//! - **idle**: a kept-alive connection that sends nothing for `idle_timeout` after an answer
//!   is closed;
//! - **request**: the body must arrive within `request_timeout` of the head's first byte,
//!   else the request is answered `408` (the deadline travels as [`RequestDeadline`]; the
//!   body reader enforces it);
//! - **size of the head**: more than `max_header_bytes` or `max_headers` is answered `431`
//!   by hyper and the connection closed;
//! - **count**: beyond `max_connections` open connections a new one is closed at once;
//!   open ones keep being served;
//! - **a client that stops reading** its answer for `idle_timeout` is closed (a write that
//!   makes no progress that long fails).
//!
//! Why not hyper's own `header_read_timeout`: hyper starts that timer whenever it waits for a
//! request head, including while a kept-alive connection waits between requests, so it cannot
//! tell a slow head (seconds) from an idle connection (a minute). [`GuardedIo`] keeps both
//! clocks, fed by the bytes it reads and by the service marking where a request starts and
//! ends.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// hyper's default bound on header count; anything else costs a heap allocation per request.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// How long to pause accepting after an error such as running out of file descriptors:
/// retrying at once would spin while nothing can change.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The limits every connection is served under.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

impl ConnectionLimits {
    pub fn from_config(server: &crate::config::ServerConfig) -> Self {
        Self {
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
            request_timeout: server.request_timeout,
            max_connections: server.max_connections,
            max_header_bytes: server.max_header_bytes,
            max_headers: server.max_headers,
        }
    }
}

/// When the request's body must have arrived (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct RequestDeadline(pub Instant);

/// Serves `router` on `listener` until `close`, then lets open connections finish their
/// requests (idle ones close at once) and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    close: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = Connections::new(router, limits);
    loop {
        let (stream, peer) = tokio::select! {
            () = close.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if !is_per_connection_error(&e) {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            // Dropping the stream closes it: the client sees the connection end at once.
            crate::metrics::metrics().connections_refused.inc();
            continue;
        };
        connections.spawn(stream, peer, permit);
    }
    drop(listener);
    connections.finish().await;
}

/// The connections of one listener: how each is served, and every one's task, so that the
/// ones still open after the shutdown's bound can be ended (they hold the application
/// state, and with it the audit trail's handle).
struct Connections {
    http: hyper::server::conn::http1::Builder,
    router: Router,
    limits: ConnectionLimits,
    graceful: GracefulShutdown,
    tasks: TaskTracker,
    abandon: CancellationToken,
}

impl Connections {
    fn new(router: Router, limits: ConnectionLimits) -> Self {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            // Both clocks are kept by GuardedIo (see the module docs).
            .header_read_timeout(None)
            .max_header_size(limits.max_header_bytes);
        if limits.max_headers != HYPER_DEFAULT_MAX_HEADERS {
            http.max_headers(limits.max_headers);
        }
        Self {
            http,
            router,
            limits,
            graceful: GracefulShutdown::new(),
            tasks: TaskTracker::new(),
            abandon: CancellationToken::new(),
        }
    }

    /// Serves one accepted connection in a task of its own, holding `permit` until it ends.
    fn spawn(&self, stream: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
        let _ = stream.set_nodelay(true);
        let phase = Arc::new(Mutex::new(ConnState {
            phase: Phase::ReadingHead {
                since: Instant::now(),
            },
            parked_reader: None,
        }));
        let io = TokioIo::new(GuardedIo::new(stream, Arc::clone(&phase), self.limits));
        let router = self.router.clone();
        let request_timeout = self.limits.request_timeout;
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            let head_began = begin_request(&phase);
            let extensions = request.extensions_mut();
            extensions.insert(ConnectInfo(peer));
            extensions.insert(RequestDeadline(head_began + request_timeout));
            let answer = router.clone().oneshot(request.map(axum::body::Body::new));
            let phase = Arc::clone(&phase);
            async move {
                let response = answer.await;
                end_request(&phase);
                response
            }
        });
        let connection = self.graceful.watch(self.http.serve_connection(io, service));
        let open = crate::metrics::metrics().connections_open.clone();
        let abandon = self.abandon.clone();
        self.tasks.spawn(async move {
            open.inc();
            tokio::select! {
                served = connection => {
                    if let Err(e) = served {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                }
                // Dropping the connection closes it.
                () = abandon.cancelled() => {}
            }
            open.dec();
            drop(permit);
        });
    }

    /// Lets open requests finish. A client that holds its connection past that (a request
    /// never completed, an answer never read) must not keep the process from stopping and
    /// writing its audit trail.
    async fn finish(self) {
        self.tasks.close();
        if tokio::time::timeout(self.limits.request_timeout, self.graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the request timeout; closing them");
            self.abandon.cancel();
        }
        self.tasks.wait().await;
    }
}

/// Errors of one connection that was being accepted (the client gave up): nothing to report.
fn is_per_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Where a connection is in its request cycle: which clock runs.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// A request head is (or, for a new connection, is due to be) arriving.
    ReadingHead { since: Instant },
    /// A request is being served: its body is bounded by the request deadline instead.
    Serving,
    /// Answered; waiting for the next request.
    Idle { since: Instant },
}

/// A connection's phase, shared by its socket and its service.
struct ConnState {
    phase: Phase,
    /// hyper's read that found no bytes while a request was served (no clock ran for it):
    /// woken when the request ends, so the idle clock starts even if no byte ever comes.
    parked_reader: Option<Waker>,
}

type SharedState = Mutex<ConnState>;

fn lock(state: &SharedState) -> std::sync::MutexGuard<'_, ConnState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks a request's head as read; returns when its head began.
fn begin_request(state: &SharedState) -> Instant {
    let mut state = lock(state);
    let began = match state.phase {
        Phase::ReadingHead { since } => since,
        // Pipelined: the head was already buffered.
        Phase::Serving | Phase::Idle { .. } => Instant::now(),
    };
    state.phase = Phase::Serving;
    began
}

fn end_request(state: &SharedState) {
    let mut state = lock(state);
    state.phase = Phase::Idle {
        since: Instant::now(),
    };
    if let Some(reader) = state.parked_reader.take() {
        reader.wake();
    }
}

/// The connection's socket, closing it (a read error to hyper) when the phase's clock runs
/// out while hyper waits for bytes.
struct GuardedIo {
    inner: TcpStream,
    phase: Arc<SharedState>,
    limits: ConnectionLimits,
    timer: Pin<Box<Sleep>>,
    /// Since when writes make no progress (the client does not read), if they do not.
    write_stalled_until: Option<Instant>,
    write_timer: Pin<Box<Sleep>>,
}

impl GuardedIo {
    fn new(inner: TcpStream, phase: Arc<SharedState>, limits: ConnectionLimits) -> Self {
        Self {
            inner,
            phase,
            limits,
            timer: Box::pin(tokio::time::sleep(limits.header_read_timeout)),
            write_stalled_until: None,
            write_timer: Box::pin(tokio::time::sleep(limits.idle_timeout)),
        }
    }

    /// After a write that could not proceed: an error once writes have made no progress for
    /// `idle_timeout`.
    fn poll_write_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let deadline = *self
            .write_stalled_until
            .get_or_insert_with(|| Instant::now() + self.limits.idle_timeout);
        if self.write_timer.deadline() != deadline {
            self.write_timer.as_mut().reset(deadline);
        }
        match self.write_timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn wrote(
        &mut self,
        written: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Pending => self.poll_write_stall(cx),
            done => {
                self.write_stalled_until = None;
                // An answer still being written is not idleness: the idle clock starts when
                // the last byte went out.
                let mut state = lock(&self.phase);
                if let Phase::Idle { since } = &mut state.phase {
                    *since = Instant::now();
                }
                done
            }
        }
    }

    /// Bytes arrived: an idle connection now reads a head.
    fn bytes_arrived(&self) {
        let mut state = lock(&self.phase);
        if let Phase::Idle { .. } = state.phase {
            state.phase = Phase::ReadingHead {
                since: Instant::now(),
            };
        }
    }

    /// When the connection is closed if nothing more arrives; none while serving (then the
    /// reader is parked, to be woken when the request ends).
    fn deadline(&self, reader: &Waker) -> Option<(Instant, &'static str)> {
        let mut state = lock(&self.phase);
        match state.phase {
            Phase::ReadingHead { since } => Some((
                since + self.limits.header_read_timeout,
                "request head not complete in time",
            )),
            Phase::Idle { since } => Some((since + self.limits.idle_timeout, "idle")),
            Phase::Serving => {
                state.parked_reader = Some(reader.clone());
                None
            }
        }
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.bytes_arrived();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some((deadline, why)) = this.deadline(cx.waker()) else {
                    return Poll::Pending;
                };
                if this.timer.deadline() != deadline {
                    this.timer.as_mut().reset(deadline);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(written, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(written, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
