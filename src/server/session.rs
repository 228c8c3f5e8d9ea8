//! The protocol side of one connection: turns each request frame into a call of the core and
//! the result into the reply frames of the original protocol (or of v2).
//!
//! Every reply convention of the original lives here (`{code,msg}` for 103/105,
//! `{code,message}` for 212/214, `{"error"}`/`{"message"}` for group management, `{status}`
//! for 311, 99 for P2P failures), next to the v2 frames.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Serialize;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::admission::Unauthenticated;
use super::budget::SlowClose;
use super::hub::ConnHandle;
use super::outbox::Outbound;
use super::sends::{self, Pipeline, Replies, NOT_LOGGED_IN_V2};
use super::shared::ConnShared;
use super::{errors, wire, ServerCtx};
use crate::core::model::{ConnId, GroupPatch, Seq, TokenId};
use crate::core::service::DeliveryOutcome;
use crate::core::{ChatError, Me};
use crate::protocol::messages::{self as m, code, parse};
use crate::protocol::{codec, ids, Frame};

/// The connection can no longer be written to (closed, or its client reads too slowly).
#[derive(Debug)]
pub struct Closed;

pub struct Session {
    ctx: Arc<ServerCtx>,
    shared: Arc<ConnShared>,
    /// Shared, not inline: 8 bytes in every connection's reader future instead of 56, and a
    /// send in flight holds it without copying the two strings.
    me: Option<Arc<Me>>,
    /// The login tokens a logout (106) of this session revokes.
    tokens: Box<[TokenId]>,
    /// The peer's address: the key of login and registration throttling.
    peer: Option<IpAddr>,
    /// Accepted past `server.max_connections`: only told where to go (see `turn_away`).
    overloaded: bool,
    /// While not logged in: its place among the node's connections that are not logged in,
    /// and when it must have logged in (see [`super::admission`]). Boxed: eight bytes for a
    /// logged-in connection.
    pre_login: Option<Box<PreLogin>>,
}

/// A connection that has not logged in (yet, or again after its logout).
struct PreLogin {
    _slot: Unauthenticated,
    deadline: Instant,
}

impl Session {
    /// `peer`: the client's address, the key of login and registration throttling.
    pub fn new(ctx: Arc<ServerCtx>, shared: Arc<ConnShared>, peer: Option<IpAddr>) -> Self {
        Session {
            ctx,
            shared,
            me: None,
            tokens: Box::default(),
            peer,
            overloaded: false,
            pre_login: None,
        }
    }

    /// The connection's id (kept once, in the shared state).
    fn conn_id(&self) -> ConnId {
        self.shared.conn_id
    }

    /// Counts the connection among those not logged in and starts its login deadline; a
    /// connection the limits do not admit is told why (99 code 15) and must close.
    pub fn admit(&mut self) -> Result<(), Closed> {
        let settings = self.ctx.settings();
        match self.ctx.admission.admit(self.peer, settings.admission()) {
            Ok(slot) => {
                self.pre_login = Some(Box::new(PreLogin {
                    _slot: slot,
                    deadline: Instant::now() + settings.login_timeout,
                }));
                Ok(())
            }
            Err(refused) => {
                debug!(conn_id = self.conn_id(), peer = ?self.peer, %refused, "connection not admitted");
                self.farewell(code::NODE_FULL, &refused.to_string());
                Err(Closed)
            }
        }
    }

    /// When the connection must have logged in; `None` once it is.
    pub fn login_deadline(&self) -> Option<Instant> {
        self.pre_login.as_ref().map(|p| p.deadline)
    }

    pub fn ctx(&self) -> &Arc<ServerCtx> {
        &self.ctx
    }

    /// The state this connection shares with the hub and its writer.
    pub fn shared(&self) -> &Arc<ConnShared> {
        &self.shared
    }

    /// Marks this connection as over the node's capacity.
    pub fn set_overloaded(&mut self) {
        self.overloaded = true;
    }

    fn v2(&self) -> bool {
        self.shared.is_v2()
    }

    /// Queues a frame, waiting (bounded by the write timeout) while the queue is full.
    async fn send_raw(&self, frame: Outbound) -> Result<(), Closed> {
        let timeout = self.ctx.settings().write_timeout;
        match tokio::time::timeout(timeout, self.shared.outbox.push(frame)).await {
            Ok(Ok(())) => {
                // Past the node's budget, the closes happen here and now, before this reader
                // produces another reply (the enforcer task does it for pushes).
                if self.ctx.budget.is_over() {
                    super::budget::enforce_once(&self.ctx);
                }
                Ok(())
            }
            Ok(Err(_)) => Err(Closed),
            Err(_) => {
                self.replies_not_read();
                Err(Closed)
            }
        }
    }

