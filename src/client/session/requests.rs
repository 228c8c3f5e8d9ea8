//! Requests in flight and the frames that answer them.
//!
//! Each request the session sends is a [`Pending`] with its [`Owner`] (a user command, the
//! heartbeat, the resume login, a sync chain) and the reply ids it expects. Replies are
//! matched first come first served: the daemon answers the frames of one connection in order
//! (`docs/protocol.md` §2.5), so the oldest request waiting for an id is the one it answers.
//! A send ack is matched by its `client_msg_id` echo when there is one, so that the ack of a
//! send that timed out cannot complete another. A frame that answers nothing is a push.

use serde_json::{json, Value};
use tokio::time::Instant;

use super::{now_ms, Session};
use crate::client::commands::{self, Command, RequestCtx};
use crate::client::dedupe::Dedupe;
use crate::client::render::{body_value, reply_error, Output, Viewer};
use crate::protocol::messages::{code, rfc3339};
use crate::protocol::{ids, Frame};

/// Who waits for a request's replies, which decides what its replies (or its timeout) do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    /// A command of the user; its replies are shown.
    User(&'static str),
    /// A heartbeat ping: its pong is silent, its absence means a dead connection.
    Heartbeat,
    /// The login that resumes the session after a reconnect.
    Resume { by_token: bool },
    /// A chain of 403 pages; `user`: started by `/sync` (else after a resume).
    Sync { user: bool },
}

/// A request sent and not yet (completely) answered.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) owner: Owner,
    pub(super) req_id: u32,
    /// Kept for v2 sends, which are re-sent after a reconnect (the server drops the duplicate by
    /// `client_msg_id` if the first copy made it).
    pub(super) body: Vec<u8>,
    pub(super) expect: Vec<u32>,
    pub(super) client_msg_id: Option<String>,
    /// Credentials of a `/login`, remembered on success for a v1 resume.
    pub(super) creds: Option<(String, String)>,
    pub(super) sent: Instant,
    pub(super) deadline: Instant,
    /// New messages shown so far by a sync chain, and its pages.
    pub(super) sync_new: u64,
    pub(super) sync_pages: u32,
    /// Times this send was re-sent after a reconnect.
    pub(super) resends: u32,
}

/// Take the entries whose deadline has passed out of `list`.
pub(super) fn take_expired(list: &mut Vec<Pending>, now: Instant) -> Vec<Pending> {
    let (expired, keep) = std::mem::take(list)
        .into_iter()
        .partition(|p| p.deadline <= now);
    *list = keep;
    expired
}

impl Session {
    pub(super) fn request_ctx(&self) -> RequestCtx {
        RequestCtx {
            v2: self.v2,
            client_msg_id: uuid::Uuid::new_v4().to_string(),
            now_rfc3339: rfc3339(now_ms()),
            cursor: self.cursor.clone(),
        }
    }

    pub(super) async fn send_request(&mut self, cmd: Command) {
        let req = match cmd.request(&self.request_ctx()) {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(usage) => {
                self.usage_error(Some(cmd.name()), usage.0);
                return;
            }
        };
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if let Err(e) = conn.send(req.id, &req.body).await {
            self.fail("send", Some(req.cmd), format!("send failed: {e}"));
            self.lost(&format!("send failed: {e}"), None);
            return;
        }
        if req.expect.is_empty() {
            // A v1 P2P send: the original protocol answers nothing.
            if self.cfg.json {
                self.emit(Output::event(
                    "sent",
                    vec![("cmd", json!(req.cmd)), ("id", json!(req.id))],
                ));
            }
            return;
        }
        let owner = match cmd {
            Command::Sync => Owner::Sync { user: true },
            _ => Owner::User(req.cmd),
        };
        let creds = match cmd {
            Command::Login { username, password } => Some((username, password)),
            _ => None,
        };
        let now = Instant::now();
        self.pending.push_back(Pending {
            owner,
            req_id: req.id,
            body: req.body,
            expect: req.expect,
            client_msg_id: req.client_msg_id,
            creds,
            sent: now,
            deadline: now + self.cfg.timeout,
            sync_new: 0,
            sync_pages: 1,
            resends: 0,
        });
    }

