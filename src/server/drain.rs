//! Draining a node before it stops (SIGTERM, deploy): v2 clients are redirected (406) to the
//! least-loaded healthy peers, and every logged-in connection is closed, one after the other,
//! spread evenly over the drain window, so that reconnects do not hit the peers all at once.
//!
//! The node has already left discovery (so nobody is sent here) and stopped accepting before
//! the drain starts; connections that never logged in are closed at the end of the window.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::hub::Hub;
use super::outbox::Outbound;
use crate::core::model::NodeInfo;
use crate::protocol::messages::{code, ErrorResp, Redirect, RedirectNode};
use crate::protocol::{codec, ids};

/// What a drain did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    pub redirected: usize,
    pub closed: usize,
}

/// The 406 body: `reason` and the peers, least loaded first (at most 8).
pub fn redirect_frame(reason: &str, peers: &[NodeInfo], self_id: &str) -> bytes::Bytes {
    let mut nodes: Vec<&NodeInfo> = peers
        .iter()
        .filter(|n| n.node_id != self_id && !n.draining)
        .collect();
    nodes.sort_by(|a, b| a.load().total_cmp(&b.load()));
    let body = Redirect {
        reason: reason.to_string(),
        nodes: nodes
            .into_iter()
            .take(8)
            .map(|n| RedirectNode {
                addr: n.addr.clone(),
                tls_addr: n.tls_addr.clone(),
                load: (n.load() * 1000.0).round() / 1000.0,
            })
            .collect(),
    };
    codec::encode(
        ids::REDIRECT,
        &serde_json::to_vec(&body).expect("serialises"),
    )
}

/// Redirects and closes every logged-in connection of `hub` over `window`. Stops early (closing
/// the rest at once) when `hurry` is cancelled.
pub async fn drain(
    hub: &Hub,
    peers: &[NodeInfo],
    self_id: &str,
    window: Duration,
    hurry: &CancellationToken,
) -> DrainReport {
    let conns = hub.all_connections();
    let mut report = DrainReport::default();
    if conns.is_empty() {
        return report;
    }
    let redirect = redirect_frame("draining", peers, self_id);
    let farewell = codec::encode(
        ids::ERROR,
        &serde_json::to_vec(&ErrorResp {
            code: code::SHUTTING_DOWN,
            message: "this node is shutting down: reconnect (to another node)".into(),
            reference: None,
        })
        .expect("serialises"),
    );
    let step = window / conns.len() as u32;
    info!(connections = conns.len(), ?window, "draining");
    for (i, conn) in conns.iter().enumerate() {
        let frame = if conn.shared.is_v2() {
            report.redirected += 1;
            redirect.clone()
        } else {
            farewell.clone()
        };
        conn.shared
            .close_after_flush(Some(Outbound { frame, seq: 0 }));
        report.closed += 1;
        if i + 1 < conns.len() && !hurry.is_cancelled() {
            tokio::select! {
                _ = tokio::time::sleep(step) => {}
                _ = hurry.cancelled() => {}
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, connections: u64, draining: bool) -> NodeInfo {
        NodeInfo {
            node_id: id.into(),
            addr: format!("{id}:9000"),
            tls_addr: None,
            connections,
            capacity: 100,
            draining,
        }
    }

    #[test]
    fn redirect_lists_healthy_peers_least_loaded_first_without_self() {
        let peers = [
            node("a", 50, false),
            node("me", 0, false),
            node("b", 10, false),
            node("c", 0, true),
        ];
        let f = redirect_frame("draining", &peers, "me");
        let (id, len) = crate::protocol::FrameCodec::peek_header(&f).unwrap();
        assert_eq!((id, len), (ids::REDIRECT, f.len() - 8));
        let body: serde_json::Value = serde_json::from_slice(&f[8..]).unwrap();
        assert_eq!(body["reason"], "draining");
        assert_eq!(body["nodes"][0]["addr"], "b:9000");
        assert_eq!(body["nodes"][0]["load"], 0.1);
        assert_eq!(body["nodes"][1]["addr"], "a:9000");
        assert_eq!(body["nodes"].as_array().unwrap().len(), 2);
    }
}
