//! One-shot probes of the servers' own protocols, each given up after [`PROBE_TIMEOUT`]; the
//! readiness check of every server is built from them. Plain bytes over TCP rather than the
//! client libraries, so that a probe shows what the server itself answers.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ports::loopback;
use super::PROBE_TIMEOUT;

/// A plain HTTP/1.0 GET on loopback: (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP answer"))?;
        Ok((status, body.to_string()))
    };
    tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no HTTP answer in time"))?
}

/// Sends one inline Redis command (`PING`, `SET k v`, ...) and returns the first line of the
/// answer (`+PONG`, `+OK`, `$1`, `-ERR ...`).
pub async fn redis_command(addr: SocketAddr, command: &str) -> io::Result<String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .await?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            if stream.read(&mut byte).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "redis closed the connection",
                ));
            }
            line.push(byte[0]);
        }
        line.truncate(line.len() - 2);
        Ok(String::from_utf8_lossy(&line).into_owned())
    };
    tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no Redis answer in time"))?
}

/// The first line a NATS server sends (`INFO {...}`).
pub async fn nats_info(addr: SocketAddr) -> io::Result<String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        while !raw.contains(&b'\n') {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&raw);
        Ok(text.lines().next().unwrap_or_default().to_string())
    };
    tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no NATS INFO in time"))?
}

/// How a server shows it is ready.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Probe {
    /// INFO on the client port, then `/healthz` on the monitoring port (`js_only`:
    /// `?js-enabled-only=true`, else the full check, which needs a JetStream meta leader).
    Nats {
        client: u16,
        monitor: u16,
        js_only: bool,
    },
    /// `PING` answered with `+PONG` (or `-NOAUTH`: it wants a password).
    Redis { port: u16 },
    /// `/v1/status/leader` is a non-empty address.
    Consul { http: u16 },
    /// The port accepts TCP connections (haproxy's frontend: its configuration was read).
    Listening { port: u16 },
}

impl Probe {
    pub(crate) async fn ready(self) -> bool {
        match self {
            Probe::Nats {
                client,
                monitor,
                js_only,
            } => {
                let info = nats_info(loopback(client)).await;
                if !info.is_ok_and(|l| l.starts_with("INFO ")) {
                    return false;
                }
                let path = if js_only {
                    "/healthz?js-enabled-only=true"
                } else {
                    "/healthz"
                };
                matches!(http_get(loopback(monitor), path).await, Ok((200, _)))
            }
            // A server that wants a password answers too: it is up.
            Probe::Redis { port } => redis_command(loopback(port), "PING")
                .await
                .is_ok_and(|l| l == "+PONG" || l.starts_with("-NOAUTH")),
            Probe::Consul { http } => match http_get(loopback(http), "/v1/status/leader").await {
                Ok((200, body)) => !matches!(body.trim(), "" | "\"\""),
                _ => false,
            },
            Probe::Listening { port } => {
                tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(loopback(port)))
                    .await
                    .is_ok_and(|r| r.is_ok())
            }
        }
    }
}
