//! The connection's life cycle: connect (and say Hello, which tells a v2 server from the
//! original), lose the connection and schedule the reconnect with backoff over the known
//! addresses, follow a 406 redirect, and `/connect` to another server.
//!
//! What was in flight when a connection ends is decided here, in one place: a v2 send that
//! carries a `client_msg_id` is parked to be re-sent after the resume (the server drops a
//! duplicate), everything else a user waited for fails at once.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::requests::Owner;
use super::{Session, PING_EVERY};
use crate::client::backoff;
use crate::client::commands;
use crate::client::connection::{split_scheme, Connection, Inbound, TLS_SCHEME};
use crate::client::render::{body_value, Output, Viewer};
use crate::protocol::{ids, Frame};

/// How long to wait for the 401 of a Hello before assuming a server that ignores it (the
/// original server silently drops unknown ids).
const HELLO_WAIT: Duration = Duration::from_secs(3);
/// How often a v2 send is re-sent after reconnects before it is reported as failed (a message
/// that kills the connection every time must not be retried forever).
const MAX_RESENDS: u32 = 3;

impl Session {
    pub(super) fn addr(&self) -> String {
        self.addrs[self.addr_idx % self.addrs.len()].clone()
    }

    /// One connection attempt to the current address: connect, Hello, then resume. On failure
    /// the next attempt is scheduled with backoff (on the next address, after a redirect).
    pub(super) async fn try_connect(&mut self) -> bool {
        self.reconnect_at = None;
        let addr = self.addr();
        match self.establish(&addr).await {
            Ok((conn, hello, early)) => {
                self.conn = Some(conn);
                self.v2 = hello.is_some();
                self.viewer.v2 = self.v2;
                self.attempt = 0;
                self.ping_every = hello
                    .as_ref()
                    .and_then(|h| h.get("idle_timeout_s"))
                    .and_then(Value::as_u64)
                    .map(|idle| PING_EVERY.min(Duration::from_secs((idle / 3).max(1))))
                    .unwrap_or(PING_EVERY);
                self.next_ping = Some(Instant::now() + self.ping_every);
                let mut fields = vec![
                    ("addr", json!(addr)),
                    ("protocol", json!(if self.v2 { 2 } else { 1 })),
                ];
                if let Some(h) = hello {
                    fields.push(("server", h));
                }
                let event = if self.ever_connected {
                    "reconnected"
                } else {
                    "connected"
                };
                self.ever_connected = true;
                self.emit(Output::event(event, fields));
                for frame in early {
                    self.on_frame(frame).await;
                }
                self.start_resume().await;
                true
            }
            Err(e) => {
                self.addr_idx = (self.addr_idx + 1) % self.addrs.len();
                let delay = backoff::delay(self.attempt);
                self.attempt = self.attempt.saturating_add(1);
                self.reconnect_at = Some(Instant::now() + delay);
                let next = self.addr();
                self.emit(Output::event(
                    "reconnecting",
                    vec![
                        ("addr", json!(next)),
                        ("attempt", json!(self.attempt)),
                        ("delay_ms", json!(delay.as_millis() as u64)),
                        ("error", json!(format!("{addr}: {e}"))),
                    ],
                ));
                false
            }
        }
    }

    /// Connect and, unless `--v1`, say Hello. Frames other than the 401 that arrive meanwhile
    /// are returned to be handled afterwards, not lost.
    async fn establish(
        &mut self,
        addr: &str,
    ) -> std::io::Result<(Connection, Option<Value>, Vec<Frame>)> {
        let mut conn = Connection::open(addr, self.cfg.timeout, self.cfg.tls.as_deref()).await?;
        let mut early = Vec::new();
        if self.cfg.v1 {
            return Ok((conn, None, early));
        }
        conn.send(ids::HELLO_REQ, &commands::hello_body()).await?;
        let until = Instant::now() + HELLO_WAIT.min(self.cfg.timeout);
        loop {
            match tokio::time::timeout_at(until, conn.recv()).await {
                // A server that ignores Hello (the original) speaks v1.
                Err(_) => return Ok((conn, None, early)),
                Ok(Inbound::Closed(reason)) => {
                    return Err(std::io::Error::other(format!(
                        "closed during hello: {reason}"
                    )))
                }
                Ok(Inbound::Frame(f)) if f.id == ids::HELLO_RESP => {
                    return Ok((conn, Some(body_value(&f.body)), early))
                }
                Ok(Inbound::Frame(f)) if f.id == ids::ERROR => {
                    let body = body_value(&f.body);
                    if body.get("ref").and_then(Value::as_u64) == Some(ids::HELLO_REQ.into()) {
                        return Ok((conn, None, early));
                    }
                    early.push(f);
                }
                Ok(Inbound::Frame(f)) => early.push(f),
            }
        }
    }

