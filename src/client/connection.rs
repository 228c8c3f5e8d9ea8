//! One framed connection to a chat-zinx server, over TCP or TLS over TCP.
//!
//! An address is `host:port` (plain) or `tls://host:port` (TLS, verified against the CA the
//! user gave, else the public web roots; there is no way to skip the verification).
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
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
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

/// The prefix of a TLS listener's address.
pub const TLS_SCHEME: &str = "tls://";

/// `(true, "host:port")` for `tls://host:port`, `(false, addr)` otherwise.
pub fn split_scheme(addr: &str) -> (bool, &str) {
    match addr.get(..TLS_SCHEME.len()) {
        Some(p) if p.eq_ignore_ascii_case(TLS_SCHEME) => (true, &addr[TLS_SCHEME.len()..]),
        _ => (false, addr),
    }
}

/// Why the client's TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("cannot read the CA file {} (--ca): {source}", path.display())]
    ReadCa {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the CA file {} (--ca) holds no usable PEM certificate{}: give the certificate of the CA that signed the server's certificate", path.display(), reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    BadCa {
        path: PathBuf,
        reason: Option<String>,
    },
    #[error("--server-name {0:?} is not a DNS name or an IP address")]
    BadServerName(String),
    #[error("TLS set-up failed: {0}")]
    Setup(String),
}

/// How the client checks the servers it reaches over TLS.
pub struct TlsClient {
    connector: TlsConnector,
    /// The name the server's certificate must have (`--server-name`); else the host of the
    /// address.
    server_name: Option<ServerName<'static>>,
}

impl TlsClient {
    /// Trusts the CA certificates of `ca` (PEM), or, without it, the public web roots;
    /// checks the certificate against `server_name`, or the host of the address.
    pub fn new(ca: Option<&Path>, server_name: Option<&str>) -> Result<TlsClient, ClientTlsError> {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| ClientTlsError::ReadCa {
                    path: path.to_path_buf(),
                    source,
                })?;
                let bad = |reason: Option<String>| ClientTlsError::BadCa {
                    path: path.to_path_buf(),
                    reason,
                };
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| bad(Some(e.to_string())))?;
                    roots.add(cert).map_err(|e| bad(Some(e.to_string())))?;
                }
                if roots.is_empty() {
                    return Err(bad(None));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let server_name = server_name
            .map(|n| {
                ServerName::try_from(n.to_string())
                    .map_err(|_| ClientTlsError::BadServerName(n.to_string()))
            })
            .transpose()?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientTlsError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// The name to check the certificate of `host:port` against.
    fn name_for(&self, host_port: &str) -> io::Result<ServerName<'static>> {
        if let Some(n) = &self.server_name {
            return Ok(n.clone());
        }
        let host = host_port
            .rsplit_once(':')
            .map_or(host_port, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        ServerName::try_from(host.to_string()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{host:?} is not a host name to check a certificate against; give --server-name"),
            )
        })
    }
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

pub struct Connection {
    addr: String,
    writer: Box<dyn AsyncWrite + Send + Unpin>,
    inbound: mpsc::Receiver<Inbound>,
    reader: JoinHandle<()>,
}

impl Connection {
    /// Connect (plain TCP) within `timeout` and start the reader task.
    pub async fn connect(addr: &str, timeout: Duration) -> io::Result<Connection> {
        Self::open(addr, timeout, None).await
    }

    /// Connect to `addr` within `timeout` (TLS for `tls://host:port`, which needs `tls`), and
    /// start the reader task. A certificate the client does not trust fails the handshake.
    pub async fn open(
        addr: &str,
        timeout: Duration,
        tls: Option<&TlsClient>,
    ) -> io::Result<Connection> {
        let (is_tls, host_port) = split_scheme(addr);
        let stream = tokio::time::timeout(timeout, TcpStream::connect(host_port))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        // Chat frames are small and latency matters more than packet count.
        stream.set_nodelay(true)?;
        let (tx, inbound) = mpsc::channel(INBOUND_CAPACITY);
        let (reader, writer): (JoinHandle<()>, Box<dyn AsyncWrite + Send + Unpin>) = if is_tls {
            let tls = tls.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{addr} is a TLS address, but this connection has no TLS settings"),
                )
            })?;
            let name = tls.name_for(host_port)?;
            let shown = format!("{name:?}");
            let stream = tokio::time::timeout(timeout, tls.connector.connect(name, stream))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "TLS handshake with {host_port} failed: {e} (the certificate must be signed by the CA given with --ca, or a public one without it, and name {shown}, or the name given with --server-name)"
                        ),
                    )
                })?;
            let (read, write) = tokio::io::split(stream);
            (tokio::spawn(read_frames(read, tx)), Box::new(write))
        } else {
            let (read, write) = stream.into_split();
            (tokio::spawn(read_frames(read, tx)), Box::new(write))
        };
        Ok(Connection {
            addr: addr.to_string(),
            writer,
            inbound,
            reader,
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Write one frame.
    pub async fn send(&mut self, id: u32, body: &[u8]) -> io::Result<()> {
        self.writer.write_all(&encode(id, body)).await?;
        // TLS may hold the frame's last record until flushed (a no-op on TCP).
        self.writer.flush().await
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

async fn read_frames<R: AsyncRead + Unpin>(mut read: R, tx: mpsc::Sender<Inbound>) {
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
