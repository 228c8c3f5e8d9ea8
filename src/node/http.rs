//! The HTTP endpoint, on its own listener (`server.http_listen`, or the `http` socket systemd
//! passes):
//!
//! * `GET /health`: the process is alive and answering (200 `ok`).
//! * `GET /ready`: 200 when the accept loop answers, the store and bus are healthy and the node
//!   is not shutting down; 503 otherwise. The JSON body says what is wrong, also what only
//!   degrades the node (presence, registry). See [`super::health`] for the rules.
//! * `GET /metrics`: every metric in the Prometheus text format.
//! * `/admin/...`: the admin API, behind a bearer token (see [`super::admin`]).
//!
//! HTTP/1.1 only, a bounded number of connections, a deadline for request headers: it is meant
//! for a local Prometheus and load-balancer health checks, not for the internet.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::health::{self, Health};
use super::NodeState;
use crate::server::budget::SlowClose;
use crate::telemetry::metrics::{LiveStats, CONTENT_TYPE as METRICS_CONTENT_TYPE};

/// HTTP connections served at once; more are closed at once (a scraper and a few probes need
/// a handful).
const MAX_CONNECTIONS: usize = 64;
/// A client must send its request headers within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// An open connection gets this long to finish its request once the node shuts down.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// `/metrics` re-checks the backends when the last check is older than this.
const BACKENDS_MAX_AGE: Duration = Duration::from_secs(10);
/// `/ready` uses a backend check at most this old (the periodic one runs every 5 s at most).
const READY_MAX_AGE: Duration = Duration::from_secs(6);

/// Serves the endpoint on `listener` until `shutdown`; every connection task is owned by
/// `tasks`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<NodeState>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!("http: too many connections, closing a new one");
            continue;
        };
        let state = state.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(req, &state, peer).await) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let finished = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = shutdown.cancelled() => None,
            };
            if finished.is_none() {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await;
            }
            drop(slot);
        });
    }
    debug!("http endpoint stopped");
}

async fn route(
    req: Request<Incoming>,
    state: &NodeState,
    peer: std::net::SocketAddr,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if super::admin::is_admin_path(path) {
        return super::admin::route(req, state, peer).await;
    }
    let known = matches!(path, "/health" | "/ready" | "/metrics");
    if !known {
        return text(
            StatusCode::NOT_FOUND,
            "not found: the paths are /health, /ready, /metrics and /admin/... (the admin API)\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use GET\n",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/health" => text(StatusCode::OK, "ok\n"),
        "/ready" => {
            let h = health::check_recent(state, READY_MAX_AGE).await;
            let status = if h.ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(status, ready_body(state, &h))
        }
        _ => {
            let body = render_metrics(state).await;
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
            r
        }
    }
}

fn ready_body(state: &NodeState, h: &Health) -> serde_json::Value {
    let backends: serde_json::Map<String, serde_json::Value> = h
        .backends
        .entries()
        .iter()
        .map(|(name, status)| {
            let v = match status {
                crate::core::ports::BackendStatus::Healthy => "ok".to_string(),
                crate::core::ports::BackendStatus::Unavailable(d) => format!("unavailable: {d}"),
                crate::core::ports::BackendStatus::NoAnswer => "not answering".to_string(),
            };
            (name.to_string(), serde_json::Value::String(v))
        })
        .collect();
    serde_json::json!({
        "ready": h.ready(),
        "node_id": state.ctx.core.node_id(),
        "accepting": h.accepting,
        "stopping": h.stopping,
        "backends": backends,
        "problems": h.problems(),
    })
}

/// `/metrics`: the counters plus the states read now.
pub async fn render_metrics(state: &NodeState) -> String {
    let ctx = &state.ctx;
    let backends = match state.health.last_backends_within(BACKENDS_MAX_AGE) {
        Some(b) => b,
        None => health::check(state).await.backends,
    };
    let conns = ctx.hub.all_connections();
    let (outbox_frames, outbox_frames_max) = conns.iter().fold((0u64, 0u64), |(sum, max), c| {
        let n = c.shared.outbox.len() as u64;
        (sum + n, max.max(n))
    });
    let outbox_bytes_max = conns
        .iter()
        .map(|c| c.shared.outbox.queued_bytes() as u64)
        .max()
        .unwrap_or(0);
    let closes = SlowClose::ALL.map(|why| (why.label(), ctx.budget.closes(why)));
    let stats = &ctx.hub.stats;
    ctx.metrics.render(&LiveStats {
        node_id: ctx.core.node_id(),
        open_connections: ctx.open.load(Ordering::Relaxed),
        logged_in_connections: conns.len() as u64,
        unauthenticated_connections: ctx.admission.count(),
        users: ctx.hub.user_count() as u64,
        outbox_frames,
        outbox_frames_max,
        pushes: stats.pushes.load(Ordering::Relaxed),
        pushes_missed: stats.missed.load(Ordering::Relaxed),
        outbox_bytes: ctx.budget.queued(),
        outbox_bytes_budget: ctx.budget.limit(),
        outbox_bytes_max,
        slow_consumer_closes: &closes,
        slow_consumers: closes.iter().map(|(_, n)| n).sum(),
        delivery_latency: &stats.delivery_latency,
        backends: Some(&backends),
    })
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = body.to_string();
    body.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
