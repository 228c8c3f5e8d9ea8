//! Child processes of the bench: `nats-server`, `redis-server`, daemon nodes (this binary's
//! `serve`) and the bench's own worker processes. Each runs in its own process group and is
//! always stopped: dropping it sends SIGTERM to the group, then SIGKILL after a grace period.
//!
//! The server start-up follows the test harness (`tests/support/servers.rs`): loopback only,
//! free ports found by binding port 0, ready once the server answers.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The path of `name` on `PATH` or in an sbin directory.
pub fn find_binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!("{name} is not installed (run scripts/install-test-deps, which installs nats-server and redis-server)")
        })
}

/// `n` distinct loopback ports that were free a moment ago.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(listeners
        .iter()
        .filter_map(|l| l.local_addr().ok().map(|a| a.port()))
        .collect())
}

/// A child process in its own process group, stopped when dropped.
pub struct Proc {
    pub what: String,
    child: Option<Child>,
}

impl Proc {
    /// Spawns `cmd` in its own process group.
    pub fn spawn(what: impl Into<String>, mut cmd: Command) -> anyhow::Result<Proc> {
        let what = what.into();
        let child = cmd
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        Ok(Proc {
            what,
            child: Some(child),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.as_mut()?.stdin.take()
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.as_mut()?.stdout.take()
    }

    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.as_mut()?.stderr.take()
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our child's process group (not reaped yet, so the id is ours).
            unsafe {
                libc::kill(-(c.id() as libc::pid_t), sig);
            }
        }
    }

