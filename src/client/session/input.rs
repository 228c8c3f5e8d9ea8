//! What the user or the script asks for: a command line (or the text line of a `/msg` typed
//! without text) becomes a command, run at once or, in sequential mode, held back by a
//! [`Blocker`] (`/wait`, `/sleep`, or a request waiting for the connection) until it is done.
//!
//! A bad command line fails a script but only informs a person at a terminal.

use serde_json::json;
use tokio::time::Instant;

use super::Session;
use crate::client::commands::{self, Command};
use crate::client::render::Output;

/// What holds back the next command in sequential mode.
#[derive(Debug)]
pub(super) enum Blocker {
    Wait {
        key: String,
        count: u64,
        deadline: Instant,
    },
    Sleep(Instant),
    /// A request command waiting for the connection to be up (and the session resumed).
    Connection {
        cmd: Command,
        deadline: Instant,
    },
}

impl Session {
    pub(super) async fn on_line(&mut self, line: &str) {
        if let Some(cmd) = self.prompt.take() {
            if line.trim() == "/cancel" {
                self.emit(Output::Info("cancelled".into()));
                return;
            }
            let text = Some(line.to_string());
            let cmd = match cmd {
                Command::Msg { to, .. } => Command::Msg { to, text },
                Command::GroupMsg { group_id, .. } => Command::GroupMsg { group_id, text },
                other => other,
            };
            self.exec(cmd).await;
            return;
        }
        match Command::parse(line) {
            Ok(Some(cmd)) => self.exec(cmd).await,
            Ok(None) => {}
            Err(usage) => self.usage_error(None, usage.0),
        }
    }

    /// A bad command line fails a script, but merely informs a person at a terminal.
    pub(super) fn usage_error(&mut self, cmd: Option<&'static str>, message: String) {
        if self.cfg.sequential {
            self.fail("usage", cmd, message);
        } else {
            self.emit(Output::client_error("usage", cmd, message));
        }
    }

    pub(super) async fn exec(&mut self, cmd: Command) {
        match cmd {
            Command::Help => self.emit(Output::Info(commands::HELP.to_string())),
            Command::Quit => self.quit = true,
            Command::Sleep(d) => self.blocker = Some(Blocker::Sleep(Instant::now() + d)),
            Command::Wait {
                what,
                count,
                timeout,
            } => {
                let key = what.key();
                let deadline = Instant::now() + timeout.unwrap_or(self.cfg.timeout);
                self.blocker = Some(Blocker::Wait {
                    key,
                    count,
                    deadline,
                });
                self.check_wait();
            }
            Command::Connect(addr) => self.connect_cmd(addr).await,
            Command::Msg { text: None, .. } | Command::GroupMsg { text: None, .. } => {
                if !self.cfg.json {
                    self.emit(Output::Info(
                        "type the message on the next line (/cancel to abort)".into(),
                    ));
                }
                self.prompt = Some(cmd);
            }
            cmd => {
                if self.conn.is_some() && (self.ready || !self.cfg.sequential) {
                    self.send_request(cmd).await;
                } else if self.cfg.sequential {
                    let deadline = Instant::now() + self.cfg.timeout;
                    self.blocker = Some(Blocker::Connection { cmd, deadline });
                } else {
                    let name = cmd.name();
                    self.emit(Output::client_error(
                        "not_connected",
                        Some(name),
                        "not connected (reconnecting; or use /connect [host:port])".into(),
                    ));
                }
            }
        }
    }

    /// Complete a `/wait` whose count has arrived, consuming that many arrivals (so that frames
    /// arriving before a `/wait` are not lost, and each frame satisfies only one `/wait`).
    pub(super) fn check_wait(&mut self) {
        let Some(Blocker::Wait { key, count, .. }) = &self.blocker else {
            return;
        };
        let have = self.arrivals.get(key).copied().unwrap_or(0);
        if have >= *count {
            let (key, count) = (key.clone(), *count);
            self.arrivals.insert(key.clone(), have - count);
            self.blocker = None;
            self.emit(Output::event(
                "wait",
                vec![("what", json!(key)), ("count", json!(count))],
            ));
        }
    }
}
