//! Counters of what the node does. Plain atomics for now; the HTTP endpoint exports them.

use std::sync::atomic::{AtomicU64, Ordering};

use super::connection::EndReason;

#[derive(Default)]
pub struct Metrics {
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    pub frames_in: AtomicU64,
    pub registrations: AtomicU64,
    pub logins: AtomicU64,
    pub login_failures: AtomicU64,
    pub direct_stored: AtomicU64,
    pub group_stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub send_failures: AtomicU64,
    pub ended_client: AtomicU64,
    pub ended_idle: AtomicU64,
    pub ended_oversized: AtomicU64,
    pub ended_truncated: AtomicU64,
    pub ended_error: AtomicU64,
    pub ended_by_server: AtomicU64,
    pub ended_shutdown: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    pub fn frame_in(&self, _id: u32) {
        inc(&self.frames_in);
    }
    pub fn registered(&self) {
        inc(&self.registrations);
    }
    pub fn logged_in(&self) {
        inc(&self.logins);
    }
    pub fn login_failed(&self) {
        inc(&self.login_failures);
    }
    pub fn message_stored(&self, kind: &str, duplicate: bool) {
        if duplicate {
            inc(&self.duplicates);
        } else if kind == "group" {
            inc(&self.group_stored);
        } else {
            inc(&self.direct_stored);
        }
    }
    pub fn message_failed(&self, _kind: &str) {
        inc(&self.send_failures);
    }
    pub fn connection_ended(&self, reason: EndReason) {
        inc(match reason {
            EndReason::ClientClosed => &self.ended_client,
            EndReason::Idle => &self.ended_idle,
            EndReason::Oversized => &self.ended_oversized,
            EndReason::Truncated => &self.ended_truncated,
            EndReason::ReadError => &self.ended_error,
            EndReason::ClosedByServer => &self.ended_by_server,
            EndReason::Shutdown => &self.ended_shutdown,
        });
    }
}