    /// Waits (bounded by the write timeout) until the write queue has room for a reply (see
    /// `Outbox::reply_room`); the reader calls it before handling a request.
    pub async fn reply_room(&self) -> Result<(), Closed> {
        let timeout = self.ctx.settings().write_timeout;
        match tokio::time::timeout(timeout, self.shared.outbox.reply_room_free()).await {
            Ok(()) if !self.shared.is_closing() => Ok(()),
            Ok(()) => Err(Closed),
            Err(_) => {
                self.replies_not_read();
                Err(Closed)
            }
        }
    }

    /// Closes the connection as a slow consumer: its replies were not read.
    fn replies_not_read(&self) {
        if self.shared.request_close(
            code::SLOW_CONSUMER,
            "slow consumer: replies were not read within the write timeout",
        ) {
            self.ctx
                .hub
                .stats
                .slow_consumers
                .fetch_add(1, Ordering::Relaxed);
            self.ctx.budget.count_close(SlowClose::ReplyWait);
        }
    }

    async fn send<T: Serialize>(&self, id: u32, body: &T) -> Result<(), Closed> {
        // v1 connections never get an id outside the original table (`docs/protocol.md` §3.2).
        if !self.v2() && !ids::is_v1(id) {
            return Ok(());
        }
        let json = serde_json::to_vec(body).expect("responses serialise");
        self.send_raw(Outbound {
            frame: codec::encode(id, &json),
            seq: 0,
        })
        .await
    }

    /// 99 error; `reference` is added for v2 connections.
    async fn send_error(
        &self,
        request: u32,
        code: u32,
        message: impl Into<String>,
    ) -> Result<(), Closed> {
        self.send(
            ids::ERROR,
            &m::ErrorResp::answering(request, self.v2(), code, message),
        )
        .await
    }

    /// Queues a last error frame without waiting (the connection is about to close).
    pub fn farewell(&self, code: u32, message: &str) {
        let body = serde_json::to_vec(&m::ErrorResp {
            code,
            message: message.to_string(),
            reference: None,
        })
        .expect("serialises");
        let _ = self.shared.outbox.try_push(Outbound {
            frame: codec::encode(ids::ERROR, &body),
            seq: 0,
        });
    }

    /// Queues a ready-made frame without waiting (the connection is about to close).
    pub fn push_frame(&self, frame: bytes::Bytes) {
        let _ = self.shared.outbox.try_push(Outbound { frame, seq: 0 });
    }

    /// Removes this connection from the hub (no more pushes) and returns who was logged in.
    pub fn detach_from_hub(&mut self) -> Option<Arc<Me>> {
        let me = self.me.take()?;
        self.ctx.hub.detach(me.id, self.conn_id());
        self.shared.end_login();
        Some(me)
    }

    /// Handles one request frame. `Err` means the connection must close.
    pub async fn handle(&mut self, frame: Frame) -> Result<(), Closed> {
        self.ctx.metrics.frame_in(frame.id);
        // A drained node serves the sessions it still has until the drain closes them, and
        // nobody new: a connection not logged in is sent elsewhere at its next frame.
        if self.overloaded || (self.me.is_none() && self.ctx.is_draining()) {
            return self.turn_away(frame).await;
        }
        let body = &frame.body[..];
        match frame.id {
            ids::PING => {
                self.send_raw(Outbound {
                    frame: codec::encode(ids::PONG, b"pong"),
                    seq: 0,
                })
                .await
            }
            ids::HELLO_REQ => self.hello(body).await,
            ids::REGISTER_REQ => self.register(body).await,
            ids::LOGIN_REQ => self.login(body).await,
            ids::LOGOUT_REQ => self.logout().await,
            ids::TEXT_MSG | ids::GROUP_TEXT_REQ => {
                self.send_alone(frame.id, frame.body.clone()).await
            }
            ids::HISTORY_REQ => self.history(body).await,
            ids::RELATIONS_REQ => self.relations().await,
            ids::CREATE_GROUP_REQ
            | ids::JOIN_GROUP_REQ
            | ids::LEAVE_GROUP_REQ
            | ids::GROUP_MEMBERS_REQ
            | ids::MY_GROUPS_REQ
            | ids::UPDATE_GROUP_REQ
            | ids::SET_ROLE_REQ
            | ids::REMOVE_MEMBER_REQ
            | ids::GROUP_DETAILS_REQ
            | ids::GROUP_HISTORY_REQ => self.group_op(frame.id, body).await,
            ids::SYNC_REQ if self.v2() => self.sync(body).await,
            other => {
                // The original reads, logs and discards unknown ids; v2 clients are told.
                debug!(conn_id = self.conn_id(), id = other, "unknown message id");
                if self.v2() {
                    self.send_error(
                        other,
                        code::UNKNOWN_ID,
                        format!("unknown message id {other}"),
                    )
                    .await
                } else {
                    Ok(())
                }
            }
        }
    }

