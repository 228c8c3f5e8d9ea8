//! The session: one task that owns the connection and reacts to three things — a frame (or the
//! end of the connection), an input line, and a timer (request timeouts, heartbeat, reconnect,
//! `/wait` and `/sleep`).
//!
//! Everything lives in one task on purpose: which request a reply answers, what was already
//! shown (de-duplication), the sync cursor and the resume token are all plain fields, with no
//! locks and no ordering questions between tasks. The reader task of the connection and the
//! stdin thread only feed bounded channels.
//!
//! The session's methods are spread over files by what they are about: `requests.rs` (what
//! is in flight, and matching replies to it, first come first served by id), `connect.rs` (connect, lose, reconnect,
//! redirect), `resume.rs` (log in again and sync after a reconnect), `input.rs` (command lines,
//! and what holds back the next one in sequential mode), `timers.rs` and `output.rs`. This
//! file holds the state they share and the event loop.

mod connect;
mod input;
mod output;
mod requests;
mod resume;
mod timers;

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use input::Blocker;
use requests::{Owner, Pending};

use super::commands::Command;
use super::connection::{Connection, Inbound, TlsClient};
use super::dedupe::{self, Dedupe};
use super::render::Viewer;

/// Milliseconds since the Unix epoch, by this machine's clock.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The heartbeat of the original client; shortened when the server's idle timeout is short.
const PING_EVERY: Duration = Duration::from_secs(30);

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
    /// How `tls://` addresses are reached (the CA trusted, the name checked).
    pub tls: Option<Arc<TlsClient>>,
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
    /// An operator closed the connection (99 code 17): do not reconnect by itself.
    kicked: bool,
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
            kicked: false,
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
}

/// The next inbound event of the connection, or never when there is none.
async fn recv(conn: &mut Option<Connection>) -> Inbound {
    match conn {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}
