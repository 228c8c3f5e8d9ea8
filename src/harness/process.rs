//! A child process in its own process group, always stopped: what every server of the harness
//! and every child of the bench (daemon nodes, workers) runs as.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

use super::STOP_GRACE;

/// The path of the program `name`: the one a `CHAT_ZINX_TEST_<NAME>` variable names (e.g.
/// `CHAT_ZINX_TEST_NATS_SERVER`, to run the suite or the bench on another server version),
/// else on `PATH`, else in an sbin directory (Debian installs `nats-server` in `/usr/sbin`).
pub fn try_find_binary(name: &str) -> anyhow::Result<PathBuf> {
    let var = format!(
        "CHAT_ZINX_TEST_{}",
        name.to_ascii_uppercase().replace('-', "_")
    );
    if let Some(chosen) = std::env::var_os(&var) {
        let chosen = PathBuf::from(chosen);
        if !chosen.is_file() {
            return Err(anyhow!(
                "{var} names {}, which is not a file: run scripts/install-test-deps or unset {var}",
                chosen.display()
            ));
        }
        return Ok(chosen);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "{name} is not installed (not on PATH nor in /usr/sbin): run scripts/install-test-deps, \
                 which installs nats-server, redis-server, consul and haproxy"
            )
        })
}

/// [`try_find_binary`] for tests: panics with what to do when `name` is not installed.
pub fn find_binary(name: &str) -> PathBuf {
    try_find_binary(name).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A child process in its own process group, stopped (SIGTERM, then SIGKILL after
/// [`STOP_GRACE`]) when dropped.
pub struct ChildProcess {
    what: String,
    /// `None` once it has exited and was reaped.
    child: Option<Child>,
}

impl ChildProcess {
    /// Spawns `cmd` in its own process group; `what` names it in messages.
    pub fn spawn(what: impl Into<String>, mut cmd: Command) -> anyhow::Result<ChildProcess> {
        let what = what.into();
        let child = cmd
            // Its own process group: signals reach it and anything it forks, and never us.
            .process_group(0)
            .spawn()
            .with_context(|| {
                let program = Path::new(cmd.get_program()).display().to_string();
                format!("cannot start {what} ({program})")
            })?;
        Ok(ChildProcess {
            what,
            child: Some(child),
        })
    }

    /// What it is, as given to [`ChildProcess::spawn`].
    pub fn what(&self) -> &str {
        &self.what
    }

    /// The process id until it is found to have exited.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.as_mut()?.stdin.take()
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.as_mut()?.stdout.take()
    }

    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.as_mut()?.stderr.take()
    }

    /// `Some(status)` when the process is found to have exited; it is then reaped and
    /// forgotten, so later calls return `None` and [`ChildProcess::is_running`] is false.
    pub fn exit_status(&mut self) -> Option<String> {
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
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
