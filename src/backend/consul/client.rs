//! The HTTP client of one Consul agent, and what the registry and the KV watcher share
//! around it: the errors of a request, and the rules of a loop of blocking queries (the next
//! index, the spacing between queries, the pause and the log lines while Consul does not
//! answer).
//!
//! Every request has a time limit (`consul.request_timeout`, plus the wait of a blocking
//! query) and carries the ACL token when one is set, so that a Consul that hangs or refuses
//! turns into a [`ConsulError`] the caller can wait out, never a call that blocks the node.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{ConsulSettings, BACKEND};
use crate::backend::secret::Secret;
use crate::core::error::chain;
use crate::core::ports::{BackendError, BackendResult};

/// Least time between the starts of two blocking queries of one watcher, so that a query that
/// keeps returning at once cannot spin.
pub(super) const MIN_QUERY_SPACING: Duration = Duration::from_millis(200);

/// Longest pause between two attempts while Consul does not answer.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// Why a request to Consul failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConsulError {
    /// No answer: connection refused, reset, timed out.
    #[error("{0}")]
    Transport(String),
    /// Consul answered with an error status.
    #[error("Consul answered HTTP {status} to {what}: {body}{hint}")]
    Status {
        status: u16,
        what: String,
        body: String,
        hint: &'static str,
    },
    /// Consul answered something this node cannot read.
    #[error("cannot read Consul's answer to {what}: {detail}")]
    Decode { what: String, detail: String },
}

impl From<ConsulError> for BackendError {
    fn from(e: ConsulError) -> Self {
        BackendError::unavailable_from(BACKEND, e)
    }
}

/// An answer of Consul.
struct Answer {
    status: StatusCode,
    /// `X-Consul-Index`, for blocking queries.
    index: Option<u64>,
    body: bytes::Bytes,
}

/// The HTTP client of one Consul agent: base URL, ACL token, time limits.
#[derive(Clone)]
pub struct ConsulClient {
    http: reqwest::Client,
    base: String,
    token: Option<Secret>,
    timeout: Duration,
}

impl ConsulClient {
    pub fn new(settings: &ConsulSettings) -> BackendResult<ConsulClient> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(settings.request_timeout)
            .pool_idle_timeout(Duration::from_secs(60));
        if let Some(path) = &settings.ca_file {
            let shown = path.display();
            let pem = std::fs::read(path).map_err(|e| {
                let detail = format!(
                    "cannot read consul.tls.ca_file {shown}: {e}; check the path and that the \
                     user chat-zinx runs as can read the file"
                );
                BackendError::unavailable_with_source(BACKEND, detail, e)
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                let detail = format!(
                    "consul.tls.ca_file {shown} holds no usable PEM certificate ({}): it should \
                     hold the CA certificate(s) that signed Consul's certificate",
                    chain(&e)
                );
                BackendError::unavailable_with_source(BACKEND, detail, e)
            })?;
            if certs.is_empty() {
                return Err(BackendError::unavailable(
                    BACKEND,
                    format!("consul.tls.ca_file {shown} holds no PEM certificate"),
                ));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| {
            let detail = format!("cannot set up the HTTP client: {}", chain(&e));
            BackendError::unavailable_with_source(BACKEND, detail, e)
        })?;
        Ok(ConsulClient {
            http,
            base: settings.base_url.clone(),
            token: settings.token.clone(),
            timeout: settings.request_timeout,
        })
    }