    /// This connection came in past `server.max_connections`, or to a drained node: a v2
    /// client is told where to go (401, then 406 "overloaded" or "draining" with the
    /// least-loaded peers); a v1 client gets a reason (99 code 15, or 13 when draining).
    /// Either way the connection closes once that is written.
    async fn turn_away(&mut self, frame: Frame) -> Result<(), Closed> {
        let draining = self.ctx.is_draining();
        let farewell = if frame.id == ids::HELLO_REQ {
            self.hello(&frame.body).await?;
            let peers = self.ctx.core.nodes().await.unwrap_or_default();
            let reason = if draining { "draining" } else { "overloaded" };
            super::drain::redirect_frame(reason, &peers, self.ctx.core.node_id())
        } else {
            let (code, message) = if draining {
                (
                    code::SHUTTING_DOWN,
                    "this node is draining: connect to another node",
                )
            } else {
                (
                    code::NODE_FULL,
                    "this node is full: connect to another node",
                )
            };
            let body = serde_json::to_vec(&m::ErrorResp {
                code,
                message: message.into(),
                reference: None,
            })
            .expect("serialises");
            codec::encode(ids::ERROR, &body)
        };
        self.shared.close_after_flush(Some(Outbound {
            frame: farewell,
            seq: 0,
        }));
        Err(Closed)
    }

    async fn hello(&mut self, body: &[u8]) -> Result<(), Closed> {
        let req: m::HelloReq = match parse(body) {
            Ok(r) => r,
            Err(e) => {
                return self
                    .send_error(ids::HELLO_REQ, code::MALFORMED, e.to_string())
                    .await
            }
        };
        if req.version < 2 {
            return self
                .send_error(
                    ids::HELLO_REQ,
                    code::INVALID,
                    "hello: version must be 2 (or higher, which is answered with 2)",
                )
                .await;
        }
        self.shared.v2.store(true, Ordering::Relaxed);
        let s = self.ctx.settings();
        let resp = m::HelloResp {
            version: 2,
            server: format!("chat-zinx/{}", env!("CARGO_PKG_VERSION")),
            node_id: self.ctx.core.node_id().to_string(),
            max_body: s.max_body,
            idle_timeout_s: s.idle_timeout.as_secs(),
            features: ["ack", "sync", "redirect", "token", "dedupe", "multi-device"]
                .map(String::from)
                .to_vec(),
        };
        debug!(conn_id = self.conn_id(), client = %req.client, "hello");
        self.send(ids::HELLO_RESP, &resp).await
    }

    // -- accounts ------------------------------------------------------------------------------

    async fn register(&mut self, body: &[u8]) -> Result<(), Closed> {
        let reply = |code: u32, msg: &str| m::CodeMsg::error(code, msg);
        let req: m::RegisterReq = match parse(body) {
            Ok(r) => r,
            Err(_) => {
                return self
                    .send(ids::REGISTER_RESP, &reply(1, "请求数据格式错误"))
                    .await
            }
        };
        if req.username.is_empty() || req.password.is_empty() {
            return self
                .send(ids::REGISTER_RESP, &reply(2, "用户名和密码不能为空"))
                .await;
        }
        if req.email.is_empty() {
            return self
                .send(ids::REGISTER_RESP, &reply(2, "邮箱不能为空"))
                .await;
        }
        match self
            .ctx
            .core
            .register_from(self.peer, &req.username, &req.password, &req.email)
            .await
        {
            Ok(user) => {
                self.ctx.metrics.registered();
                self.send(
                    ids::REGISTER_RESP,
                    &m::CodeMsg {
                        code: 0,
                        data: Some(m::RegisterData::from(&user)),
                        msg: "注册成功".into(),
                    },
                )
                .await
            }
            Err(ChatError::UsernameTaken) => {
                self.send(ids::REGISTER_RESP, &reply(3, "用户已存在")).await
            }
            Err(e) => {
                self.send(
                    ids::REGISTER_RESP,
                    &reply(4, &format!("注册失败: {}", errors::text(&e))),
                )
                .await
            }
        }
    }

