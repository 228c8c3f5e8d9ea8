//! Resuming after a (re)connect: log in again (by token in v2, by the remembered password in
//! v1), then sync what was missed page by page, de-duplicated against what was already shown;
//! once that is over the session is ready, and parked sends and a command that waited for the
//! connection go out.
//!
//! A failed resume is reported but does not stop the session: a token that expired falls
//! back to the password when there is one, and otherwise the user is simply logged out.

use serde_json::{json, Value};
use tokio::time::Instant;

use super::input::Blocker;
use super::requests::Owner;
use super::Session;
use crate::client::commands::{self, Command};
use crate::client::render::{reply_error, Output, Viewer};
use crate::protocol::ids;

/// Upper bound on sync pages fetched in one go, against a server that always says `has_more`.
const MAX_SYNC_PAGES: u32 = 10_000;

impl Session {
    /// After a (re)connect: log in again — with the token of the last login in v2, with the
    /// remembered password in v1 (the original server accepts no token) — then sync.
    pub(super) async fn start_resume(&mut self) {
        if self.v2 {
            if let Some(token) = self.token.clone() {
                let body = commands::token_login_body(&token);
                self.send_internal(Owner::Resume { by_token: true }, ids::LOGIN_REQ, body)
                    .await;
                return;
            }
        }
        if self.creds.is_some() {
            self.password_resume().await;
            return;
        }
        self.on_ready();
    }

    async fn password_resume(&mut self) {
        let Some((username, password)) = self.creds.clone() else {
            self.on_ready();
            return;
        };
        let login = Command::Login { username, password };
        if let Ok(Some(req)) = login.request(&self.request_ctx()) {
            self.send_internal(Owner::Resume { by_token: false }, req.id, req.body)
                .await;
        }
    }

    pub(super) async fn start_sync(&mut self, user: bool) {
        let body = commands::sync_body(self.cursor.as_deref());
        self.send_internal(Owner::Sync { user }, ids::SYNC_REQ, body)
            .await;
    }

    /// The session is usable again: re-send parked sends, run the command that waited.
    pub(super) fn on_ready(&mut self) {
        self.ready = true;
        if let Some(Blocker::Connection { .. }) = &self.blocker {
            if let Some(Blocker::Connection { cmd, .. }) = self.blocker.take() {
                self.deferred = Some(cmd);
            }
        }
    }

    pub(super) async fn resend_parked(&mut self) {
        let now = Instant::now();
        for mut p in std::mem::take(&mut self.resend) {
            let Some(conn) = self.conn.as_mut() else {
                self.resend.push(p);
                continue;
            };
            if let Err(e) = conn.send(p.req_id, &p.body).await {
                self.resend.push(p);
                self.lost(&format!("send failed: {e}"), None);
                continue;
            }
            p.sent = now;
            p.deadline = now + self.cfg.timeout;
            p.resends += 1;
            self.pending.push_back(p);
        }
    }

    /// Remember who we are after a successful 105: the token for resuming, the viewer for "you".
    pub(super) fn logged_in(&mut self, body: &Value) {
        let data = body.get("data").unwrap_or(&Value::Null);
        if let Some(token) = data.get("token").and_then(Value::as_str) {
            if !token.is_empty() {
                self.token = Some(token.to_string());
            }
        }
        self.viewer = Viewer {
            user_id: data.get("id").and_then(Value::as_u64),
            uuid: data
                .get("user_uuid")
                .and_then(Value::as_str)
                .map(str::to_string),
            username: data
                .get("username")
                .and_then(Value::as_str)
                .map(str::to_string),
            v2: self.v2,
        };
    }

    pub(super) async fn resume_failed(&mut self, by_token: bool, body: &Value) {
        let reason = reply_error(body)
            .or_else(|| {
                body.get("message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| body.to_string());
        self.emit(Output::event(
            "resume_failed",
            vec![
                ("reason", json!(reason)),
                ("via", json!(if by_token { "token" } else { "password" })),
            ],
        ));
        if by_token {
            self.token = None;
            if self.creds.is_some() {
                self.password_resume().await;
                return;
            }
        }
        self.on_ready();
    }

    /// A 404 page: show what is new, remember the cursor, fetch the next page while `has_more`.
    pub(super) async fn on_sync_page(&mut self, idx: usize, user: bool, body: Value) {
        let Some(mut p) = self.pending.remove(idx) else {
            return;
        };
        if let Some(err) = reply_error(&body) {
            if user {
                self.emit(Output::Reply {
                    cmd: "sync",
                    id: ids::SYNC_RESP,
                    body,
                    rtt_ms: Some(p.sent.elapsed().as_millis() as u64),
                    extra: vec![],
                });
            } else {
                self.emit(Output::event(
                    "synced",
                    vec![("new", json!(p.sync_new)), ("error", json!(err))],
                ));
            }
            self.on_ready();
            return;
        }
        let messages = body
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for m in &messages {
            if !self.dedupe.first_time(m) {
                continue;
            }
            p.sync_new += 1;
            let id = if m.get("group_id").is_some() {
                ids::GROUP_TEXT_PUSH
            } else {
                ids::TEXT_MSG
            };
            self.emit(Output::Push {
                id,
                body: m.clone(),
                sync: true,
            });
        }
        if let Some(cursor) = body.get("cursor").and_then(Value::as_str) {
            if !cursor.is_empty() {
                self.cursor = Some(cursor.to_string());
            }
        }
        let has_more = body.get("has_more").and_then(Value::as_bool) == Some(true);
        if has_more && !messages.is_empty() && p.sync_pages < MAX_SYNC_PAGES {
            let next = commands::sync_body(self.cursor.as_deref());
            if let Some(conn) = self.conn.as_mut() {
                if let Err(e) = conn.send(ids::SYNC_REQ, &next).await {
                    self.lost(&format!("send failed: {e}"), None);
                    return;
                }
                let now = Instant::now();
                p.expect = vec![ids::SYNC_RESP];
                p.sync_pages += 1;
                p.deadline = now + self.cfg.timeout;
                self.pending.push_back(p);
                return;
            }
        }
        if user {
            self.emit(Output::Reply {
                cmd: "sync",
                id: ids::SYNC_RESP,
                body,
                rtt_ms: Some(p.sent.elapsed().as_millis() as u64),
                extra: vec![("new", json!(p.sync_new))],
            });
        } else {
            self.emit(Output::event(
                "synced",
                vec![("new", json!(p.sync_new)), ("cursor", json!(self.cursor))],
            ));
            self.on_ready();
        }
    }
}
