//! The session: one task that owns the connection and reacts to three things — a frame (or the
//! end of the connection), an input line, and a timer (request timeouts, heartbeat, reconnect,
//! `/wait` and `/sleep`).
//!
//! Everything lives in one task on purpose: which request a reply answers, what was already
//! shown (de-duplication), the sync cursor and the resume token are all plain fields, with no
//! locks and no ordering questions between tasks. The reader task of the connection and the
//! stdin thread only feed bounded channels.
//!
//! Replies are matched to requests by id, first come first served: the daemon answers the
//! frames of one connection in order (`docs/protocol.md` §2.5), so the oldest request waiting
//! for an id is the one it answers. Sends are matched by their `client_msg_id` echo when
//! there is one.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::backoff;
use super::commands::{self, Command, RequestCtx};
use super::connection::{Connection, Inbound};
use super::dedupe::{self, Dedupe};
use super::render::{self, body_value, reply_error, Output, Viewer};

use crate::protocol::messages::rfc3339;

/// Milliseconds since the Unix epoch, by this machine's clock.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
use crate::protocol::{ids, Frame};

/// The heartbeat of the original client; shortened when the server's idle timeout is short.
const PING_EVERY: Duration = Duration::from_secs(30);
/// How long to wait for the 401 of a Hello before assuming a server that ignores it (the
/// original server silently drops unknown ids).
const HELLO_WAIT: Duration = Duration::from_secs(3);
/// How often a v2 send is re-sent after reconnects before it is reported as failed (a message
/// that kills the connection every time must not be retried forever).
const MAX_RESENDS: u32 = 3;
/// Upper bound on sync pages fetched in one go, against a server that always says `has_more`.
const MAX_SYNC_PAGES: u32 = 10_000;

/// Settings of a session (from the command line).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub json: bool,
    /// Behave as the original v1 client: no Hello, original frames only.
    pub v1: bool,
    pub timeout: Duration,
    /// Commands run one after another, each waiting for its reply (scripts, pipes, `-e`);
    /// otherwise replies and pushes are printed whenever they come (a terminal).
    pub sequential: bool,
}

/// One input: a line typed or scripted, or a command built by the program (`--user` login).
#[derive(Debug)]
pub(crate) enum Item {
    Line(String),
    Command(Command),
}

/// Where commands come from: queued items first (`-e`, auto-login), then stdin lines if any.
pub(crate) struct Input {
    pub queued: VecDeque<Item>,
    pub stdin: Option<mpsc::Receiver<String>>,
}

