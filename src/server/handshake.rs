//! A connection must start talking within a deadline. HTTP/2 keepalive only begins once the connection is
//! established, so a client that connects and then stays silent (or trickles bytes, slowloris style) would
//! otherwise hold a socket forever. Every accepted connection is wrapped: if the first 24 bytes (the length
//! of the HTTP/2 preface) have not arrived within the handshake timeout, reads fail and the server drops it.
//!
//! The same wrapper ends a connection `max_connection_age + max_connection_age_grace` after it was accepted
//! (tonic sends the GOAWAY at `max_connection_age`; its own grace would replace that GOAWAY with a plain close
//! at age + grace, so the grace is enforced here instead).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Sleep, sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bytes a client must send before the deadline stops applying: the HTTP/2 connection preface.
const PREFACE_BYTES: usize = 24;

/// An accepted connection with a deadline for its first bytes.
#[derive(Debug)]
pub(crate) struct HandshakeDeadline {
    inner: TcpStream,
    received: usize,
    deadline: Option<Pin<Box<Sleep>>>,
    /// When the connection is closed whatever still runs on it (age + grace).
    end: Option<Pin<Box<Sleep>>>,
}

impl HandshakeDeadline {
    /// Wraps `inner`, which must send its first 24 bytes within `timeout`, and is closed after `lifetime`.
    pub(crate) fn new(inner: TcpStream, timeout: Duration, lifetime: Option<Duration>) -> Self {
        HandshakeDeadline {
            inner,
            received: 0,
            deadline: Some(Box::pin(sleep(timeout))),
            end: lifetime.map(|l| Box::pin(sleep(l))),
        }
    }
}

impl AsyncRead for HandshakeDeadline {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(end) = this.end.as_mut()
            && end.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "max_connection_age + max_connection_age_grace passed",
            )));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.deadline.is_none() {
            return result;
        }
        if let Poll::Ready(Ok(())) = result {
            this.received += buf.filled().len() - before;
            if this.received >= PREFACE_BYTES {
                this.deadline = None;
            }
        }
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 preface within the handshake timeout",
            )));
        }
        result
    }
}

impl AsyncWrite for HandshakeDeadline {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
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

impl Connected for HandshakeDeadline {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
