//! The admin API: `/admin/...` on the node's HTTP listener (`server.http_listen`, loopback by
//! default), on when `admin.token_file` is set.
//!
//! Every request carries `Authorization: Bearer <token>`, the content of that file; a missing
//! or wrong token is answered 401 before anything else (also for unknown paths), and the
//! comparison takes the same time whatever the token (both sides are hashed, then compared
//! without an early exit). The file is read once at start and refused, stopping the start,
//! when its group or other users can read it (the rule of every secret file of the node).
//!
//! | method and path | what |
//! |---|---|
//! | `GET /admin/nodes` | the nodes the registry knows (Consul; else this node) and their load |
//! | `GET /admin/users/{who}/sessions` | a user's sessions on every node (presence) |
//! | `POST /admin/users/{who}/kick` | close all of a user's sessions, on every node; or one (`{"session":"node/conn"}`) or one device's (`{"device":"phone"}`) |
//! | `POST /admin/users/{who}/revoke-tokens` | refuse every login token of the user issued up to now |
//! | `POST /admin/drain` | drain this node, which keeps running (see [`drain`]) |
//! | `POST /admin/undrain` | take this node back into service |
//!
//! `{who}` is a numeric id, a UUID or a username (percent-encoded). Bodies are JSON, at most
//! [`MAX_BODY`] bytes; answers are JSON, errors `{"error": "<what went wrong and what to do>"}`.
//! Every action is logged at info level with its actor: the token's fingerprint, the name the
//! caller gives in `X-Admin-Actor` (the CLI sends the login name; self-declared) and the peer
//! address.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::NodeState;
use crate::backend::secret::{read_secret, SecretFileError};
use crate::config::Config;
use crate::core::error::ChatError;
use crate::core::model::{NodeInfo, SessionInfo, User};
use crate::core::service::KickTarget;

/// Largest request body the admin API reads.
pub const MAX_BODY: usize = 16 * 1024;
/// A request body must have arrived within this (the headers have their own deadline).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest kick reason kept (longer ones are cut).
const MAX_REASON: usize = 200;
/// Longest `X-Admin-Actor` logged.
const MAX_ACTOR: usize = 64;
/// The reason a kick gives when the operator gives none.
const DEFAULT_REASON: &str = "your session was closed by an operator";

/// The admin API's credential: the SHA-256 of the bearer token (the token itself is not
/// kept), and a short fingerprint of it that logs name the caller by.
pub struct AdminToken {
    digest: [u8; 32],
    fingerprint: String,
}

impl AdminToken {
    /// The token of `admin.token_file`, `None` when the key is unset (the API is off).
    pub fn load(config: &Config) -> Result<Option<AdminToken>, SecretFileError> {
        let Some(path) = &config.admin.token_file else {
            return Ok(None);
        };
        let secret = read_secret("admin.token_file", path)?;
        Ok(Some(AdminToken::new(secret.expose())))
    }

    pub fn new(token: &str) -> AdminToken {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let fingerprint = format!("sha256:{}", &hex::encode(digest)[..12]);
        AdminToken {
            digest,
            fingerprint,
        }
    }

    /// Whether `presented` is the token, in a time that does not depend on where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let other: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let diff = self
            .digest
            .iter()
            .zip(other.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }

    /// How logs name the holder of this token.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// The drain an operator starts and stops (`POST /admin/drain`, `/admin/undrain`).
///
/// Drained, the node keeps running: it reports itself draining in the registry (discovery
/// and redirects leave it out), answers `/ready` with 503 (a load balancer takes it out),
/// sends new connections and those not logged in elsewhere (v2: 406 `draining` with the
/// peers; v1: 99 code 13), and redirects and closes its logged-in connections one after the
/// other over `server.drain_window`, as a SIGTERM does, without exiting. Undrained, it takes
/// connections again (a drain still running stops closing). A SIGTERM afterwards stops the
/// node as usual, quickly since nobody is left.
pub struct DrainControl {
    /// The node's shutdown: hurries a running drain along (see `server::drain::drain`).
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Stops the running drain (undrain).
    running: Mutex<Option<CancellationToken>>,
    /// `server.drain_window` in force (reloadable).
    window: Mutex<Duration>,
}

impl DrainControl {
    pub fn new(shutdown: CancellationToken, tasks: TaskTracker) -> Self {
        DrainControl {
            shutdown,
            tasks,
            running: Mutex::new(None),
            window: Mutex::new(Duration::from_secs(10)),
        }
    }

