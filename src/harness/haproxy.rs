//! `haproxy` as the load balancer of the chat nodes, on a configuration file the caller names
//! (the tests run the repository's own, `deploy/haproxy/haproxy.cfg`), pointed at a Consul
//! agent's DNS interface. The file takes its addresses from the environment (`CZ_LB_BIND`,
//! `CZ_LB_CONSUL_DNS`, `CZ_LB_STATS_SOCKET`), which the harness sets to a free loopback port,
//! the agent's DNS address and a socket in its own directory.

use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::ports::loopback;
use super::probe::Probe;
use super::process::try_find_binary;
use super::server::{start_with_fresh_ports, ServerDir, ServerProcess};
use super::PROBE_TIMEOUT;

/// `haproxy -db -f <config>` (foreground, no daemon) on a free loopback port.
pub struct Haproxy {
    // Declared before `_dir`: haproxy stops before its directory (and socket) is removed.
    process: ServerProcess,
    port: u16,
    socket: PathBuf,
    _dir: ServerDir,
}

/// One server slot of a backend, as the runtime API's `show servers state` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSlot {
    /// `node1`, `node2`, ... (the `server-template` prefix and a number).
    pub name: String,
    /// The address the slot has from DNS (`None`: an empty slot).
    pub addr: Option<SocketAddr>,
    /// `srv_op_state`: 0 stopped, 1 starting, 2 running, 3 stopping.
    pub op_state: u8,
    /// `srv_admin_state`: flags; any maintenance or drain flag keeps the slot out of rotation
    /// (`0x20`: no DNS answer for it).
    pub admin_state: u32,
}

/// The admin flags that take a server out of rotation: forced, inherited and configured
/// maintenance, forced and inherited drain, maintenance for a failed or missing resolution.
const OUT_OF_ROTATION: u32 = 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x20;

impl ServerSlot {
    /// Whether new connections can go to it: running, with an address, no maintenance or drain.
    pub fn in_rotation(&self) -> bool {
        self.addr.is_some() && self.op_state == 2 && self.admin_state & OUT_OF_ROTATION == 0
    }
}

impl Haproxy {
    /// Panics with the end of its log when it does not start.
    pub async fn start(config: &Path, consul_dns: SocketAddr) -> Haproxy {
        Self::try_start(config, consul_dns)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Runs `config` with its frontend on a free loopback port and its resolver at
    /// `consul_dns`; returns once the frontend accepts connections.
    pub async fn try_start(config: &Path, consul_dns: SocketAddr) -> anyhow::Result<Haproxy> {
        let program = try_find_binary("haproxy")?;
        start_with_fresh_ports(
            1,
            |ports| {
                let dir = ServerDir::new(None, "cz-haproxy-")?;
                let port = ports[0];
                let socket = dir.path().join("admin.sock");
                let args: Vec<OsString> = vec!["-db".into(), "-f".into(), config.into()];
                let mut process = ServerProcess::new(
                    format!("haproxy on 127.0.0.1:{port}"),
                    program.clone(),
                    args,
                    dir.path().join("haproxy.log"),
                    Probe::Listening { port },
                );
                process.env("CZ_LB_BIND", &format!("127.0.0.1:{port}"));
                process.env("CZ_LB_CONSUL_DNS", &consul_dns.to_string());
                process.env("CZ_LB_STATS_SOCKET", &socket.display().to_string());
                Ok(Haproxy {
                    process,
                    port,
                    socket,
                    _dir: dir,
                })
            },
            |s| vec![&mut s.process],
        )
        .await
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// A command of the runtime API (stats socket), its whole answer.
    pub async fn command(&self, command: &str) -> io::Result<String> {
        let exchange = async {
            let mut stream = UnixStream::connect(&self.socket).await?;
            stream.write_all(format!("{command}\n").as_bytes()).await?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await?;
            Ok(String::from_utf8_lossy(&raw).into_owned())
        };
        tokio::time::timeout(PROBE_TIMEOUT, exchange)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer from haproxy"))?
    }

    /// The server slots of `backend` (`show servers state <backend>`).
    pub async fn servers(&self, backend: &str) -> io::Result<Vec<ServerSlot>> {
        let text = self
            .command(&format!("show servers state {backend}"))
            .await?;
        Ok(parse_servers_state(&text))
    }

    /// The addresses of the servers of `backend` that new connections can go to, sorted.
    pub async fn in_rotation(&self, backend: &str) -> io::Result<Vec<SocketAddr>> {
        let mut addrs: Vec<SocketAddr> = self
            .servers(backend)
            .await?
            .into_iter()
            .filter(ServerSlot::in_rotation)
            .filter_map(|s| s.addr)
            .collect();
        addrs.sort();
        Ok(addrs)
    }

    pub fn process(&mut self) -> &mut ServerProcess {
        &mut self.process
    }
}

/// Parses `show servers state`: a version line, a `#` header naming the fields, one line per
/// server (`srv_addr` and `srv_port` as resolved, `-` and `0` for an empty slot).
fn parse_servers_state(text: &str) -> Vec<ServerSlot> {
    let mut header: Vec<&str> = Vec::new();
    let mut slots = Vec::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix('#') {
            header = h.split_whitespace().collect();
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if header.is_empty() || fields.len() < header.len() {
            continue;
        }
        let get = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .map(|i| fields[i])
                .unwrap_or("")
        };
        let port: u16 = get("srv_port").parse().unwrap_or(0);
        let addr = get("srv_addr")
            .parse::<std::net::IpAddr>()
            .ok()
            .filter(|ip| !ip.is_unspecified() && port != 0)
            .map(|ip| SocketAddr::new(ip, port));
        slots.push(ServerSlot {
            name: get("srv_name").to_string(),
            addr,
            op_state: get("srv_op_state").parse().unwrap_or(0),
            admin_state: get("srv_admin_state").parse().unwrap_or(0),
        });
    }
    slots
}

/// Stop, kill, restart, `is_running`, `pid` and `log_tail` are the process's own: see
/// [`ServerProcess`].
impl std::ops::Deref for Haproxy {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        &self.process
    }
}

impl std::ops::DerefMut for Haproxy {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.process
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_state_is_parsed() {
        let text = "1\n\
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\
3 chat_nodes 1 node1 127.0.0.1 2 64 1 1 3 1 0 0 0 0 0 0 7f000001.addr.dc1.consul 19001 _chat-zinx._tcp.service.consul 0 0 - - 0\n\
3 chat_nodes 2 node2 127.0.0.1 2 96 1 1 3 1 0 0 0 0 0 0 7f000001.addr.dc1.consul 19002 _chat-zinx._tcp.service.consul 0 0 - - 0\n\
3 chat_nodes 3 node3 - 0 32 1 1 3 1 0 0 0 0 0 0 - 0 _chat-zinx._tcp.service.consul 0 0 - - 0\n\n";
        let slots = parse_servers_state(text);
        assert_eq!(slots.len(), 3);
        assert_eq!(slots[0].name, "node1");
        assert_eq!(slots[0].addr, Some("127.0.0.1:19001".parse().unwrap()));
        assert!(slots[0].in_rotation());
        assert!(!slots[1].in_rotation(), "resolution maintenance");
        assert_eq!(slots[2].addr, None);
        assert!(!slots[2].in_rotation());
    }
}