    /// The agent's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// One request; `wait` adds a blocking query's wait to the time limit.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
        wait: Option<Duration>,
    ) -> Result<Answer, ConsulError> {
        let what = format!("{method} {path}");
        let limit = match wait {
            // Consul adds up to wait/16 of jitter.
            Some(w) => self.timeout + w + w / 16,
            None => self.timeout,
        };
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .query(query)
            .timeout(limit);
        if let Some(token) = &self.token {
            req = req.header("X-Consul-Token", token.expose());
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let transport = |e: reqwest::Error| {
            let base = &self.base;
            ConsulError::Transport(if e.is_timeout() {
                format!(
                    "no answer from Consul at {base} to {what} within {limit:?}: is the agent \
                     overloaded or unreachable? (consul.addr, consul.request_timeout)"
                )
            } else if e.is_connect() {
                format!(
                    "cannot connect to Consul at {base} ({}): is the Consul agent running and \
                     consul.addr right?",
                    chain(&e)
                )
            } else {
                format!("request {what} to Consul at {base} failed: {}", chain(&e))
            })
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let index = resp
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = resp.bytes().await.map_err(transport)?;
        Ok(Answer {
            status,
            index,
            body,
        })
    }

    /// A request whose answer must be a success; its body is returned.
    pub(super) async fn expect_ok(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<bytes::Bytes, ConsulError> {
        let what = format!("{method} {path}");
        let answer = self.send(method, path, query, body, None).await?;
        if answer.status.is_success() {
            Ok(answer.body)
        } else {
            Err(status_error(what, &answer))
        }
    }

    /// A blocking GET: waits until the index passes `index` (or `wait` elapses). Returns the
    /// new index and the body; `None` for a 404 (e.g. no key under a KV prefix).
    pub(super) async fn blocking_get(
        &self,
        path: &str,
        mut query: Vec<(&str, String)>,
        index: u64,
        wait: Duration,
    ) -> Result<(u64, Option<bytes::Bytes>), ConsulError> {
        let what = format!("GET {path}");
        if index > 0 {
            query.push(("index", index.to_string()));
            query.push(("wait", format!("{}ms", wait.as_millis())));
        }
        let answer = self
            .send(Method::GET, path, &query, None, Some(wait))
            .await?;
        let new_index = answer.index.unwrap_or(0);
        if answer.status == StatusCode::NOT_FOUND {
            return Ok((new_index, None));
        }
        if !answer.status.is_success() {
            return Err(status_error(what, &answer));
        }
        Ok((new_index, Some(answer.body)))
    }

    /// Whether Consul refuses this node outright, checked at start with a read the node makes
    /// anyway (its service's health): an ACL token Consul rejects (401, 403) or a TLS
    /// handshake that fails. An agent that does not answer is no refusal: the node serves and
    /// registers once it answers.
    pub async fn refusal(&self, service: &str) -> Option<ConsulError> {
        let path = format!("/v1/health/service/{service}");
        match self.expect_ok(Method::GET, &path, &[], None).await {
            Err(
                e @ ConsulError::Status {
                    status: 401 | 403, ..
                },
            ) => Some(e),
            Err(ConsulError::Transport(t)) if is_tls_failure(&t) => {
                Some(ConsulError::Transport(format!(
                    "{t} — the TLS handshake failed: check consul.tls.ca_file (the CA that \
                     signed Consul's certificate) and the host name of consul.addr against the \
                     certificate"
                )))
            }
            _ => None,
        }
    }

    /// Whether the agent serves and its cluster has a leader.
    pub async fn leader(&self) -> Result<String, ConsulError> {
        let body = self
            .expect_ok(Method::GET, "/v1/status/leader", &[], None)
            .await?;
        let leader: String = decode("GET /v1/status/leader", &body)?;
        if leader.is_empty() {
            return Err(ConsulError::Transport(format!(
                "Consul at {} has no leader: its servers cannot elect one (check the Consul \
                 servers' logs)",
                self.base
            )));
        }
        Ok(leader)
    }
}

/// Whether a transport error is a failed TLS handshake (a certificate refused).
fn is_tls_failure(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    ["certificate", "handshake", "unknownissuer"]
        .iter()
        .any(|w| lower.contains(w))
}

fn status_error(what: String, answer: &Answer) -> ConsulError {
    let body = String::from_utf8_lossy(&answer.body).trim().to_string();
    let hint = match answer.status {
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => {
            " — the ACL token (consul.token_file or consul.token) is missing, unknown or lacks a permission: it needs \
             service:write on the service (consul.service), service:read and node:read, and \
             key:read on consul.kv_prefix"
        }
        _ => "",
    };
    ConsulError::Status {
        status: answer.status.as_u16(),
        what,
        body,
        hint,
    }
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    body: &[u8],
) -> Result<T, ConsulError> {
    serde_json::from_slice(body).map_err(|e| ConsulError::Decode {
        what: what.to_string(),
        detail: e.to_string(),
    })
}

/// Tells a watcher loop's state changes once (not at every retry).
pub(super) struct Outage {
    what: &'static str,
    since: Option<Instant>,
    pause: Duration,
}

impl Outage {
    pub(super) fn new(what: &'static str) -> Self {
        Outage {
            what,
            since: None,
            pause: Duration::ZERO,
        }
    }

    /// Records a failure and returns how long to pause before the next attempt.
    pub(super) fn failed(&mut self, e: &dyn std::fmt::Display) -> Duration {
        if self.since.is_none() {
            self.since = Some(Instant::now());
            warn!(error = %e, "{}: Consul call failed; keeping the last known state and retrying", self.what);
        } else {
            debug!(error = %e, "{}: Consul call failed again", self.what);
        }
        self.pause = (self.pause * 2).clamp(Duration::from_millis(250), MAX_RETRY_PAUSE);
        self.pause
    }

    pub(super) fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            info!(
                "{}: Consul answers again (after {:?})",
                self.what,
                since.elapsed()
            );
        }
        self.pause = Duration::ZERO;
    }
}

/// The next index of a blocking query (Consul's rules: reset when it goes backwards, never 0).
pub(super) fn next_index(previous: u64, answered: u64) -> u64 {
    if answered < previous {
        0
    } else {
        answered.max(1)
    }
}

/// Sleeps `d` unless shut down first; `false` when shut down.
pub(super) async fn pause(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_query_indexes() {
        assert_eq!(next_index(10, 5), 0);
        assert_eq!(next_index(10, 12), 12);
        assert_eq!(next_index(0, 0), 1);
    }
}
