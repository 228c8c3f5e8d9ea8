//! One framed TCP connection to a chat-zinx server.
//!
//! The read half is owned by a reader task that decodes frames with [`FrameCodec::client`] (no
//! inbound size limit worth the name: servers send history pages above their own limit) and
//! hands them to the session over a bounded channel. The task drives the codec's `Decoder`
//! itself, exactly as `FramedRead` would, because the crate has no `futures` dependency for
//! `StreamExt`. Bounded on purpose: if the session falls
//! behind, the reader stops reading and TCP pushes back on the server, instead of the client
//! buffering without limit. The write half stays with the session, which writes each frame as
//! one buffer built by the protocol's [`encode`] (a single write per frame, as the original
//! client), one frame at a time, so frames never interleave.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::Decoder;

use crate::protocol::codec::encode;
use crate::protocol::{Frame, FrameCodec};

/// Frames buffered between the reader task and the session.
const INBOUND_CAPACITY: usize = 256;

/// What the reader task reports.
#[derive(Debug)]
pub enum Inbound {
    Frame(Frame),
    /// The connection ended; the text says why (EOF, an I/O or framing error).
    Closed(String),
}

pub struct Connection {
    addr: String,
    writer: OwnedWriteHalf,
    inbound: mpsc::Receiver<Inbound>,
    reader: JoinHandle<()>,
}

impl Connection {
    /// Connect within `timeout` and start the reader task.
    pub async fn connect(addr: &str, timeout: Duration) -> io::Result<Connection> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        // Chat frames are small and latency matters more than packet count.
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let (tx, inbound) = mpsc::channel(INBOUND_CAPACITY);
        let reader = tokio::spawn(read_frames(read, tx));
        Ok(Connection {
            addr: addr.to_string(),
            writer: write,
            inbound,
            reader,
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Write one frame.
    pub async fn send(&mut self, id: u32, body: &[u8]) -> io::Result<()> {
        self.writer.write_all(&encode(id, body)).await
    }

    /// The next frame, or why the connection ended. Cancel-safe (a bounded channel receive), so
    /// it can sit in a `select!` beside input and timers.
    pub async fn recv(&mut self) -> Inbound {
        self.inbound
            .recv()
            .await
            .unwrap_or_else(|| Inbound::Closed("reader stopped".into()))
    }
}

impl Drop for Connection {
    /// Dropping the connection closes both halves: the write half with the struct, the read
    /// half with the reader task.
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Initial read buffer; it grows (by the codec's reservation) only for larger frames.
const READ_BUFFER: usize = 8 * 1024;

async fn read_frames(mut read: OwnedReadHalf, tx: mpsc::Sender<Inbound>) {
    let mut codec = FrameCodec::client();
    let mut buf = BytesMut::with_capacity(READ_BUFFER);
    let reason = 'read: loop {
        // Hand over every complete frame before reading more.
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if tx.send(Inbound::Frame(frame)).await.is_err() {
                        return; // the session dropped the connection
                    }
                }
                Ok(None) => break,
                Err(e) => break 'read e.to_string(),
            }
        }
        match read.read_buf(&mut buf).await {
            Ok(0) => match codec.decode_eof(&mut buf) {
                Ok(_) => break "closed by the server".to_string(),
                Err(e) => break e.to_string(),
            },
            Ok(_) => {}
            Err(e) => break e.to_string(),
        }
    };
    let _ = tx.send(Inbound::Closed(reason)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Frames split across writes and bodies above the server's inbound limit arrive whole; the
    /// end of the connection is reported after the last frame.
    #[tokio::test]
    async fn frames_arrive_whole_then_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut hello = [0u8; 12];
            sock.read_exact(&mut hello).await.unwrap();
            assert_eq!(&hello, b"\x04\x00\x00\x00\x01\x00\x00\x00ping");
            let pong = encode(2, b"pong");
            sock.write_all(&pong[..5]).await.unwrap();
            sock.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            sock.write_all(&pong[5..]).await.unwrap();
            sock.write_all(&encode(212, &vec![b'x'; 20_000]))
                .await
                .unwrap();
        });
        let mut conn = Connection::connect(&addr, Duration::from_secs(5))
            .await
            .unwrap();
        conn.send(1, b"ping").await.unwrap();
        match conn.recv().await {
            Inbound::Frame(f) => assert_eq!((f.id, &f.body[..]), (2, &b"pong"[..])),
            other => panic!("expected the pong, got {other:?}"),
        }
        match conn.recv().await {
            Inbound::Frame(f) => assert_eq!((f.id, f.body.len()), (212, 20_000)),
            other => panic!("expected the big frame, got {other:?}"),
        }
        server.await.unwrap();
        assert!(matches!(conn.recv().await, Inbound::Closed(_)));
    }
}