    /// SIGKILL at once (a crash); waits for it.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// SIGTERM, SIGKILL after the grace period; waits for it.
    pub fn stop(&mut self) {
        if !self.is_running() {
            return;
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn log_file(path: &Path) -> anyhow::Result<(Stdio, Stdio)> {
    let f = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let g = f.try_clone()?;
    Ok((Stdio::from(f), Stdio::from(g)))
}

async fn nats_answers(port: u16) -> bool {
    let probe = async {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.ok()?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"INFO ")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Some(true))
    )
}

async fn http_ok(port: u16, path: &str) -> bool {
    let probe = async {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.ok()?;
        Some(raw.starts_with(b"HTTP/1.0 200") || raw.starts_with(b"HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Some(true))
    )
}

async fn redis_answers(port: u16) -> bool {
    let probe = async {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Some(true))
    )
}

/// Waits until `ready` passes or the process exits.
async fn wait_ready<F, Fut>(proc: &mut Proc, ready: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if !proc.is_running() {
            bail!("{} exited during start-up", proc.what);
        }
        if ready().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} did not answer within {READY_TIMEOUT:?}", proc.what);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `nats-server` with JetStream on file storage under `dir`.
pub struct NatsProc {
    pub proc: Proc,
    pub port: u16,
}

impl NatsProc {
    pub async fn start(dir: &Path) -> anyhow::Result<NatsProc> {
        let program = find_binary("nats-server")?;
        let mut last = None;
        for _ in 0..5 {
            let ports = free_ports(2)?;
            let (port, monitor) = (ports[0], ports[1]);
            let conf = format!(
                "listen: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{monitor}\"\n\
                 max_payload: 8MB\njetstream {{\n  store_dir: \"{}\"\n}}\n",
                dir.join("jetstream").display()
            );
            let conf_path = dir.join("nats.conf");
            std::fs::write(&conf_path, conf)?;
            let (out, err) = log_file(&dir.join("nats.log"))?;
            let mut cmd = Command::new(&program);
            cmd.arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            let mut proc = Proc::spawn(format!("nats-server on 127.0.0.1:{port}"), cmd)?;
            match wait_ready(&mut proc, || async move {
                nats_answers(port).await && http_ok(monitor, "/healthz?js-enabled-only=true").await
            })
            .await
            {
                Ok(()) => return Ok(NatsProc { proc, port }),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("nats-server did not start")))
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// A `redis-server` without persistence.
pub struct RedisProc {
    pub proc: Proc,
    pub port: u16,
}

impl RedisProc {
    pub async fn start(dir: &Path) -> anyhow::Result<RedisProc> {
        let program = find_binary("redis-server")?;
        let mut last = None;
        for _ in 0..5 {
            let port = free_ports(1)?[0];
            let (out, err) = log_file(&dir.join("redis.log"))?;
            let mut cmd = Command::new(&program);
            cmd.args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--maxclients",
                "1000",
                "--dir",
            ])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
            let mut proc = Proc::spawn(format!("redis-server on 127.0.0.1:{port}"), cmd)?;
            match wait_ready(&mut proc, || redis_answers(port)).await {
                Ok(()) => return Ok(RedisProc { proc, port }),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("redis-server did not start")))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// What a daemon node needs to join the bench cluster.
#[derive(Clone)]
pub struct NodeEnv {
    pub exe: PathBuf,
    pub dir: PathBuf,
    pub secret_file: PathBuf,
    pub nats_url: String,
    pub redis_url: String,
}

/// A daemon node: this binary's `serve` as a child process.
pub struct DaemonNode {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl DaemonNode {
    /// Starts node `index` and waits for its "listening … addr=" log line.
    pub fn start(env: &NodeEnv, index: usize, extra: &[(&str, String)]) -> anyhow::Result<Self> {
        let state = env.dir.join(format!("node{index}"));
        std::fs::create_dir_all(&state)?;
        let log = env.dir.join(format!("node{index}.log"));
        let mut cmd = Command::new(&env.exe);
        // Only what the bench sets: no inherited CHAT_ZINX_* or RUST_LOG.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().to_string();
            if k.starts_with("CHAT_ZINX_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        let mut vars: Vec<(&str, String)> = vec![
            ("CHAT_ZINX_SERVER__LISTEN", "127.0.0.1:0".into()),
            ("CHAT_ZINX_SERVER__HTTP_LISTEN", "127.0.0.1:0".into()),
            ("CHAT_ZINX_SERVER__STATE_DIR", state.display().to_string()),
            ("CHAT_ZINX_SERVER__NODE_ID", format!("bench-{index}")),
            ("CHAT_ZINX_SERVER__DRAIN_WINDOW", "1s".into()),
            (
                "CHAT_ZINX_AUTH__TOKEN_SECRET_FILE",
                env.secret_file.display().to_string(),
            ),
            ("CHAT_ZINX_NATS__URL", env.nats_url.clone()),
            ("CHAT_ZINX_REDIS__URL", env.redis_url.clone()),
            // The bench floods on purpose: no per-connection throttle, no idle cut.
            ("CHAT_ZINX_PROTOCOL__RATE_PER_SEC", "10000000".into()),
            ("CHAT_ZINX_PROTOCOL__RATE_BURST", "10000000".into()),
            ("CHAT_ZINX_PROTOCOL__IDLE_TIMEOUT", "1h".into()),
            ("CHAT_ZINX_LOG__LEVEL", "info".into()),
            ("CHAT_ZINX_LOG__FORMAT", "text".into()),
        ];
        vars.extend(extra.iter().cloned());
        cmd.arg("serve")
            .envs(vars)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut proc = Proc::spawn(format!("chat-zinx node {index}"), cmd)?;
        let stderr = proc.take_stderr().expect("piped stderr");
        let (tx, rx) = mpsc::channel::<String>();
        let log_path = log.clone();
        // Reads the node's log for ever (a full pipe would block the daemon) into its file,
        // handing the listening address over once.
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&log_path).ok();
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                if line.contains("listening") {
                    if let Some(addr) = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("addr="))
                    {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(addr.trim_matches('"').to_string());
                        }
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(a) => a
                .parse()
                .with_context(|| format!("node {index} logged an unreadable address {a:?}"))?,
            Err(_) => {
                proc.stop();
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(20).collect();
                bail!(
                    "node {index} did not log its listening address; its log ends with:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        };
        Ok(DaemonNode { proc, addr, log })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

/// A bench worker process (`chat-zinx bench --worker …`) that talks over stdin/stdout lines.
pub struct Worker {
    pub proc: Proc,
    stdin: Option<ChildStdin>,
    lines: tokio::sync::mpsc::Receiver<String>,
}

impl Worker {
    pub fn start(exe: &Path, args: &[String]) -> anyhow::Result<Worker> {
        let mut cmd = Command::new(exe);
        cmd.arg("bench")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut proc = Proc::spawn(format!("bench worker {}", args.join(" ")), cmd)?;
        let stdin = proc.take_stdin();
        let stdout = proc.take_stdout().expect("piped stdout");
        // Bounded: the reading thread waits when the bench falls behind the worker's output.
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Worker {
            proc,
            stdin,
            lines: rx,
        })
    }

    /// The next line the worker prints.
    pub async fn next_line(&mut self, timeout: Duration) -> anyhow::Result<String> {
        match tokio::time::timeout(timeout, self.lines.recv()).await {
            Ok(Some(l)) => Ok(l),
            Ok(None) => bail!("{} exited", self.proc.what),
            Err(_) => bail!("{} said nothing within {timeout:?}", self.proc.what),
        }
    }

    /// Tells the worker to finish (closes its stdin) and waits for it.
    pub fn finish(mut self) {
        self.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.proc.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
