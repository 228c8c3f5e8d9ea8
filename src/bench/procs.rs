//! The bench's own child processes: daemon nodes (this binary's `serve`) and worker
//! processes. Both are [`ChildProcess`]es of the shared [`crate::harness`]: in their own
//! process group and always stopped (SIGTERM to the group on drop, then SIGKILL after a grace
//! period). The backend servers (`nats-server`, `redis-server`) are the harness's own
//! [`crate::harness::NatsServer`] and [`crate::harness::RedisServer`].

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::harness::{ChildProcess, READY_TIMEOUT};

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
    pub proc: ChildProcess,
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
        let mut proc = ChildProcess::spawn(format!("chat-zinx node {index}"), cmd)?;
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

    /// The process id (0 once it has exited: no `/proc` entry to read).
    pub fn pid(&self) -> u32 {
        self.proc.pid().unwrap_or(0)
    }
}

/// A bench worker process (`chat-zinx bench --worker …`) that talks over stdin/stdout lines.
pub struct Worker {
    pub proc: ChildProcess,
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
        let mut proc = ChildProcess::spawn(format!("bench worker {}", args.join(" ")), cmd)?;
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
            Ok(None) => bail!("{} exited", self.proc.what()),
            Err(_) => bail!("{} said nothing within {timeout:?}", self.proc.what()),
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
