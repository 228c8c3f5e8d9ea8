//! The session's timers, checked after every event (so that a flood of frames cannot starve
//! them): the initial connection's deadline in sequential mode, the reconnect, requests and
//! parked sends that ran out of time, the scripting blockers (`/wait`, `/sleep`, a command
//! waiting for the connection) and the heartbeat.

use serde_json::json;
use tokio::time::Instant;

use super::input::Blocker;
use super::requests::{take_expired, Owner};
use super::Session;
use crate::client::render::Output;
use crate::protocol::ids;

impl Session {
    pub(super) async fn on_timers(&mut self) {
        let now = Instant::now();
        if !self.ever_connected && self.initial_deadline.is_some_and(|d| now >= d) {
            self.initial_deadline = None;
            let addr = self.addr();
            self.fail(
                "connect",
                None,
                format!(
                    "could not connect to {addr} within {}",
                    humantime::format_duration(self.cfg.timeout)
                ),
            );
            self.quit = true;
            return;
        }
        if self.reconnect_at.is_some_and(|t| now >= t) && self.conn.is_none() && !self.quit {
            self.try_connect().await;
        }
        if self.ready && !self.resend.is_empty() && self.conn.is_some() {
            self.resend_parked().await;
        }

        // Requests that ran out of time.
        let now = Instant::now();
        let mut expired = Vec::new();
        self.pending.retain_mut(|p| {
            if p.deadline <= now {
                expired.push((p.owner, p.expect.clone()));
                false
            } else {
                true
            }
        });
        let parked = take_expired(&mut self.resend, now);
        for p in parked {
            if let Owner::User(cmd) = p.owner {
                self.fail(
                    "timeout",
                    Some(cmd),
                    "not re-sent: no connection within the timeout".into(),
                );
            }
        }
        for (owner, expect) in expired {
            let waited = humantime::format_duration(self.cfg.timeout);
            match owner {
                Owner::User(cmd) => {
                    let ids: Vec<String> = expect.iter().map(u32::to_string).collect();
                    self.fail(
                        "timeout",
                        Some(cmd),
                        format!("no reply {} within {waited}", ids.join("+")),
                    );
                }
                Owner::Heartbeat => {
                    self.lost(&format!("no pong within {waited}"), None);
                }
                Owner::Resume { .. } => {
                    self.emit(Output::event(
                        "resume_failed",
                        vec![("reason", json!(format!("no login reply within {waited}")))],
                    ));
                    self.on_ready();
                }
                Owner::Sync { user } => {
                    if user {
                        self.fail("timeout", Some("sync"), format!("no 404 within {waited}"));
                    }
                    self.on_ready();
                }
            }
        }

        // Scripting blockers.
        match &self.blocker {
            Some(Blocker::Sleep(until)) if *until <= now => self.blocker = None,
            Some(Blocker::Wait {
                key,
                count,
                deadline,
            }) if *deadline <= now => {
                let have = self.arrivals.get(key).copied().unwrap_or(0);
                let msg = format!("got {have} of {count} × {key} before the timeout");
                self.blocker = None;
                self.fail("timeout", Some("wait"), msg);
            }
            Some(Blocker::Connection { cmd, deadline }) if *deadline <= now => {
                let name = cmd.name();
                self.blocker = None;
                self.fail(
                    "not_connected",
                    Some(name),
                    "no connection to the server within the timeout".into(),
                );
            }
            _ => {}
        }

        // Heartbeat.
        if self.conn.is_some() && self.next_ping.is_some_and(|t| t <= now) {
            self.next_ping = Some(now + self.ping_every);
            self.send_internal(Owner::Heartbeat, ids::PING, b"ping".to_vec())
                .await;
        }
    }
}
