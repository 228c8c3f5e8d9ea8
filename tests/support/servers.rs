//! Real backend servers for integration tests: `nats-server` (one node, or a 3-node cluster,
//! with JetStream on file storage), `redis-server` and `consul agent -dev`. Never mocks.
//!
//! * Every server listens on loopback only, on free ports (a port is found by binding port 0;
//!   if the server then fails to start, e.g. because another process took the port in
//!   between, it is started again on new ports).
//! * `start()` returns once the server answers: NATS its client port and
//!   `/healthz?js-enabled-only=true` (a cluster: the full `/healthz`, i.e. a JetStream meta
//!   leader), Redis `PING`, Consul a non-empty `/v1/status/leader`.
//! * Each server runs in its own process group with its output in a log file of its own
//!   temporary directory; a failure to start panics with the end of that log.
//! * A server is always stopped: dropping it sends SIGTERM to its process group, then SIGKILL
//!   after [`STOP_GRACE`], and removes its temporary directory. `stop()` does the same
//!   mid-test, `kill()` is an abrupt SIGKILL (a crash), and `restart().await` starts it again on
//!   the same ports ("the backend died mid-request", "the backend came back").
//!
//! The binaries are found on `PATH` or in the sbin directories (Debian installs
//! `nats-server` in `/usr/sbin`); `scripts/install-test-deps` installs them.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a server may take to answer after it was started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server gets to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Fresh port sets tried when a server cannot start on the ports it was given.
const START_ATTEMPTS: usize = 5;
/// A single probe (connect, request, answer) gives up after this long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// The path of the program `name`: the one a `CHAT_ZINX_TEST_<NAME>` variable names (e.g.
/// `CHAT_ZINX_TEST_NATS_SERVER`, to run the suite on another server version), else on `PATH`,
/// else in an sbin directory. Panics with what to do when it is not installed.
pub fn find_binary(name: &str) -> PathBuf {
    let var = format!(
        "CHAT_ZINX_TEST_{}",
        name.to_ascii_uppercase().replace('-', "_")
    );
    if let Some(chosen) = std::env::var_os(&var) {
        let chosen = PathBuf::from(chosen);
        assert!(
            chosen.is_file(),
            "{var} names {}, which is not a file: run scripts/install-test-deps or unset {var}",
            chosen.display()
        );
        return chosen;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed (not on PATH nor in /usr/sbin): run scripts/install-test-deps, \
                 which installs nats-server, redis-server and consul"
            )
        })
}