    async fn login(&mut self, body: &[u8]) -> Result<(), Closed> {
        let reply = |code: u32, msg: &str| m::CodeMsg::error(code, msg);
        let req: m::LoginReq = match parse(body) {
            Ok(r) => r,
            Err(_) => {
                return self
                    .send(ids::LOGIN_RESP, &reply(1, "请求数据格式错误"))
                    .await
            }
        };
        let result = if !req.token.is_empty() {
            self.ctx.core.login_token(&req.token).await
        } else if req.username.is_empty() || req.password.is_empty() {
            return self
                .send(ids::LOGIN_RESP, &reply(2, "用户名或密码不能为空"))
                .await;
        } else {
            self.ctx
                .core
                .login_password_from(self.peer, &req.username, &req.password)
                .await
        };
        let ok = match result {
            Ok(ok) => ok,
            Err(e) => {
                self.ctx.metrics.login_failed();
                let (code, msg) = match &e {
                    ChatError::UnknownUser => (3, "用户不存在".to_string()),
                    ChatError::WrongPassword => (4, "密码错误".to_string()),
                    // Not the store's "try again" (code 5): a token that will never work.
                    ChatError::TooManyAttempts { .. } => {
                        (6, format!("登录失败: {}", errors::text(&e)))
                    }
                    ChatError::BadToken(_) => {
                        (code::BAD_TOKEN, format!("登录失败: {}", errors::text(&e)))
                    }
                    other => (5, format!("登录失败: {}", errors::text(other))),
                };
                return self.send(ids::LOGIN_RESP, &reply(code, &msg)).await;
            }
        };
        // Re-login on the same connection (as anyone) ends the previous session first.
        self.end_session().await;
        let me = Me::from(&ok.user);
        self.tokens = ok.tokens.as_slice().into();
        // Logged in: its place among those that are not is free before the client hears so
        // (a client that connects again right after its login reply finds the place free).
        self.pre_login = None;
        self.send(
            ids::LOGIN_RESP,
            &m::CodeMsg {
                code: 0,
                data: Some(m::LoginData {
                    id: ok.user.id,
                    user_uuid: ok.user.uuid.clone(),
                    username: ok.user.username.clone(),
                    email: ok.user.email.clone(),
                    avatar: ok.user.avatar.clone(),
                    last_login: m::rfc3339(ok.previous_login),
                    token: ok.token.clone(),
                }),
                msg: "登录成功".into(),
            },
        )
        .await?;
        self.ctx.metrics.logged_in();
        self.start_session(me, &req.device).await
    }

    /// Binds the connection to the user: live pushes, presence, then the backlog.
    async fn start_session(&mut self, me: Me, device: &str) -> Result<(), Closed> {
        let core = &self.ctx.core;
        let groups = match core.group_ids_of(&me).await {
            Ok(g) => g,
            Err(e) => {
                warn!(user_id = me.id, error = %e, "cannot load the user's groups; group pushes start at the next login");
                Vec::new()
            }
        };
        self.shared.start_recording();
        self.ctx.hub.attach(
            me.id,
            groups,
            ConnHandle {
                shared: self.shared.clone(),
            },
        );
        self.me = Some(Arc::new(me.clone()));
        let device = if device.is_empty() { "default" } else { device };
        if let Err(e) = core.open_session(&me, self.conn_id(), device).await {
            warn!(user_id = me.id, error = %e, "presence registration failed; the user may show offline elsewhere");
        }
        info!(
            conn_id = self.conn_id(),
            user_id = me.id,
            peer = self.peer.map(tracing::field::display),
            "logged in"
        );
        // Page by page: a page is queued once the connection has room for it (its byte
        // budget), so a large backlog is never held whole. Less what live pushes brought since
        // the hub attach; from now on a live push of a backlog message is left out
        // (`ChatCore::next_login_backlog_page`).
        let streamed = Box::pin(self.stream_backlog(&me)).await;
        core.backlog_done(me.id, self.conn_id());
        let (seen_mark, upto) = match streamed {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => {
                warn!(user_id = me.id, error = %e, "cannot read the backlog; the client gets the rest at its next login or sync");
                return Ok(());
            }
            Err(Closed) => return Err(Closed),
        };
        if let Err(e) = core.settle_backlog_at(&me, seen_mark, upto).await {
            warn!(user_id = me.id, error = %e, "cannot save the delivery cursor; some messages repeat at the next login");
        }
        Ok(())
    }