    /// Send a frame of the client's own (heartbeat, resume login, sync page).
    pub(super) async fn send_internal(&mut self, owner: Owner, id: u32, body: Vec<u8>) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if let Err(e) = conn.send(id, &body).await {
            self.lost(&format!("send failed: {e}"), None);
            return;
        }
        let now = Instant::now();
        self.pending.push_back(Pending {
            owner,
            req_id: id,
            body: Vec::new(),
            expect: commands::expected_replies(id, self.v2),
            client_msg_id: None,
            creds: None,
            sent: now,
            deadline: now + self.cfg.timeout,
            sync_new: 0,
            sync_pages: 1,
            resends: 0,
        });
    }

    pub(super) async fn on_frame(&mut self, frame: Frame) {
        let body = body_value(&frame.body);
        match frame.id {
            ids::ERROR => self.on_error(body).await,
            ids::REDIRECT => self.on_redirect(body),
            id => {
                // An ack that names its send answers that send or, if it is no longer waited
                // for (timed out), nothing: it must not complete another send.
                let cmid = (id == ids::SEND_ACK)
                    .then(|| body.get("client_msg_id").and_then(Value::as_str))
                    .flatten()
                    .filter(|c| !c.is_empty());
                let idx = match cmid {
                    Some(c) => self
                        .pending
                        .iter()
                        .position(|p| p.client_msg_id.as_deref() == Some(c)),
                    None => self.pending.iter().position(|p| p.expect.contains(&id)),
                };
                match idx {
                    Some(i) => self.on_reply(i, id, body).await,
                    None => self.on_push(id, body),
                }
            }
        }
    }

    /// A 99: it answers the request named by `ref` (v2), or else the oldest one waiting (a v1
    /// connection gets a ref-less 99 instead of the reply, e.g. a group send while logged out).
    async fn on_error(&mut self, body: Value) {
        // An operator closed the session (admin API): the connection's last frame, answering
        // nothing; the session is not resumed by itself (see `lost`).
        if body.get("ref").is_none()
            && body.get("code").and_then(Value::as_u64) == Some(code::KICKED.into())
        {
            self.kicked = true;
            self.emit(Output::ServerError { cmd: None, body });
            return;
        }
        let idx = match body.get("ref").and_then(Value::as_u64) {
            Some(r) => self.pending.iter().position(|p| u64::from(p.req_id) == r),
            None => self
                .pending
                .iter()
                .position(|p| p.owner != Owner::Heartbeat),
        };
        let Some(p) = idx.and_then(|i| self.pending.remove(i)) else {
            self.emit(Output::ServerError { cmd: None, body });
            return;
        };
        match p.owner {
            Owner::User(cmd) => self.emit(Output::ServerError {
                cmd: Some(cmd),
                body,
            }),
            Owner::Heartbeat => {}
            Owner::Resume { by_token } => self.resume_failed(by_token, &body).await,
            Owner::Sync { user } => {
                if user {
                    self.emit(Output::ServerError {
                        cmd: Some("sync"),
                        body,
                    });
                } else {
                    self.emit(Output::event(
                        "synced",
                        vec![("new", json!(p.sync_new)), ("error", body)],
                    ));
                }
                self.on_ready();
            }
        }
    }

    async fn on_reply(&mut self, idx: usize, id: u32, body: Value) {
        let Some(p) = self.pending.get_mut(idx) else {
            return;
        };
        if let Some(pos) = p.expect.iter().position(|e| *e == id) {
            p.expect.remove(pos);
        }
        let error = reply_error(&body);
        // An error reply ends the request even if more replies were expected (a failed 402
        // is not followed by anything else).
        let done = p.expect.is_empty() || error.is_some();
        let owner = p.owner;
        let rtt_ms = p.sent.elapsed().as_millis() as u64;
        match owner {
            Owner::Heartbeat => {
                if done {
                    self.pending.remove(idx);
                }
            }
            Owner::Resume { by_token } => {
                self.pending.remove(idx);
                if error.is_none() && id == ids::LOGIN_RESP {
                    self.logged_in(&body);
                    let via = if by_token { "token" } else { "password" };
                    self.emit(Output::event(
                        "resumed",
                        vec![
                            ("username", json!(self.viewer.username)),
                            ("user_id", json!(self.viewer.user_id)),
                            ("via", json!(via)),
                        ],
                    ));
                    if self.v2 {
                        self.start_sync(false).await;
                    } else {
                        self.on_ready();
                    }
                } else {
                    self.resume_failed(by_token, &body).await;
                }
            }
            Owner::Sync { user } => self.on_sync_page(idx, user, body).await,
            Owner::User(cmd) => {
                let creds = if done {
                    self.pending.remove(idx).and_then(|p| p.creds)
                } else {
                    None
                };
                if error.is_none() {
                    match id {
                        ids::LOGIN_RESP => {
                            self.logged_in(&body);
                            if creds.is_some() {
                                self.creds = creds;
                            }
                        }
                        ids::LOGOUT_RESP => {
                            self.token = None;
                            self.creds = None;
                            self.cursor = None;
                            self.viewer = Viewer {
                                v2: self.v2,
                                ..Viewer::default()
                            };
                        }
                        // Our own sends must not show up again through a later sync.
                        ids::SEND_ACK | ids::GROUP_TEXT_ACK => {
                            if let Some(key) = Dedupe::key_of(&body) {
                                self.dedupe.insert(key);
                            }
                        }
                        _ => {}
                    }
                }
                self.emit(Output::Reply {
                    cmd,
                    id,
                    body,
                    rtt_ms: Some(rtt_ms),
                    extra: vec![],
                });
            }
        }
    }

    fn on_push(&mut self, id: u32, body: Value) {
        match id {
            ids::TEXT_MSG | ids::GROUP_TEXT_PUSH if !self.dedupe.first_time(&body) => {}
            // A pong nobody waits for (a heartbeat given up on): nothing to say.
            ids::PONG => {}
            _ => self.emit(Output::Push {
                id,
                body,
                sync: false,
            }),
        }
    }
}