impl Input {
    /// The next item; `None` at the end. Cancel-safe: the queue pop happens on the first poll,
    /// which completes at once, and a channel receive is cancel-safe.
    async fn next(&mut self) -> Option<Item> {
        if let Some(item) = self.queued.pop_front() {
            return Some(item);
        }
        match &mut self.stdin {
            Some(rx) => rx.recv().await.map(Item::Line),
            None => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// A command of the user; its replies are shown.
    User(&'static str),
    /// A heartbeat ping: its pong is silent, its absence means a dead connection.
    Heartbeat,
    /// The login that resumes the session after a reconnect.
    Resume { by_token: bool },
    /// A chain of 403 pages; `user`: started by `/sync` (else after a resume).
    Sync { user: bool },
}

#[derive(Debug)]
struct Pending {
    owner: Owner,
    req_id: u32,
    /// Kept for v2 sends, which are re-sent after a reconnect (the server drops the duplicate by
    /// `client_msg_id` if the first copy made it).
    body: Vec<u8>,
    expect: Vec<u32>,
    client_msg_id: Option<String>,
    /// Credentials of a `/login`, remembered on success for a v1 resume.
    creds: Option<(String, String)>,
    sent: Instant,
    deadline: Instant,
    /// New messages shown so far by a sync chain, and its pages.
    sync_new: u64,
    sync_pages: u32,
    /// Times this send was re-sent after a reconnect.
    resends: u32,
}

/// What holds back the next command in sequential mode.
#[derive(Debug)]
enum Blocker {
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

enum Event {
    Inbound(Inbound),
    Input(Option<Item>),
    Tick,
}

pub(crate) struct Session {
    cfg: Config,
    addrs: Vec<String>,
    addr_idx: usize,
    conn: Option<Connection>,
    /// The current (or last) connection said Hello and got a 401.
    v2: bool,
    ping_every: Duration,
    next_ping: Option<Instant>,
    reconnect_at: Option<Instant>,
    attempt: u32,
    ever_connected: bool,
    /// Sequential mode gives up when no connection could be made by then.
    initial_deadline: Option<Instant>,
    /// Connected, and the resume (login, sync) is over.
    ready: bool,
    pending: VecDeque<Pending>,
    /// v2 sends in flight when the connection dropped, re-sent once the session is resumed.
    resend: Vec<Pending>,
    blocker: Option<Blocker>,
    /// A blocked command to run now that the connection is ready.
    deferred: Option<Command>,
    /// Output lines per id / event name not yet consumed by a `/wait`.
    arrivals: HashMap<String, u64>,
    dedupe: Dedupe,
    cursor: Option<String>,
    token: Option<String>,
    creds: Option<(String, String)>,
    viewer: Viewer,
    /// A `/msg` or `/groupmsg` without text, waiting for its text line.
    prompt: Option<Command>,
    failures: u32,
    quit: bool,
}

impl Session {
    pub(crate) fn new(cfg: Config, addrs: Vec<String>) -> Self {
        let addrs = if addrs.is_empty() {
            vec!["127.0.0.1:9000".to_string()]
        } else {
            addrs
        };
        Session {
            cfg,
            addrs,
            addr_idx: 0,
            conn: None,
            v2: false,
            ping_every: PING_EVERY,
            next_ping: None,
            reconnect_at: None,
            attempt: 0,
            ever_connected: false,
            initial_deadline: None,
            ready: false,
            pending: VecDeque::new(),
            resend: Vec::new(),
            blocker: None,
            deferred: None,
            arrivals: HashMap::new(),
            dedupe: Dedupe::new(dedupe::DEFAULT_CAPACITY),
            cursor: None,
            token: None,
            creds: None,
            viewer: Viewer::default(),
            prompt: None,
            failures: 0,
            quit: false,
        }
    }

    /// Run until `/quit`, the end of input (sequential mode: once the last command is done), or
    /// a failed initial connection in sequential mode. Returns the number of failed commands.
    pub(crate) async fn run(mut self, mut input: Input) -> u32 {
        if self.cfg.sequential {
            self.initial_deadline = Some(Instant::now() + self.cfg.timeout);
        }
        self.try_connect().await;
        let mut input_done = false;
        loop {
            if let Some(cmd) = self.deferred.take() {
                self.exec(cmd).await;
            }
            if self.quit {
                break;
            }
            let busy = self.busy();
            if input_done && (!self.cfg.sequential || !busy) {
                break;
            }
            let take_input = !input_done && (!self.cfg.sequential || !busy);
            let deadline = self.next_deadline();
            let event = tokio::select! {
                biased;
                inbound = recv(&mut self.conn) => Event::Inbound(inbound),
                _ = tokio::time::sleep_until(deadline) => Event::Tick,
                item = input.next(), if take_input => Event::Input(item),
            };
            match event {
                Event::Inbound(Inbound::Frame(frame)) => self.on_frame(frame).await,
                Event::Inbound(Inbound::Closed(reason)) => self.lost(&reason, None),
                Event::Input(None) => input_done = true,
                Event::Input(Some(Item::Line(line))) => self.on_line(&line).await,
                Event::Input(Some(Item::Command(cmd))) => self.exec(cmd).await,
                Event::Tick => {}
            }
            // Timers are checked after every event, so a flood of frames cannot starve them.
            self.on_timers().await;
        }
        let _ = std::io::stdout().flush();
        self.failures
    }

    /// Whether sequential mode must hold the next command back.
    fn busy(&self) -> bool {
        self.blocker.is_some()
            || self.deferred.is_some()
            || !self.resend.is_empty()
            || self
                .pending
                .iter()
                .any(|p| matches!(p.owner, Owner::User(_) | Owner::Sync { user: true }))
    }

    fn next_deadline(&self) -> Instant {
        let mut next = Instant::now() + Duration::from_secs(3600);
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = next.min(t);
            }
        };
        consider(self.initial_deadline.filter(|_| !self.ever_connected));
        consider(self.reconnect_at);
        consider(self.next_ping.filter(|_| self.conn.is_some()));
        for p in self.pending.iter().chain(&self.resend) {
            consider(Some(p.deadline));
        }
        consider(match &self.blocker {
            Some(Blocker::Wait { deadline, .. }) | Some(Blocker::Connection { deadline, .. }) => {
                Some(*deadline)
            }
            Some(Blocker::Sleep(until)) => Some(*until),
            None => None,
        });
        next
    }

    // -----------------------------------------------------------------------------------------
    // Output

    fn emit(&mut self, out: Output) {
        let key = match &out {
            Output::Reply { id, .. } | Output::Push { id, .. } => Some(id.to_string()),
            Output::ServerError { .. } => Some(ids::ERROR.to_string()),
            Output::Event { event, .. } if *event != "wait" => Some((*event).to_string()),
            _ => None,
        };
        let line = if self.cfg.json {
            Some(render::json_line(&out))
        } else {
            render::human(&out, &self.viewer, now_ms() / 1000)
        };
        if let Some(line) = line {
            let mut stdout = std::io::stdout().lock();
            // A closed stdout must not stop the session (nor panic): the output is lost anyway.
            let _ = writeln!(stdout, "{line}");
            let _ = stdout.flush();
        }
        if let Some(key) = key {
            *self.arrivals.entry(key).or_default() += 1;
            self.check_wait();
        }
    }

    fn fail(&mut self, kind: &'static str, cmd: Option<&'static str>, message: String) {
        self.failures += 1;
        self.emit(Output::client_error(kind, cmd, message));
    }

    /// Complete a `/wait` whose count has arrived, consuming that many arrivals (so that frames
    /// arriving before a `/wait` are not lost, and each frame satisfies only one `/wait`).
    fn check_wait(&mut self) {
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

    // -----------------------------------------------------------------------------------------
    // Connection life cycle

    fn addr(&self) -> String {
        self.addrs[self.addr_idx % self.addrs.len()].clone()
    }

    /// One connection attempt to the current address: connect, Hello, then resume. On failure
    /// the next attempt is scheduled with backoff (on the next address, after a redirect).
    async fn try_connect(&mut self) -> bool {
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
        let mut conn = Connection::connect(addr, self.cfg.timeout).await?;
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
    fn lost(&mut self, reason: &str, delay: Option<Duration>) {
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

    /// After a (re)connect: log in again — with the token of the last login in v2, with the
    /// remembered password in v1 (the original server accepts no token) — then sync.
    async fn start_resume(&mut self) {
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

    async fn start_sync(&mut self, user: bool) {
        let body = commands::sync_body(self.cursor.as_deref());
        self.send_internal(Owner::Sync { user }, ids::SYNC_REQ, body)
            .await;
    }

    /// The session is usable again: re-send parked sends, run the command that waited.
    fn on_ready(&mut self) {
        self.ready = true;
        if let Some(Blocker::Connection { .. }) = &self.blocker {
            if let Some(Blocker::Connection { cmd, .. }) = self.blocker.take() {
                self.deferred = Some(cmd);
            }
        }
    }

    async fn resend_parked(&mut self) {
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

    // -----------------------------------------------------------------------------------------
    // Timers

    async fn on_timers(&mut self) {
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

    // -----------------------------------------------------------------------------------------
    // Commands

    fn request_ctx(&self) -> RequestCtx {
        RequestCtx {
            v2: self.v2,
            client_msg_id: uuid::Uuid::new_v4().to_string(),
            now_rfc3339: rfc3339(now_ms()),
            cursor: self.cursor.clone(),
        }
    }

    async fn on_line(&mut self, line: &str) {
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
    fn usage_error(&mut self, cmd: Option<&'static str>, message: String) {
        if self.cfg.sequential {
            self.fail("usage", cmd, message);
        } else {
            self.emit(Output::client_error("usage", cmd, message));
        }
    }

    async fn exec(&mut self, cmd: Command) {
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

    /// `/connect [addr]`: leave the current server and session (not logged in afterwards).
    async fn connect_cmd(&mut self, addr: Option<String>) {
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

    async fn send_request(&mut self, cmd: Command) {
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
    async fn send_internal(&mut self, owner: Owner, id: u32, body: Vec<u8>) {
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

    // -----------------------------------------------------------------------------------------
    // Frames

    async fn on_frame(&mut self, frame: Frame) {
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

    /// 406: move to the least loaded node now, and resume there.
    fn on_redirect(&mut self, body: Value) {
        let nodes: Vec<String> = body
            .get("nodes")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.get("addr").and_then(Value::as_str))
                    .map(str::to_string)
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

    /// Remember who we are after a successful 105: the token for resuming, the viewer for "you".
    fn logged_in(&mut self, body: &Value) {
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

    async fn resume_failed(&mut self, by_token: bool, body: &Value) {
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
    async fn on_sync_page(&mut self, idx: usize, user: bool, body: Value) {
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

/// The next inbound event of the connection, or never when there is none.
async fn recv(conn: &mut Option<Connection>) -> Inbound {
    match conn {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}

/// Take the entries whose deadline has passed out of `list`.
fn take_expired(list: &mut Vec<Pending>, now: Instant) -> Vec<Pending> {
    let (expired, keep) = std::mem::take(list)
        .into_iter()
        .partition(|p| p.deadline <= now);
    *list = keep;
    expired
}
