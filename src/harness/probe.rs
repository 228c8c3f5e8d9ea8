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
    /// INFO on the client port, then `/healthz` on the monitoring port. A single server
    /// (`cluster_size: None`) needs only JetStream enabled (`?js-enabled-only=true`); a
    /// cluster member needs the full check (a JetStream meta leader) and, in `/jsz`, a meta
    /// group of `cluster_size` servers whose leader sees every follower current. Without
    /// that last part a leader that had just been elected answered an R3 stream creation
    /// with "no suitable peers for placement".
    Nats {
        client: u16,
        monitor: u16,
        cluster_size: Option<usize>,
    },
    /// `PING` answered with `+PONG`.
    Redis { port: u16 },
    /// `/v1/status/leader` is a non-empty address.
    Consul { http: u16 },
}

impl Probe {
    pub(crate) async fn ready(self) -> bool {
        match self {
            Probe::Nats {
                client,
                monitor,
                cluster_size,
            } => {
                let info = nats_info(loopback(client)).await;
                if !info.is_ok_and(|l| l.starts_with("INFO ")) {
                    return false;
                }
                let Some(size) = cluster_size else {
                    let path = "/healthz?js-enabled-only=true";
                    return matches!(http_get(loopback(monitor), path).await, Ok((200, _)));
                };
                if !matches!(http_get(loopback(monitor), "/healthz").await, Ok((200, _))) {
                    return false;
                }
                match http_get(loopback(monitor), "/jsz").await {
                    Ok((200, body)) => meta_group_complete(&body, size),
                    _ => false,
                }
            }
            Probe::Redis { port } => redis_command(loopback(port), "PING")
                .await
                .is_ok_and(|l| l == "+PONG"),
            Probe::Consul { http } => match http_get(loopback(http), "/v1/status/leader").await {
                Ok((200, body)) => !matches!(body.trim(), "" | "\"\""),
                _ => false,
            },
        }
    }
}

/// Whether a `/jsz` answer shows a JetStream meta group with a leader and, when the answering
/// server is that leader (only the leader lists `replicas`), `size - 1` followers, every one
/// current. (nats-server 2.10 names neither itself nor, on a follower, the group's size in
/// `/jsz`, so a follower only needs to know the leader.)
fn meta_group_complete(jsz: &str, size: usize) -> bool {
    let Ok(jsz) = serde_json::from_str::<serde_json::Value>(jsz) else {
        return false;
    };
    let meta = &jsz["meta_cluster"];
    if meta["leader"].as_str().unwrap_or_default().is_empty() {
        return false;
    }
    match meta["replicas"].as_array() {
        None => true,
        Some(followers) => {
            followers.len() + 1 == size && followers.iter().all(|f| f["current"] == true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::meta_group_complete;

    #[test]
    fn a_meta_group_is_complete_when_its_leader_sees_every_follower_current() {
        let leader = |current: [bool; 2]| {
            serde_json::json!({
                "meta_cluster": {
                    "leader": "a",
                    "cluster_size": 3,
                    "replicas": [
                        {"name": "b", "current": current[0]},
                        {"name": "c", "current": current[1]},
                    ],
                },
            })
            .to_string()
        };
        assert!(meta_group_complete(&leader([true, true]), 3));
        assert!(!meta_group_complete(&leader([true, false]), 3));
        assert!(!meta_group_complete(&leader([true, true]), 4));
        // A follower (no `replicas`) needs only to know the leader; 2.10 gives no size there.
        let follower = |leader: &str| {
            serde_json::json!({"meta_cluster": {"leader": leader, "peer": "x"}}).to_string()
        };
        assert!(meta_group_complete(&follower("a"), 3));
        assert!(!meta_group_complete(&follower(""), 3));
        assert!(!meta_group_complete("not json", 3));
    }
}