/// `n` distinct loopback ports that were free a moment ago.
pub fn free_ports(n: usize) -> Vec<u16> {
    // Hold every listener until all are bound so that the ports are distinct.
    let listeners: Vec<StdTcpListener> = (0..n)
        .map(|_| StdTcpListener::bind((LOOPBACK, 0)).expect("bind a free loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((LOOPBACK, port))
}

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
enum Probe {
    /// INFO on the client port, then `/healthz` on the monitoring port (`js_only`:
    /// `?js-enabled-only=true`, else the full check, which needs a JetStream meta leader).
    Nats {
        client: u16,
        monitor: u16,
        js_only: bool,
    },
    /// `PING` answered with `+PONG`.
    Redis { port: u16 },
    /// `/v1/status/leader` is a non-empty address.
    Consul { http: u16 },
}

impl Probe {
    async fn ready(self) -> bool {
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

/// Why a server did not become ready.
#[derive(Debug)]
enum NotReady {
    /// The process exited (typically: a port was taken meanwhile).
    Exited(String),
    /// It runs but did not answer within [`READY_TIMEOUT`].
    Timeout,
}

/// One server process: its command line, log file, readiness probe and (while running) child.
pub struct ServerProcess {
    what: String,
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    probe: Probe,
    child: Option<Child>,
}

impl ServerProcess {
    fn new(
        what: String,
        program: PathBuf,
        args: Vec<OsString>,
        log: PathBuf,
        probe: Probe,
    ) -> Self {
        ServerProcess {
            what,
            program,
            args,
            envs: Vec::new(),
            log,
            probe,
            child: None,
        }
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.what);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log.display()));
        let err = log.try_clone().expect("clone log file handle");
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // Its own process group: signals reach it and anything it forks, and never us.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    /// Polls the probe until it passes, the process exits or [`READY_TIMEOUT`] passes.
    async fn wait_ready(&mut self) -> Result<(), NotReady> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.exit_status() {
                return Err(NotReady::Exited(format!("exited with {status}")));
            }
            if self.probe.ready().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(NotReady::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `Some(status)` once the process has exited (it is then reaped and forgotten).
    fn exit_status(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status.to_string())
            }
            Ok(None) => None,
            Err(e) => {
                self.child = None;
                Some(format!("an unknown status ({e})"))
            }
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none() && self.child.is_some()
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal_group(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // The child is not reaped yet, so its pid (= its process group id) is still ours.
            let pgid = child.id() as libc::pid_t;
            // SAFETY: kill(2) with a negative pid signals that process group; no memory is
            // involved.
            unsafe {
                libc::kill(-pgid, signal);
            }
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within [`STOP_GRACE`]; waits for it.
    pub fn stop(&mut self) {
        if !self.is_running() {
            return;
        }
        self.signal_group(libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }

    /// SIGKILL at once (a crash); waits for it.
    pub fn kill(&mut self) {
        if !self.is_running() {
            return;
        }
        self.signal_group(libc::SIGKILL);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Starts the process again with the same command line (same ports and data directory)
    /// and waits until it answers; stops it first if it runs. Retries for a while when it
    /// exits at once (e.g. the port is still held by a process that is going away).
    pub async fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.spawn();
            match self.wait_ready().await {
                Ok(()) => return,
                Err(NotReady::Exited(why)) if Instant::now() < deadline => {
                    eprintln!("{} {why} on restart; trying again", self.what);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => self.fail(e),
            }
        }
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn fail(&mut self, why: NotReady) -> ! {
        self.stop();
        let why = match why {
            NotReady::Exited(s) => s,
            NotReady::Timeout => format!("did not answer within {READY_TIMEOUT:?}"),
        };
        panic!(
            "{} {why}; its log ({}) ends with:\n{}",
            self.what,
            self.log.display(),
            self.log_tail()
        );
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts servers built by `make(ports)` on fresh ports until one set works.
async fn start_with_fresh_ports<T>(
    n_ports: usize,
    mut make: impl FnMut(&[u16]) -> T,
    procs: impl Fn(&mut T) -> Vec<&mut ServerProcess>,
) -> T {
    for attempt in 1..=START_ATTEMPTS {
        let ports = free_ports(n_ports);
        let mut servers = make(&ports);
        for p in procs(&mut servers) {
            p.spawn();
        }
        let mut failure = None;
        for (i, p) in procs(&mut servers).into_iter().enumerate() {
            if let Err(e) = p.wait_ready().await {
                failure = Some((i, e));
                break;
            }
        }
        match failure {
            None => return servers,
            Some((_, NotReady::Exited(why))) if attempt < START_ATTEMPTS => {
                let tails: Vec<String> = procs(&mut servers)
                    .into_iter()
                    .map(|p| format!("{}: {}", p.what, p.log_tail()))
                    .collect();
                eprintln!(
                    "a server {why} (attempt {attempt}, ports {ports:?}); trying new ports\n{}",
                    tails.join("\n")
                );
                // Dropping `servers` stops the others and removes their directories.
            }
            Some((i, e)) => procs(&mut servers).swap_remove(i).fail(e),
        }
    }
    unreachable!("the last attempt returns or panics")
}

fn tempdir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create a temporary directory")
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

/// A `redis-server` on a free loopback port, without persistence: a restart starts empty.
pub struct RedisServer {
    process: ServerProcess,
    port: u16,
    _dir: TempDir,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let program = find_binary("redis-server");
        start_with_fresh_ports(
            1,
            |ports| {
                let port = ports[0];
                let dir = tempdir("cz-redis-");
                let args: Vec<OsString> = [
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--protected-mode",
                    "yes",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--dir",
                    &dir.path().to_string_lossy(),
                ]
                .iter()
                .map(OsString::from)
                .collect();
                let process = ServerProcess::new(
                    format!("redis-server on 127.0.0.1:{port}"),
                    program.clone(),
                    args,
                    dir.path().join("redis.log"),
                    Probe::Redis { port },
                );
                RedisServer {
                    process,
                    port,
                    _dir: dir,
                }
            },
            |s| vec![&mut s.process],
        )
        .await
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// `redis://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Graceful stop (SIGTERM, then SIGKILL after [`STOP_GRACE`]).
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// SIGKILL: the server dies like in a crash.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same port, empty (no persistence), and waits for `PING`.
    pub async fn restart(&mut self) {
        self.process.restart().await;
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    pub fn process(&mut self) -> &mut ServerProcess {
        &mut self.process
    }
}

// ---------------------------------------------------------------------------------------------
// NATS
// ---------------------------------------------------------------------------------------------

/// A `nats-server` with JetStream on file storage in its temporary directory, on free loopback
/// ports (client and HTTP monitoring; a cluster member also has a route port). A restart keeps
/// the JetStream data.
pub struct NatsServer {
    process: ServerProcess,
    client_port: u16,
    monitor_port: u16,
    store_dir: PathBuf,
    dir: TempDir,
}

impl NatsServer {
    /// A single node.
    pub async fn start() -> NatsServer {
        let program = find_binary("nats-server");
        start_with_fresh_ports(
            2,
            |ports| NatsServer::configure(&program, "cz-n1", ports[0], ports[1], None),
            |s| vec![&mut s.process],
        )
        .await
    }

    /// `cluster`: (this node's route port, every member's route port).
    fn configure(
        program: &Path,
        name: &str,
        client_port: u16,
        monitor_port: u16,
        cluster: Option<(u16, &[u16])>,
    ) -> NatsServer {
        let dir = tempdir("cz-nats-");
        let store_dir = dir.path().join("jetstream");
        let mut conf = format!(
            "server_name: \"{name}\"\n\
             listen: \"127.0.0.1:{client_port}\"\n\
             http: \"127.0.0.1:{monitor_port}\"\n\
             jetstream {{\n  store_dir: \"{}\"\n}}\n",
            store_dir.display()
        );
        if let Some((route_port, all)) = cluster {
            let routes: Vec<String> = all
                .iter()
                .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect();
            conf.push_str(&format!(
                "cluster {{\n  name: \"cz-test\"\n  listen: \"127.0.0.1:{route_port}\"\n  routes: [{}]\n}}\n",
                routes.join(", ")
            ));
        }
        let conf_path = dir.path().join("nats.conf");
        std::fs::write(&conf_path, conf).expect("write nats.conf");
        let process = ServerProcess::new(
            format!("nats-server {name} on 127.0.0.1:{client_port}"),
            program.to_path_buf(),
            vec!["-c".into(), conf_path.into()],
            dir.path().join("nats.log"),
            Probe::Nats {
                client: client_port,
                monitor: monitor_port,
                js_only: cluster.is_none(),
            },
        );
        NatsServer {
            process,
            client_port,
            monitor_port,
            store_dir,
            dir,
        }
    }

    /// `nats://127.0.0.1:<client port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    pub fn addr(&self) -> SocketAddr {
        loopback(self.client_port)
    }

    /// The HTTP monitoring address (`/healthz`, `/jsz`, `/varz`, `/routez`).
    pub fn monitor_addr(&self) -> SocketAddr {
        loopback(self.monitor_port)
    }

    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The server's temporary directory (config, log, JetStream store).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn stop(&mut self) {
        self.process.stop();
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same ports with the same JetStream store, and waits until ready.
    pub async fn restart(&mut self) {
        self.process.restart().await;
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    pub fn process(&mut self) -> &mut ServerProcess {
        &mut self.process
    }
}

/// Three `nats-server`s routed into one JetStream cluster (`cz-test`), ready once every node
/// passes the full `/healthz` (a meta leader is elected and known).
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    pub const SIZE: usize = 3;

    pub async fn start() -> NatsCluster {
        let program = find_binary("nats-server");
        let n = Self::SIZE;
        start_with_fresh_ports(
            3 * n,
            |ports| {
                let routes = &ports[2 * n..];
                let nodes = (0..n)
                    .map(|i| {
                        NatsServer::configure(
                            &program,
                            &format!("cz-n{}", i + 1),
                            ports[2 * i],
                            ports[2 * i + 1],
                            Some((routes[i], routes)),
                        )
                    })
                    .collect();
                NatsCluster { nodes }
            },
            |c| c.nodes.iter_mut().map(|n| &mut n.process).collect(),
        )
        .await
    }

    /// Every node's client URL, comma separated (the form `nats.url` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// One node, e.g. to stop and restart it.
    pub fn node(&mut self, i: usize) -> &mut NatsServer {
        &mut self.nodes[i]
    }
}

// ---------------------------------------------------------------------------------------------
// Consul
// ---------------------------------------------------------------------------------------------

/// `consul agent -dev` (a single server that elects itself; state in memory, lost on restart)
/// on free loopback ports: HTTP, serf LAN and WAN, server RPC and gRPC; DNS and HTTPS off.
pub struct ConsulAgent {
    process: ServerProcess,
    http_port: u16,
    _dir: TempDir,
}

impl ConsulAgent {
    pub async fn start() -> ConsulAgent {
        let program = find_binary("consul");
        start_with_fresh_ports(
            5,
            |ports| {
                let dir = tempdir("cz-consul-");
                let [http, serf_lan, serf_wan, server, grpc] =
                    [ports[0], ports[1], ports[2], ports[3], ports[4]];
                let node = format!("cz-test-{http}");
                let args: Vec<OsString> = [
                    "agent".to_string(),
                    "-dev".into(),
                    "-bind=127.0.0.1".into(),
                    "-client=127.0.0.1".into(),
                    format!("-node={node}"),
                    format!("-http-port={http}"),
                    "-dns-port=-1".into(),
                    format!("-serf-lan-port={serf_lan}"),
                    format!("-serf-wan-port={serf_wan}"),
                    format!("-server-port={server}"),
                    format!("-grpc-port={grpc}"),
                    "-log-level=warn".into(),
                    "-hcl=disable_update_check = true".into(),
                ]
                .into_iter()
                .map(OsString::from)
                .collect();
                let mut process = ServerProcess::new(
                    format!("consul agent -dev on 127.0.0.1:{http}"),
                    program.clone(),
                    args,
                    dir.path().join("consul.log"),
                    Probe::Consul { http },
                );
                process.envs.push(("CHECKPOINT_DISABLE".into(), "1".into()));
                ConsulAgent {
                    process,
                    http_port: http,
                    _dir: dir,
                }
            },
            |s| vec![&mut s.process],
        )
        .await
    }

    /// `127.0.0.1:<http port>` (the form `consul.addr` takes).
    pub fn http_addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    /// `http://127.0.0.1:<http port>`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn addr(&self) -> SocketAddr {
        loopback(self.http_port)
    }

    pub fn stop(&mut self) {
        self.process.stop();
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same ports (empty: dev mode keeps nothing) and waits for a leader.
    pub async fn restart(&mut self) {
        self.process.restart().await;
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    pub fn process(&mut self) -> &mut ServerProcess {
        &mut self.process
    }
}