    pub fn set_window(&self, window: Duration) {
        *self.window.lock().unwrap_or_else(|e| e.into_inner()) = window;
    }

    fn window(&self) -> Duration {
        *self.window.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What `POST /admin/drain` did.
pub struct DrainStarted {
    /// The node was already drained: nothing new started.
    pub already: bool,
    /// Logged-in connections the drain redirects and closes.
    pub connections: usize,
    pub window: Duration,
}

/// Drains the node (see [`DrainControl`]). The connections are closed by a task of the node's
/// own; this returns once it is started.
pub async fn drain(state: &NodeState) -> DrainStarted {
    let ctx = &state.ctx;
    let window = state.drain.window();
    if ctx.set_draining(true) {
        return DrainStarted {
            already: true,
            connections: ctx.hub.all_connections().len(),
            window,
        };
    }
    let core = &ctx.core;
    let node_id = core.node_id().to_string();
    let open = ctx.open.load(Ordering::Relaxed);
    if let Err(e) = core
        .backends()
        .registry
        .update_load(&node_id, open, true)
        .await
    {
        warn!(error = %e, "could not mark this node draining in the registry; it is retried with the next load report");
    }
    let peers = core.nodes().await.unwrap_or_default();
    *ctx.redirect.write().unwrap_or_else(|e| e.into_inner()) = Some(
        crate::server::drain::redirect_frame("draining", &peers, &node_id),
    );
    let stop = CancellationToken::new();
    if let Some(old) = state
        .drain
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .replace(stop.clone())
    {
        old.cancel();
    }
    let connections = ctx.hub.all_connections().len();
    let hub = ctx.hub.clone();
    let hurry = state.drain.shutdown.clone();
    state.drain.tasks.spawn(async move {
        tokio::select! {
            report = crate::server::drain::drain(&hub, &peers, &node_id, window, &hurry) => {
                info!(redirected = report.redirected, closed = report.closed, "drain by an operator done; the node keeps running, taking no new connections (undrain to take it back)");
            }
            _ = stop.cancelled() => info!("drain stopped: the node was taken back into service"),
        }
    });
    DrainStarted {
        already: false,
        connections,
        window,
    }
}

/// Takes a drained node back into service. False when it was not drained.
pub async fn undrain(state: &NodeState) -> bool {
    let ctx = &state.ctx;
    if !ctx.set_draining(false) {
        return false;
    }
    if let Some(running) = state
        .drain
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        running.cancel();
    }
    *ctx.redirect.write().unwrap_or_else(|e| e.into_inner()) = None;
    let core = &ctx.core;
    let open = ctx.open.load(Ordering::Relaxed);
    if let Err(e) = core
        .backends()
        .registry
        .update_load(core.node_id(), open, false)
        .await
    {
        warn!(error = %e, "could not mark this node serving in the registry; it is retried with the next load report");
    }
    true
}

/// Who made a request, as logs say it.
struct Actor {
    token: String,
    /// `X-Admin-Actor`, as given (printable ASCII kept, at most [`MAX_ACTOR`]).
    claimed: String,
    peer: SocketAddr,
}

type Answer = Response<Full<Bytes>>;

/// Serves `/admin...` (the caller checked the prefix).
pub async fn route(req: Request<Incoming>, state: &NodeState, peer: SocketAddr) -> Answer {
    let Some(token) = &state.admin else {
        return error(
            StatusCode::NOT_FOUND,
            "the admin API is off on this node: set admin.token_file (a file holding the bearer token, mode 0600) and restart",
        );
    };
    let presented = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    let path = req.uri().path().to_string();
    let Some(presented) = presented else {
        info!(%peer, %path, "admin request refused: no bearer token");
        return unauthorized(
            "missing bearer token: send `Authorization: Bearer <the content of admin.token_file>` (chat-zinx admin --token-file FILE)",
        );
    };
    if !token.matches(presented) {
        warn!(%peer, %path, "admin request refused: wrong bearer token");
        return unauthorized("wrong bearer token: use the content of this node's admin.token_file");
    }
    let claimed: String = req
        .headers()
        .get("x-admin-actor")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(MAX_ACTOR)
        .collect();
    let actor = Actor {
        token: token.fingerprint().to_string(),
        claimed: if claimed.is_empty() {
            "-".into()
        } else {
            claimed
        },
        peer,
    };
    let method = req.method().clone();
    let segments: Vec<String> = match path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .map(percent_decode)
        .collect::<Option<Vec<_>>>()
    {
        Some(s) => s,
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "the path is not valid percent-encoded UTF-8",
            )
        }
    };
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (&method, segs.as_slice()) {
        (&Method::GET, ["admin", "nodes"]) => nodes(state).await,
        (&Method::GET, ["admin", "users", who, "sessions"]) => sessions(state, who).await,
        (&Method::POST, ["admin", "users", who, "kick"]) => {
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(e) => return e,
            };
            kick(state, &actor, who, body).await
        }
        (&Method::POST, ["admin", "users", who, "revoke-tokens"]) => {
            revoke(state, &actor, who).await
        }
        (&Method::POST, ["admin", "drain"]) => {
            if state.health.is_stopping() {
                return error(
                    StatusCode::CONFLICT,
                    "this node is shutting down already",
                );
            }
            let started = drain(state).await;
            info!(
                actor = %actor.token, operator = %actor.claimed, peer = %actor.peer,
                action = "drain", already = started.already, connections = started.connections,
                "admin: node drained"
            );
            json(
                if started.already {
                    StatusCode::OK
                } else {
                    StatusCode::ACCEPTED
                },
                json!({
                    "node_id": state.ctx.core.node_id(),
                    "draining": true,
                    "already_draining": started.already,
                    "connections": started.connections,
                    "drain_window_ms": started.window.as_millis() as u64,
                }),
            )
        }
        (&Method::POST, ["admin", "undrain"]) => {
            if state.health.is_stopping() {
                return error(
                    StatusCode::CONFLICT,
                    "this node is shutting down: it cannot be taken back into service; start it again",
                );
            }
            let was = undrain(state).await;
            info!(
                actor = %actor.token, operator = %actor.claimed, peer = %actor.peer,
                action = "undrain", was_draining = was, "admin: node taken back into service"
            );
            json(
                StatusCode::OK,
                json!({"node_id": state.ctx.core.node_id(), "draining": false, "was_draining": was}),
            )
        }
        (_, ["admin", "nodes"])
        | (_, ["admin", "users", _, "sessions"])
        | (_, ["admin", "users", _, "kick" | "revoke-tokens"])
        | (_, ["admin", "drain" | "undrain"]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: GET /admin/nodes and /admin/users/{who}/sessions; POST the others",
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "no such admin endpoint: GET /admin/nodes, GET /admin/users/{who}/sessions, POST /admin/users/{who}/kick, POST /admin/users/{who}/revoke-tokens, POST /admin/drain, POST /admin/undrain",
        ),
    }
}

