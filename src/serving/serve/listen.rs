//! The accept loop of `flora serve`: HTTP/1 connections with a header timeout and a stall
//! timeout on request bodies, at most `max_connections` at once, and a graceful shutdown
//! that gives up after a deadline.
//!
//! - A connection that does not finish a request's headers within the stall timeout is closed
//!   by hyper (this also closes idle keep-alive connections).
//! - A request body that sends nothing for the stall timeout fails ([`StallBody`]); the
//!   request is answered 408 and the connection closed (see [`super::limits`]).
//! - Past `max_connections`, no further connection is accepted (they wait in the kernel's
//!   listen queue) until one closes.
//! - A connection that ends while the client is still sending lingers ([`super::linger`]), so
//!   the client reads the answer (a 413, a 408) rather than a reset. Lingering sockets have a
//!   cap of their own (`max_connections` more), so they cannot exhaust the file descriptors.
//! - On shutdown, idle connections close at once, busy ones finish their request; those
//!   still open after the shutdown deadline are dropped.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Result;
use axum::Router;
use axum::body::{Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::routing::future::RouteFuture;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::linger::{LingerSlots, Lingering};
use super::prometheus::Metrics;

/// The connection limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Longest wait for a request's headers, or between two pieces of its body.
    pub stall: Duration,
    /// Most connections served at once.
    pub max_connections: usize,
    /// How long a shutdown waits for busy connections.
    pub shutdown: Duration,
}

/// What a request's body did, shared between the body and the request's middleware.
#[derive(Debug, Default)]
pub struct BodyState {
    stalled: AtomicBool,
    done: AtomicBool,
}

impl BodyState {
    /// The body sent nothing for the stall timeout.
    pub fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Acquire)
    }
    /// The body was read to its end.
    pub fn done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}

/// A request extension pointing at its body's [`BodyState`].
#[derive(Debug, Clone)]
pub struct BodyWatch(pub Arc<BodyState>);

/// The error of a body that stalled.
#[derive(Debug)]
pub struct Stalled(pub Duration);

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body sent nothing for {} s",
            self.0.as_secs()
        )
    }
}

impl StdError for Stalled {}

/// A request body that fails with [`Stalled`] when it sends nothing for `stall` while read.
pub struct StallBody<B> {
    inner: B,
    stall: Duration,
    sleep: Pin<Box<Sleep>>,
    /// A read is waiting for data (the timer runs).
    waiting: bool,
    state: Arc<BodyState>,
}

impl<B: HttpBody> StallBody<B> {
    /// Wraps `inner`; returns the body and its state.
    pub fn new(inner: B, stall: Duration) -> (Self, Arc<BodyState>) {
        let state = Arc::new(BodyState::default());
        if inner.is_end_stream() {
            state.done.store(true, Ordering::Release);
        }
        let body = Self {
            inner,
            stall,
            sleep: Box::pin(tokio::time::sleep(stall)),
            waiting: false,
            state: state.clone(),
        };
        (body, state)
    }
}

impl<B> HttpBody for StallBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.state.stalled() {
            return Poll::Ready(Some(Err(Stalled(this.stall).into())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.state.done.store(true, Ordering::Release);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting = false;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Pending => {
                if !this.waiting {
                    // The timer starts when a read starts waiting, so a handler that reads
                    // late is not mistaken for a stalled client.
                    this.waiting = true;
                    let deadline = Instant::now() + this.stall;
                    this.sleep.as_mut().reset(deadline);
                }
                if this.sleep.as_mut().poll(cx).is_ready() {
                    this.state.stalled.store(true, Ordering::Release);
                    return Poll::Ready(Some(Err(Stalled(this.stall).into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops as described in the
/// module docs.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let linger_slots = LingerSlots::new(
        limits.max_connections,
        metrics.connections_lingering().clone(),
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.stall);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A permit first: past max_connections, connections wait in the listen queue.
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, go on.
                    eprintln!("warning: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while tasks.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let conn = http.serve_connection(
            TokioIo::new(Lingering::new(stream, linger_slots.clone())),
            hyper::service::service_fn(handler(router.clone(), peer, limits.stall)),
        );
        let mut stop = stop_rx.clone();
        let metrics = metrics.clone();
        metrics.connections_open().inc();
        tasks.spawn(async move {
            let _permit = permit;
            let mut conn = std::pin::pin!(conn);
            let mut stopping = false;
            let result = loop {
                tokio::select! {
                    r = conn.as_mut() => break r,
                    _ = stop.wait_for(|s| *s), if !stopping => {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            };
            if let Err(e) = result
                && e.is_timeout()
            {
                metrics.failure("header_timeout");
            }
            metrics.connections_open().dec();
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(limits.shutdown, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        eprintln!(
            "shutdown: {} connection(s) still busy after {} s (serve.shutdown_timeout_secs): closing them",
            tasks.len(),
            limits.shutdown.as_secs()
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    Ok(())
}

/// The per-connection request handler: the peer address for the router (as axum's
/// `ConnectInfo`) and a stall-watched body.
fn handler(
    router: Router,
    peer: SocketAddr,
    stall: Duration,
) -> impl Fn(hyper::Request<Incoming>) -> RouteFuture<Infallible> {
    move |req: hyper::Request<Incoming>| {
        let (parts, body) = req.into_parts();
        let (body, state) = StallBody::new(body, stall);
        let mut req = hyper::Request::from_parts(parts, body);
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(BodyWatch(state));
        router.clone().call(req)
    }
}
