//! A client connection's byte stream, plain TCP or TLS over TCP, split into the reader task's
//! half and the writer task's half. Everything above (sessions, the writer, the reader loop)
//! is the same for both.
//!
//! The plain halves are tokio's owned TCP halves, read as before: read readiness is polled
//! and the socket drained without waiting. The TLS halves share the TLS state through
//! `tokio::io::split` (a lock taken only inside one poll, never across an `.await`).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Bytes read from a socket at once before the reader handles what it has.
const READ_CHUNK: usize = 4096;
/// A read stops taking more once the buffer holds this much.
const READ_MAX: usize = 64 * 1024;

/// An accepted connection, before it is split.
pub enum ConnStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl ConnStream {
    fn tcp(&self) -> &TcpStream {
        match self {
            ConnStream::Plain(s) => s,
            ConnStream::Tls(s) => s.get_ref().0,
        }
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.tcp().set_nodelay(on)
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, ConnStream::Tls(_))
    }

    pub fn into_split(self) -> (ReadSide, WriteSide) {
        match self {
            ConnStream::Plain(s) => {
                let (r, w) = s.into_split();
                (ReadSide::Plain(r), WriteSide::Plain(w))
            }
            ConnStream::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ReadSide::Tls(r), WriteSide::Tls(w))
            }
        }
    }
}

/// The reader task's half.
pub enum ReadSide {
    Plain(OwnedReadHalf),
    Tls(ReadHalf<TlsStream<TcpStream>>),
}

impl ReadSide {
    /// Waits until bytes arrive, then appends what is there to `buf` without waiting more.
    /// Ready with `true` once the peer closed (after any last bytes appended). Cancel-safe:
    /// bytes taken from the socket are in `buf` when it returns `Ready`, and nothing is taken
    /// when it returns `Pending`.
    pub fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<bool>> {
        match self {
            ReadSide::Plain(rd) => loop {
                // Not `readable()`: polling readiness keeps the waker in the socket's
                // registration instead of a future (see `super::connection`).
                ready!(rd.as_ref().poll_read_ready(cx))?;
                let before = buf.len();
                let eof = fill_plain(rd, buf)?;
                if eof || buf.len() > before {
                    return Poll::Ready(Ok(eof));
                }
                // Nothing there after all: `try_read` cleared the readiness, wait again.
            },
            ReadSide::Tls(rd) => {
                let mut chunk = [0u8; READ_CHUNK];
                let mut got = false;
                loop {
                    let mut rb = ReadBuf::new(&mut chunk);
                    match Pin::new(&mut *rd).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                            return Poll::Ready(Ok(true))
                        }
                        Poll::Ready(Ok(())) => {
                            buf.extend_from_slice(rb.filled());
                            got = true;
                            if buf.len() >= READ_MAX {
                                return Poll::Ready(Ok(false));
                            }
                        }
                        // A client that closes its socket without TLS's close_notify: an end
                        // like any other (the frames it sent are whole or not, as for TCP).
                        Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                            return Poll::Ready(Ok(true))
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending if got => return Poll::Ready(Ok(false)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        }
    }
}

/// Reads what the socket has into `buf` without waiting. Returns whether the peer closed.
fn fill_plain(rd: &OwnedReadHalf, buf: &mut BytesMut) -> io::Result<bool> {
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        match rd.try_read(&mut chunk) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if n < chunk.len() || buf.len() >= READ_MAX {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The writer task's half.
pub enum WriteSide {
    Plain(OwnedWriteHalf),
    Tls(WriteHalf<TlsStream<TcpStream>>),
}

impl AsyncWrite for WriteSide {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteSide::Plain(w) => Pin::new(w).poll_write(cx, buf),
            WriteSide::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteSide::Plain(w) => Pin::new(w).poll_flush(cx),
            WriteSide::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    /// TLS: sends close_notify, then shuts the socket's sending side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteSide::Plain(w) => Pin::new(w).poll_shutdown(cx),
            WriteSide::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}