async fn nodes(state: &NodeState) -> Answer {
    let core = &state.ctx.core;
    let me = core.node_id();
    let draining_here = state.ctx.is_draining();
    let mut list = match core.all_nodes().await {
        Ok(l) => l,
        Err(e) => return chat_error(&e, ""),
    };
    // This node as it is now (its registry entry may lag, or the registry be down).
    let this = NodeInfo {
        node_id: me.to_string(),
        addr: list
            .iter()
            .find(|n| n.node_id == me)
            .map(|n| n.addr.clone())
            .unwrap_or_default(),
        tls_addr: list
            .iter()
            .find(|n| n.node_id == me)
            .and_then(|n| n.tls_addr.clone()),
        connections: state.ctx.open.load(Ordering::Relaxed),
        capacity: state.ctx.settings().max_connections,
        draining: draining_here,
    };
    match list.iter_mut().find(|n| n.node_id == me) {
        Some(n) => *n = this,
        None => list.push(this),
    }
    let nodes: Vec<Value> = list
        .iter()
        .map(|n| {
            json!({
                "node_id": n.node_id,
                "addr": n.addr,
                "tls_addr": n.tls_addr,
                "connections": n.connections,
                "capacity": n.capacity,
                "load": (n.load() * 1000.0).round() / 1000.0,
                "draining": n.draining,
                "this_node": n.node_id == me,
            })
        })
        .collect();
    json(StatusCode::OK, json!({ "nodes": nodes }))
}

