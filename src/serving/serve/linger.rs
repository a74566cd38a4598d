//! A lingering close for `flora serve`'s connections. When a connection ends while the client
//! is still sending (a body refused as too large, a request past its deadline), closing the
//! socket at once makes the kernel answer the unread data with a reset, and the client loses
//! the response it was sent: it sees "connection reset" instead of the 413. As nginx's
//! `lingering_close` does, the socket's write side is shut first (the response is complete),
//! then what the client still sends is read and dropped for a short while before the socket
//! closes.
//!
//! A lingering socket is an open file that no longer holds a connection permit, so lingering
//! has its own cap ([`LingerSlots`], as many as `serve.max_connections`): past it, a socket
//! closes at once (that client may see a reset). Clients that keep trickling bytes after
//! their 413 therefore cannot run the process out of file descriptors.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// How long the client may go without sending before the lingering socket closes.
const QUIET: Duration = Duration::from_secs(2);

/// The longest a socket lingers in all.
const MOST: Duration = Duration::from_secs(10);

/// The places for lingering sockets, shared by every connection, with the gauge that counts
/// them (`flora_connections_lingering`).
#[derive(Clone)]
pub struct LingerSlots {
    slots: Arc<Semaphore>,
    gauge: Gauge,
}

impl LingerSlots {
    /// At most `most` sockets linger at once.
    pub fn new(most: usize, gauge: Gauge) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(most)),
            gauge,
        }
    }
}

/// A TCP stream that lingers when dropped (see the module docs); reads and writes pass through.
pub struct Lingering {
    stream: Option<TcpStream>,
    slots: LingerSlots,
}

impl Lingering {
    pub fn new(stream: TcpStream, slots: LingerSlots) -> Self {
        Self {
            stream: Some(stream),
            slots,
        }
    }

    fn inner(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(
            self.stream
                .as_mut()
                .expect("the stream is only taken on drop"),
        )
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        // Nothing unread: a plain close loses nothing.
        if !unread_data(&stream) {
            return;
        }
        let Ok(slot) = self.slots.slots.clone().try_acquire_owned() else {
            return; // every lingering place is taken: close now
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let gauge = self.slots.gauge.clone();
            gauge.inc();
            runtime.spawn(async move {
                linger(stream, slot).await;
                gauge.dec();
            });
        }
    }
}

/// The client may still be sending: data waits unread, or the socket cannot tell (an error).
fn unread_data(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.try_read(&mut byte) {
        // The client closed its side: nothing more will come.
        Ok(0) => false,
        Ok(_) => true,
        // Nothing waiting now, but more may be on its way (a body cut short by a 413).
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
        Err(_) => false,
    }
}

/// Shuts the write side, then drains what the client sends until it closes, goes quiet for
/// [`QUIET`], or [`MOST`] has passed; the lingering place `_slot` is held until then.
async fn linger(mut stream: TcpStream, _slot: OwnedSemaphorePermit) {
    let _ = std::future::poll_fn(|cx| Pin::new(&mut stream).poll_shutdown(cx)).await;
    let end = Instant::now() + MOST;
    let mut sink = vec![0u8; 16 * 1024];
    loop {
        let wait = (Instant::now() + QUIET).min(end);
        let read = async {
            loop {
                stream.readable().await?;
                match stream.try_read(&mut sink) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => return r,
                }
            }
        };
        match tokio::time::timeout_at(wait, read).await {
            Ok(Ok(n)) if n > 0 => continue,
            _ => return,
        }
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().inner().poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().inner().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().inner().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().inner().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().inner().poll_shutdown(cx)
    }
}
