//! A server process: its command line, log file, readiness probe and (while it runs) its
//! [`ChildProcess`], so that it can be restarted on the same ports; and the start-up loop that
//! tries fresh ports until the servers answer.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use tempfile::TempDir;

use super::ports::try_free_ports;
use super::probe::Probe;
use super::process::ChildProcess;
use super::READY_TIMEOUT;

/// Fresh port sets tried when a server cannot start on the ports it was given.
const START_ATTEMPTS: usize = 5;

/// Why a server did not become ready.
#[derive(Debug)]
pub(crate) enum NotReady {
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
    child: Option<ChildProcess>,
}

impl ServerProcess {
    pub(crate) fn new(
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

    pub(crate) fn env(&mut self, key: &str, value: &str) {
        self.envs.push((key.into(), value.into()));
    }

    /// What it is (program and address), for messages.
    pub fn what(&self) -> &str {
        &self.what
    }

    pub(crate) fn spawn(&mut self) -> anyhow::Result<()> {
        assert!(self.child.is_none(), "{} is already running", self.what);
        // Appended to: a restart's output follows the earlier run's.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let err = log.try_clone().context("clone the log file handle")?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        self.child = Some(ChildProcess::spawn(self.what.clone(), cmd)?);
        Ok(())
    }

    /// Polls the probe until it passes, the process exits or [`READY_TIMEOUT`] passes.
    pub(crate) async fn wait_ready(&mut self) -> Result<(), NotReady> {
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
        let status = self.child.as_mut()?.exit_status();
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none() && self.child.is_some()
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(ChildProcess::pid)
    }

    /// SIGTERM, then SIGKILL if it has not exited within [`super::STOP_GRACE`]; waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop();
        }
    }

    /// SIGKILL at once (a crash); waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// Starts the process again with the same command line (same ports and data directory)
    /// and waits until it answers; stops it first if it runs. Retries for a while when it
    /// exits at once (e.g. the port is still held by a process that is going away).
    pub async fn try_restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.spawn()?;
            match self.wait_ready().await {
                Ok(()) => return Ok(()),
                Err(NotReady::Exited(why)) if Instant::now() < deadline => {
                    eprintln!("{} {why} on restart; trying again", self.what);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    /// [`ServerProcess::try_restart`] for tests: panics with the end of the log.
    pub async fn restart(&mut self) {
        if let Err(e) = self.try_restart().await {
            panic!("{e:#}");
        }
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Stops it and says why it did not start, with the end of its log.
    fn fail(&mut self, why: NotReady) -> anyhow::Error {
        self.stop();
        let why = match why {
            NotReady::Exited(s) => s,
            NotReady::Timeout => format!("did not answer within {READY_TIMEOUT:?}"),
        };
        anyhow!(
            "{} {why}; its log ({}) ends with:\n{}",
            self.what,
            self.log.display(),
            self.log_tail()
        )
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts servers built by `make(ports)` on fresh ports until one set works.
pub(crate) async fn start_with_fresh_ports<T>(
    n_ports: usize,
    mut make: impl FnMut(&[u16]) -> anyhow::Result<T>,
    procs: impl Fn(&mut T) -> Vec<&mut ServerProcess>,
) -> anyhow::Result<T> {
    for attempt in 1..=START_ATTEMPTS {
        let ports = try_free_ports(n_ports).context("find free loopback ports")?;
        let mut servers = make(&ports)?;
        for p in procs(&mut servers) {
            p.spawn()?;
        }
        let mut failure = None;
        for (i, p) in procs(&mut servers).into_iter().enumerate() {
            if let Err(e) = p.wait_ready().await {
                failure = Some((i, e));
                break;
            }
        }
        match failure {
            None => return Ok(servers),
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
            Some((i, e)) => return Err(procs(&mut servers).swap_remove(i).fail(e)),
        }
    }
    unreachable!("the last attempt returns or fails")
}

/// Where a server keeps its config, log and data.
pub(crate) enum ServerDir {
    /// A temporary directory, removed when the server is dropped.
    Temporary(TempDir),
    /// A directory the caller owns (the bench keeps it with `--keep-logs`).
    Given(PathBuf),
}

impl ServerDir {
    /// `given`, else a new temporary directory named `prefix…`.
    pub(crate) fn new(given: Option<&Path>, prefix: &str) -> anyhow::Result<ServerDir> {
        Ok(match given {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("create {}", dir.display()))?;
                ServerDir::Given(dir.to_path_buf())
            }
            None => ServerDir::Temporary(
                tempfile::Builder::new()
                    .prefix(prefix)
                    .tempdir()
                    .context("create a temporary directory")?,
            ),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        match self {
            ServerDir::Temporary(dir) => dir.path(),
            ServerDir::Given(dir) => dir,
        }
    }
}