fn user_json(u: &User) -> Value {
    json!({"id": u.id, "uuid": u.uuid, "username": u.username})
}

fn session_json(s: &SessionInfo) -> Value {
    json!({
        "session": format!("{}/{}", s.node_id, s.conn_id),
        "node_id": s.node_id,
        "conn_id": s.conn_id,
        "device": s.device,
        "since_ms": s.since,
    })
}

async fn sessions(state: &NodeState, who: &str) -> Answer {
    let core = &state.ctx.core;
    let user = match core.find_user(who).await {
        Ok(u) => u,
        Err(e) => return chat_error(&e, who),
    };
    match core.user_sessions(user.id).await {
        Ok(list) => json(
            StatusCode::OK,
            json!({
                "user": user_json(&user),
                "sessions": list.iter().map(session_json).collect::<Vec<_>>(),
            }),
        ),
        Err(e) => chat_error(&e, who),
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct KickBody {
    /// `node/conn`, as `sessions` lists it.
    session: Option<String>,
    device: Option<String>,
    reason: Option<String>,
}

async fn kick(state: &NodeState, actor: &Actor, who: &str, body: Bytes) -> Answer {
    let req: KickBody = if body.iter().all(|b| b.is_ascii_whitespace()) {
        KickBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("the body is not a kick request ({e}): send {{}} for every session, or {{\"session\":\"node/conn\"}} or {{\"device\":\"name\"}}, with an optional \"reason\""),
                )
            }
        }
    };
    let target = match (&req.session, &req.device) {
        (Some(_), Some(_)) => {
            return error(StatusCode::BAD_REQUEST, "give session or device, not both")
        }
        (Some(s), None) => {
            let parsed = s
                .rsplit_once('/')
                .and_then(|(node, conn)| Some((node, conn.parse().ok()?)));
            match parsed {
                Some((node, conn)) if !node.is_empty() => KickTarget::Session {
                    node: node.to_string(),
                    conn,
                },
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("session {s:?} is not node/conn: copy it from the session list (GET /admin/users/{{who}}/sessions)"),
                    )
                }
            }
        }
        (None, Some(d)) => KickTarget::Device(d.clone()),
        (None, None) => KickTarget::All,
    };
    let reason: String = match req.reason.as_deref().map(str::trim) {
        Some(r) if !r.is_empty() => r.chars().take(MAX_REASON).collect(),
        _ => DEFAULT_REASON.into(),
    };
    let core = &state.ctx.core;
    let user = match core.find_user(who).await {
        Ok(u) => u,
        Err(e) => return chat_error(&e, who),
    };
    let report = match core.kick(user.id, &target, &reason).await {
        Ok(r) => r,
        Err(e) => {
            warn!(actor = %actor.token, operator = %actor.claimed, peer = %actor.peer, action = "kick", user_id = user.id, error = %e, "admin: kick failed");
            return chat_error(&e, who);
        }
    };
    info!(
        actor = %actor.token, operator = %actor.claimed, peer = %actor.peer, action = "kick",
        user_id = user.id, username = %user.username, target = ?target, sessions = report.sessions.len(),
        reason = %reason, "admin: sessions closed"
    );
    if target != KickTarget::All && report.sessions.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            &format!(
                "user {} has no such session: list them with GET /admin/users/{}/sessions",
                user.username, user.id
            ),
        );
    }
    json(
        StatusCode::OK,
        json!({
            "user": user_json(&user),
            "all": target == KickTarget::All,
            "kicked": report.sessions.iter().map(session_json).collect::<Vec<_>>(),
            "reason": reason,
        }),
    )
}