    /// The connection ended (or is given up): fail or park what was in flight and schedule a
    /// reconnect, at once after a redirect (`delay` = zero), else with backoff.
    pub(super) fn lost(&mut self, reason: &str, delay: Option<Duration>) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let addr = conn.addr().to_string();
        drop(conn);
        self.ready = false;
        self.next_ping = None;
        self.emit(Output::event(
            "disconnected",
            vec![("addr", json!(addr)), ("reason", json!(reason))],
        ));
        let now = Instant::now();
        for mut p in std::mem::take(&mut self.pending) {
            match p.owner {
                Owner::User(_)
                    if self.v2 && p.client_msg_id.is_some() && p.resends < MAX_RESENDS =>
                {
                    p.deadline = now + self.cfg.timeout;
                    self.resend.push(p);
                }
                Owner::User(cmd) => self.fail(
                    "disconnected",
                    Some(cmd),
                    "connection lost before the reply".into(),
                ),
                Owner::Sync { user: true } => self.fail(
                    "disconnected",
                    Some("sync"),
                    "connection lost during the sync".into(),
                ),
                _ => {}
            }
        }
        if self.quit {
            return;
        }
        if std::mem::take(&mut self.kicked) {
            // Closed by an operator: coming back at once with the token would undo the kick.
            self.emit(Output::event(
                "not_reconnecting",
                vec![(
                    "reason",
                    json!("closed by an operator: /connect, then /login, to come back"),
                )],
            ));
            return;
        }
        let delay = delay.unwrap_or_else(|| backoff::delay(self.attempt));
        self.attempt = self.attempt.saturating_add(1);
        self.reconnect_at = Some(now + delay);
        let next = self.addr();
        self.emit(Output::event(
            "reconnecting",
            vec![
                ("addr", json!(next)),
                ("attempt", json!(self.attempt)),
                ("delay_ms", json!(delay.as_millis() as u64)),
            ],
        ));
    }

    /// `/connect [addr]`: leave the current server and session (not logged in afterwards).
    pub(super) async fn connect_cmd(&mut self, addr: Option<String>) {
        let addr = addr.unwrap_or_else(|| self.addr());
        if let Some(conn) = self.conn.take() {
            let old = conn.addr().to_string();
            drop(conn);
            self.emit(Output::event(
                "disconnected",
                vec![("addr", json!(old)), ("reason", json!("/connect"))],
            ));
        }
        for p in std::mem::take(&mut self.pending)
            .into_iter()
            .chain(std::mem::take(&mut self.resend))
        {
            if let Owner::User(cmd) = p.owner {
                self.fail("disconnected", Some(cmd), "abandoned by /connect".into());
            }
        }
        self.addrs = vec![addr.clone()];
        self.addr_idx = 0;
        self.attempt = 0;
        self.ready = false;
        self.ever_connected = false;
        self.token = None;
        self.creds = None;
        self.cursor = None;
        self.viewer = Viewer::default();
        if !self.try_connect().await {
            self.fail(
                "connect",
                Some("connect"),
                format!("could not connect to {addr}"),
            );
        }
    }

    /// 406: move to the least loaded node now, and resume there. A session on TLS moves only
    /// to nodes that offer TLS (`tls_addr`), never down to a plain connection.
    pub(super) fn on_redirect(&mut self, body: Value) {
        let on_tls = split_scheme(&self.addr()).0;
        let nodes: Vec<String> = body
            .get("nodes")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|n| {
                        if on_tls {
                            n.get("tls_addr")
                                .and_then(Value::as_str)
                                .map(|a| format!("{TLS_SCHEME}{a}"))
                        } else {
                            n.get("addr").and_then(Value::as_str).map(str::to_string)
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let reason = body
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("redirect")
            .to_string();
        self.emit(Output::event(
            "redirect",
            vec![
                ("reason", json!(reason)),
                ("addr", json!(nodes.first())),
                ("body", body),
            ],
        ));
        if nodes.is_empty() {
            return;
        }
        // The offered nodes first, then the addresses known before, as fallbacks.
        let mut addrs = nodes;
        for a in std::mem::take(&mut self.addrs) {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        self.addrs = addrs;
        self.addr_idx = 0;
        self.attempt = 0;
        self.lost(&format!("redirected ({reason})"), Some(Duration::ZERO));
    }
}
