//! How both gRPC servers accept connections: HTTP/2 windows sized for gradient streams,
//! keep-alive pings, and a limit on silence, so sockets that connect and then say nothing (a
//! port scan, a stuck client, a flood) are closed instead of holding file descriptors until a
//! real worker can no longer connect.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::Server;

/// A connection that has sent nothing this long after it was accepted is closed: every real
/// client starts with the HTTP/2 preface at once.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval of the server's HTTP/2 pings on a connection that went quiet.
pub const KEEPALIVE: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection is closed: long, because a peer
/// that is only paused (SIGSTOP, a suspended VM) must find its connections intact.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// A server builder with the settings both sides share.
pub fn server_builder() -> Server {
    Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(crate::HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(crate::HTTP2_CONNECTION_WINDOW)
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
}

/// The listener's connections, each closed if it says nothing within `IDLE_TIMEOUT`; after
/// that, HTTP/2 keep-alive decides.
pub fn incoming(listener: TcpListener) -> impl Stream<Item = io::Result<IdleLimited>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|r| {
        r.map(|s| {
            // Set here: with an incoming stream of its own, tonic applies neither.
            let _ = s.set_nodelay(true);
            let _ = socket2::SockRef::from(&s).set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(Duration::from_secs(30)));
            IdleLimited::new(s, IDLE_TIMEOUT)
        })
    })
}

/// A TCP stream whose reads fail with `TimedOut` when no byte arrives within `limit` of its
/// start.
pub struct IdleLimited {
    inner: TcpStream,
    /// Until the first byte; None after it.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl IdleLimited {
    pub fn new(inner: TcpStream, limit: Duration) -> IdleLimited {
        IdleLimited { inner, deadline: Some(Box::pin(tokio::time::sleep_until(Instant::now() + limit))) }
    }
}

impl AsyncRead for IdleLimited {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.deadline = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "connection said nothing"))),
                _ => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for IdleLimited {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for IdleLimited {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