async fn revoke(state: &NodeState, actor: &Actor, who: &str) -> Answer {
    let core = &state.ctx.core;
    let user = match core.find_user(who).await {
        Ok(u) => u,
        Err(e) => return chat_error(&e, who),
    };
    match core.revoke_all_tokens(user.id).await {
        Ok(valid_from) => {
            info!(
                actor = %actor.token, operator = %actor.claimed, peer = %actor.peer,
                action = "revoke-tokens", user_id = user.id, username = %user.username,
                tokens_valid_from = valid_from, "admin: login tokens revoked"
            );
            json(
                StatusCode::OK,
                json!({
                    "user": user_json(&user),
                    "tokens_valid_from": valid_from,
                    "note": "tokens issued before tokens_valid_from (Unix seconds) are refused on every node; open sessions stay open: kick them to close them",
                }),
            )
        }
        Err(e) => {
            warn!(actor = %actor.token, operator = %actor.claimed, peer = %actor.peer, action = "revoke-tokens", user_id = user.id, error = %e, "admin: revoke failed");
            chat_error(&e, who)
        }
    }
}

/// The body, at most [`MAX_BODY`] bytes, within [`BODY_TIMEOUT`].
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Answer> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is larger than {MAX_BODY} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let read = tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(req.into_body(), MAX_BODY).collect(),
    );
    let Ok(read) = read.await else {
        return Err(error(
            StatusCode::REQUEST_TIMEOUT,
            &format!("the body did not arrive within {BODY_TIMEOUT:?}"),
        ));
    };
    match read {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("could not read the body: {e}"),
        )),
    }
}

fn chat_error(e: &ChatError, who: &str) -> Answer {
    match e {
        ChatError::UnknownUser => error(
            StatusCode::NOT_FOUND,
            &format!("no user {who:?}: give a numeric id, a UUID or a username"),
        ),
        ChatError::Unavailable(_) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// `%XX` decoded, `None` when that is not UTF-8 or a `%` is not followed by two hex digits.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn json(status: StatusCode, body: Value) -> Answer {
    let mut body = body.to_string();
    body.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, message: &str) -> Answer {
    json(status, json!({ "error": message }))
}

fn unauthorized(message: &str) -> Answer {
    let mut r = error(StatusCode::UNAUTHORIZED, message);
    r.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"chat-zinx admin\""),
    );
    r
}

/// Whether the HTTP endpoint hands `path` to [`route`].
pub fn is_admin_path(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_matches_itself_only() {
        let t = AdminToken::new("s3cret-token");
        assert!(t.matches("s3cret-token"));
        assert!(!t.matches("s3cret-tokem"));
        assert!(!t.matches(""));
        assert!(t.fingerprint().starts_with("sha256:"));
        assert_eq!(t.fingerprint().len(), "sha256:".len() + 12);
    }

    #[test]
    fn paths_are_percent_decoded() {
        assert_eq!(percent_decode("al%20ice").as_deref(), Some("al ice"));
        assert_eq!(percent_decode("%E6%9D%8E").as_deref(), Some("李"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