    /// Queues the login backlog page by page; returns the point to settle the delivery
    /// cursor at (`Ok(Err)` when the store failed on the way: the cursor stays).
    async fn stream_backlog(
        &self,
        me: &Me,
    ) -> Result<crate::core::error::ChatResult<(Option<Seq>, Seq)>, Closed> {
        let core = &self.ctx.core;
        let mut reader = match core.open_backlog(me).await {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        loop {
            let page = match core
                .next_login_backlog_page(self.conn_id(), &mut reader)
                .await
            {
                Ok(p) => p,
                Err(e) => return Ok(Err(e)),
            };
            if page.is_empty() {
                return Ok(Ok((reader.seen_mark, reader.upto)));
            }
            for msg in &page {
                self.send_raw(Outbound {
                    frame: wire::push_frame(msg),
                    seq: msg.seq,
                })
                .await?;
            }
        }
    }

    /// Unbinds the connection from its user (logout, re-login).
    async fn end_session(&mut self) {
        if let Some(me) = self.detach_from_hub() {
            let outcome = DeliveryOutcome {
                written_upto: self.shared.written.load(Ordering::Relaxed),
                unwritten_from: None,
            };
            self.ctx
                .core
                .close_session(&me, self.conn_id(), outcome)
                .await;
        }
    }

    async fn logout(&mut self) -> Result<(), Closed> {
        let Some(me) = self.me.clone() else {
            return self
                .send(ids::LOGOUT_RESP, &m::CodeMsg::error(1, "用户未登录"))
                .await;
        };
        // Revoked first: a logout whose token still works would be a lie. The session stays
        // if that fails, so the client can log out again.
        if let Err(e) = self.ctx.core.revoke_tokens(&me, &self.tokens).await {
            let text = format!("登出失败: {}", errors::text(&e));
            return self
                .send(ids::LOGOUT_RESP, &m::CodeMsg::error(2, &text))
                .await;
        }
        self.tokens = Box::default();
        self.end_session().await;
        self.send(ids::LOGOUT_RESP, &m::CodeMsg::error(0, "已登出"))
            .await?;
        // Not logged in again: counted as such, with a new login deadline.
        self.admit()
    }

    // -- sends (pipelined, see `sends`) -----------------------------------------------------

    /// Whether this frame is a send that may overlap with the connection's other sends.
    pub fn can_pipeline(&self, id: u32) -> bool {
        !self.overloaded && self.me.is_some() && (id == ids::TEXT_MSG || id == ids::GROUP_TEXT_REQ)
    }

    /// Starts a send (208 or 310) without waiting for it; see [`sends`]. The pipeline is the
    /// reader's, not the session's: its futures are `Send` but not `Sync`.
    pub fn start_send(&self, pipeline: &mut Pipeline, frame: Frame) {
        self.ctx.metrics.frame_in(frame.id);
        let (ctx, conn_id, me, v2) = (self.ctx.clone(), self.conn_id(), self.me.clone(), self.v2());
        let group = frame.id == ids::GROUP_TEXT_REQ;
        pipeline.start(move |turn| {
            if group {
                Box::pin(sends::group(ctx, conn_id, me, v2, frame.body, turn))
            } else {
                Box::pin(sends::direct(ctx, conn_id, me, v2, frame.body, turn))
            }
        });
    }

    /// Queues the replies of a finished send.
    pub async fn send_replies(&self, replies: Replies) -> Result<(), Closed> {
        for frame in replies.frames {
            self.send_raw(frame).await?;
        }
        Ok(())
    }

    /// Waits for every send in flight and queues their replies (a barrier before any other
    /// request, and before the connection ends).
    pub async fn settle_sends(&self, pipeline: &mut Pipeline) -> Result<(), Closed> {
        let mut result = Ok(());
        while pipeline.in_flight() > 0 {
            let replies = pipeline.next_done().await;
            if result.is_ok() {
                result = self.send_replies(replies).await;
            }
        }
        result
    }

    /// A send handled on its own (not logged in: the refusal in the original's order).
    async fn send_alone(&mut self, id: u32, body: bytes::Bytes) -> Result<(), Closed> {
        let (ctx, me, v2) = (self.ctx.clone(), self.me.clone(), self.v2());
        let turn = sends::Turns::first();
        let replies = if id == ids::GROUP_TEXT_REQ {
            sends::group(ctx, self.conn_id(), me, v2, body, turn).await
        } else {
            sends::direct(ctx, self.conn_id(), me, v2, body, turn).await
        };
        self.send_replies(replies).await
    }

    async fn history(&mut self, body: &[u8]) -> Result<(), Closed> {
        let resp = |code: u32, message: &str| m::HistoryResp {
            code,
            message: message.into(),
            data: Vec::new(),
        };
        let Some(me) = self.me.clone() else {
            return self
                .send(ids::HISTORY_RESP, &resp(1, "用户未登录或会话无效"))
                .await;
        };
        let req: m::HistoryReq = match parse(body) {
            Ok(r) => r,
            Err(_) => return self.send(ids::HISTORY_RESP, &resp(2, "请求格式错误")).await,
        };
        if req.target_user_uuid.is_empty() && req.target_username.is_empty() {
            return self
                .send(
                    ids::HISTORY_RESP,
                    &resp(3, "必须提供目标用户的UUID或用户名"),
                )
                .await;
        }
        let limit = match req.limit {
            l if l <= 0 => 50,
            l if l > 200 => 200,
            l => l as usize,
        };
        match self
            .ctx
            .core
            .history(&me, &req.target_user_uuid, &req.target_username, limit)
            .await
        {
            Ok(messages) => {
                // The newest messages that fit in the reply cap (at least one), oldest first.
                let mut data: Vec<_> = messages.iter().rev().map(wire::history_item).collect();
                let fit = fitting(&data, self.ctx.settings().max_reply_bytes);
                data.truncate(fit);
                data.reverse();
                self.send(
                    ids::HISTORY_RESP,
                    &m::HistoryResp {
                        code: 0,
                        message: "成功".into(),
                        data,
                    },
                )
                .await
            }
            Err(ChatError::NoSuchTarget(_)) => {
                let text = if req.target_username.is_empty() {
                    format!("目标用户UUID {} 不存在", req.target_user_uuid)
                } else {
                    format!("目标用户 {} 不存在", req.target_username)
                };
                self.send(ids::HISTORY_RESP, &resp(3, &text)).await
            }
            Err(e) => {
                warn!(error = %e, "history failed");
                self.send(ids::HISTORY_RESP, &resp(4, "获取历史消息失败"))
                    .await
            }
        }
    }

    async fn relations(&mut self) -> Result<(), Closed> {
        let Some(me) = self.me.clone() else {
            return self
                .send(
                    ids::RELATIONS_RESP,
                    &m::CodeMessage::<Option<Vec<String>>> {
                        code: 1,
                        message: "未登录用户".into(),
                        data: None,
                    },
                )
                .await;
        };
        let resp = match self.ctx.core.relations(&me).await {
            Ok(peers) => m::CodeMessage {
                code: 0,
                message: "成功".into(),
                data: Some(peers.iter().map(|p| p.to_string()).collect::<Vec<_>>()),
            },
            Err(e) => {
                warn!(error = %e, "relations failed");
                m::CodeMessage {
                    code: 2,
                    message: "获取聊天关系失败".into(),
                    data: None,
                }
            }
        };
        self.send(ids::RELATIONS_RESP, &resp).await
    }

    // -- groups --------------------------------------------------------------------------------

    async fn group_op(&mut self, id: u32, body: &[u8]) -> Result<(), Closed> {
        let resp_id = id + 1;
        let Some(me) = self.me.clone() else {
            return self.send(resp_id, &err_body("用户未登录")).await;
        };
        let malformed = if id == ids::GROUP_HISTORY_REQ {
            "请求格式错误"
        } else {
            "请求数据格式错误"
        };
        let core = &self.ctx.core;
        macro_rules! req {
            ($t:ty) => {
                match parse::<$t>(body) {
                    Ok(r) => r,
                    Err(_) => return self.send(resp_id, &err_body(malformed)).await,
                }
            };
        }
        match id {
            ids::CREATE_GROUP_REQ => {
                let r = req!(m::CreateGroupReq);
                match core
                    .create_group(&me, &r.name, &r.description, &r.avatar)
                    .await
                {
                    Ok(g) => self.send(resp_id, &m::CreatedGroup::from(&g)).await,
                    Err(e @ ChatError::Invalid(_)) => {
                        self.send(
                            resp_id,
                            &err_body(&format!("创建群组失败: {}", errors::text(&e))),
                        )
                        .await
                    }
                    Err(e) => {
                        self.send(
                            resp_id,
                            &err_body(&format!(
                                "创建群组失败: failed to create group: {}",
                                errors::text(&e)
                            )),
                        )
                        .await
                    }
                }
            }
            ids::JOIN_GROUP_REQ => {
                let r = req!(m::GroupIdReq);
                match core.join_group(&me, r.group_id).await {
                    Ok(()) => self.send(resp_id, &ok_body("成功加入群组")).await,
                    Err(e) => {
                        self.send(
                            resp_id,
                            &err_body(&format!("加入群组失败: {}", errors::text(&e))),
                        )
                        .await
                    }
                }
            }
            ids::LEAVE_GROUP_REQ => {
                let r = req!(m::GroupIdReq);
                match core.leave_group(&me, r.group_id).await {
                    Ok(()) => self.send(resp_id, &ok_body("成功退出群组")).await,
                    Err(ChatError::NotMember) => {
                        self.send(
                            resp_id,
                            &err_body("退出群组失败: user is not a member of this group"),
                        )
                        .await
                    }
                    Err(e) => {
                        self.send(
                            resp_id,
                            &err_body(&format!("退出群组失败: {}", errors::text(&e))),
                        )
                        .await
                    }
                }
            }
            ids::GROUP_MEMBERS_REQ => {
                let r = req!(m::GroupIdReq);
                match core.members(&me, r.group_id).await {
                    Ok(list) => {
                        let members: Vec<m::MemberItem> = list
                            .iter()
                            .map(|(mem, user, online)| m::MemberItem::new(mem, user, *online))
                            .collect();
                        let total = members.len() as u64;
                        self.send(
                            resp_id,
                            &m::MembersResp {
                                group_id: r.group_id,
                                members,
                                total,
                            },
                        )
                        .await
                    }
                    Err(ChatError::NotMember) => {
                        self.send(resp_id, &err_body("您不是该群组的成员")).await
                    }
                    Err(e) => {
                        self.send(
                            resp_id,
                            &err_body(&format!("获取群组成员失败: {}", errors::text(&e))),
                        )
                        .await
                    }
                }
            }
            ids::MY_GROUPS_REQ => match core.my_groups(&me).await {
                Ok(groups) => {
                    let groups: Vec<m::MyGroupItem> = groups
                        .into_iter()
                        .map(|g| m::MyGroupItem {
                            id: g.id,
                            name: g.name,
                            member_count: g.member_count,
                            description: g.description,
                        })
                        .collect();
                    let total = groups.len() as u64;
                    self.send(resp_id, &m::MyGroupsResp { groups, total }).await
                }
                Err(e) => {
                    self.send(
                        resp_id,
                        &err_body(&format!("获取群组列表失败: {}", errors::text(&e))),
                    )
                    .await
                }
            },
            ids::UPDATE_GROUP_REQ => {
                let r = req!(m::UpdateGroupReq);
                let some = |s: String| (!s.is_empty()).then_some(s);
                let patch = GroupPatch {
                    name: some(r.name),
                    description: some(r.description),
                    avatar: some(r.avatar),
                };
                match core.update_group(&me, r.group_id, patch).await {
                    Ok(_) => self.send(resp_id, &ok_body("群组信息更新成功")).await,
                    Err(e) => {
                        self.send(
                            resp_id,
                            &err_body(&format!("更新群组信息失败: {}", errors::text(&e))),
                        )
                        .await
                    }
                }
            }
            ids::SET_ROLE_REQ => {
                let r = req!(m::SetRoleReq);
                match core
                    .set_role(&me, r.group_id, r.target_user_id, &r.new_role)
                    .await
                {
                    Ok(()) => self.send(resp_id, &ok_body("成员角色设置成功")).await,
                    Err(e) => {
                        self.send(
                            resp_id,
                            &err_body(&format!("设置成员角色失败: {}", errors::text(&e))),
                        )
                        .await
                    }
                }
            }
            ids::REMOVE_MEMBER_REQ => {
                let r = req!(m::RemoveMemberReq);
                match core.remove_member(&me, r.group_id, r.target_user_id).await {
                    Ok(()) => self.send(resp_id, &ok_body("成员已从群组中移除")).await,
                    Err(e) => {
                        self.send(
                            resp_id,
                            &err_body(&format!("移除成员失败: {}", errors::text(&e))),
                        )
                        .await
                    }
                }
            }
            ids::GROUP_DETAILS_REQ => {
                let r = req!(m::GroupIdReq);
                match core.group_details(&me, r.group_id).await {
                    Ok(g) => self.send(resp_id, &m::GroupDetails::from(&g)).await,
                    Err(ChatError::NotMember) => {
                        self.send(resp_id, &err_body("您不是该群组的成员")).await
                    }
                    Err(e) => {
                        self.send(
                            resp_id,
                            &err_body(&format!("获取群组详情失败: {}", errors::text(&e))),
                        )
                        .await
                    }
                }
            }
            ids::GROUP_HISTORY_REQ => {
                let r = req!(m::GroupHistoryReq);
                let limit = match r.limit {
                    l if l <= 0 => 20,
                    l if l > 100 => 100,
                    l => l as usize,
                };
                match core.group_history(&me, r.group_id, r.last_id, limit).await {
                    Ok(page) => {
                        // Newest first: the newest that fit in the reply cap (at least one);
                        // the client pages on from the smallest id it got.
                        let mut messages: Vec<_> =
                            page.messages.iter().map(wire::group_history_item).collect();
                        let fit = fitting(&messages, self.ctx.settings().max_reply_bytes);
                        let has_more = page.has_more || fit < messages.len();
                        messages.truncate(fit);
                        self.send(
                            resp_id,
                            &m::GroupHistoryResp {
                                group_id: r.group_id,
                                messages,
                                has_more,
                            },
                        )
                        .await
                    }
                    Err(ChatError::NotMember) => {
                        let text = format!(
                            "获取历史消息失败：user {} is not a member of group {}",
                            me.id, r.group_id
                        );
                        self.send(resp_id, &err_body(&text)).await
                    }
                    Err(e) => {
                        self.send(
                            resp_id,
                            &err_body(&format!("获取历史消息失败：{}", errors::text(&e))),
                        )
                        .await
                    }
                }
            }
            _ => Ok(()),
        }
    }

    // -- v2 sync -------------------------------------------------------------------------------

    async fn sync(&mut self, body: &[u8]) -> Result<(), Closed> {
        let Some(me) = self.me.clone() else {
            return self
                .send_error(ids::SYNC_REQ, code::NOT_LOGGED_IN, NOT_LOGGED_IN_V2)
                .await;
        };
        let req: m::SyncReq = match parse(body) {
            Ok(r) => r,
            Err(e) => {
                return self
                    .send_error(ids::SYNC_REQ, code::MALFORMED, e.to_string())
                    .await
            }
        };
        let cursor = if req.cursor.is_empty() {
            None
        } else {
            match decode_cursor(&req.cursor) {
                Some(c) => Some(c),
                None => {
                    return self
                        .send_error(
                            ids::SYNC_REQ,
                            code::MALFORMED,
                            errors::text(&ChatError::BadCursor),
                        )
                        .await
                }
            }
        };
        let limit = if req.limit <= 0 {
            100
        } else {
            req.limit as usize
        };
        // The page stops before the item that would take it past the reply cap (the first
        // item always goes): the core then says `has_more` and the cursor is the last item's.
        let cap = self.ctx.settings().max_reply_bytes;
        let mut used = 0usize;
        let mut fits = |msg: &crate::core::model::StoredMessage| {
            let n = json_len(&wire::push_of(msg).1) + 1;
            let ok = used == 0 || used + n <= cap;
            if ok {
                used += n;
            }
            ok
        };
        match self
            .ctx
            .core
            .sync_within(&me, cursor, limit, &mut fits)
            .await
        {
            Ok(page) => {
                let messages = page
                    .messages
                    .iter()
                    .map(|msg| wire::push_of(msg).1)
                    .collect();
                self.send(
                    ids::SYNC_RESP,
                    &m::SyncResp {
                        messages,
                        cursor: encode_cursor(page.cursor),
                        has_more: page.has_more,
                    },
                )
                .await
            }
            Err(e) => {
                let (c, t) = errors::code_and_text(&e);
                self.send_error(ids::SYNC_REQ, c, t).await
            }
        }
    }
}

/// How many of `items` (in the order given) fit in a reply of `cap` bytes of JSON: at least one,
/// then as long as their encodings (and separating commas) stay within `cap`.
fn fitting<T: Serialize>(items: &[T], cap: usize) -> usize {
    let mut used = 0usize;
    for (i, item) in items.iter().enumerate() {
        used += json_len(item) + 1;
        if i > 0 && used > cap {
            return i;
        }
    }
    items.len()
}

/// The length of `value` encoded as JSON, without building the encoding.
fn json_len<T: Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, value);
    c.0
}

fn err_body(text: &str) -> m::ErrorBody {
    m::ErrorBody { error: text.into() }
}

fn ok_body(text: &str) -> m::MessageBodyResp {
    m::MessageBodyResp {
        message: text.into(),
    }
}

/// Sync cursors are opaque to clients; today they wrap a log position.
pub fn encode_cursor(seq: Seq) -> String {
    format!("c{seq}")
}

pub fn decode_cursor(s: &str) -> Option<Seq> {
    s.strip_prefix('c')?.parse().ok()
}
