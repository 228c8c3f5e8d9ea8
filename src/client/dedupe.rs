//! De-duplication of delivered messages.
//!
//! After a reconnect the client syncs from its last cursor while live pushes already flow, and a
//! retried send may come back through sync: the same message can arrive twice. The protocol
//! identifies a message by `msg_id` (and positions it by `conv` + `seq`), never by its text —
//! two identical texts are two messages — so that is what is remembered. Memory is bounded:
//! the oldest keys are forgotten first, which only matters for a message replayed long after.

use std::collections::{HashSet, VecDeque};

use serde_json::Value;

/// Keys remembered by default.
pub const DEFAULT_CAPACITY: usize = 20_000;

#[derive(Debug)]
pub struct Dedupe {
    seen: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl Dedupe {
    pub fn new(capacity: usize) -> Self {
        Dedupe {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// The identity of a delivered message body: its `msg_id`, else `conv#seq`; `None` when it
    /// has neither (an original server's delivery, which cannot be told apart from a repeat).
    pub fn key_of(body: &Value) -> Option<String> {
        if let Some(id) = body.get("msg_id").and_then(Value::as_str) {
            if !id.is_empty() {
                return Some(id.to_string());
            }
        }
        let conv = body.get("conv").and_then(Value::as_str)?;
        let seq = body.get("seq").and_then(Value::as_u64)?;
        Some(format!("{conv}#{seq}"))
    }

    /// Remember a key; `true` if it is new.
    pub fn insert(&mut self, key: String) -> bool {
        if self.seen.contains(&key) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(key.clone());
        self.order.push_back(key);
        true
    }

    /// Whether this delivery is shown for the first time (and remember it). Messages without an
    /// identity are always shown.
    pub fn first_time(&mut self, body: &Value) -> bool {
        match Self::key_of(body) {
            Some(key) => {
                // A message known by msg_id may also come back keyed by position only (or the
                // other way round): remember both.
                let pos = match (
                    body.get("conv").and_then(Value::as_str),
                    body.get("seq").and_then(Value::as_u64),
                ) {
                    (Some(c), Some(s)) => Some(format!("{c}#{s}")),
                    _ => None,
                };
                let new_pos = match pos {
                    Some(p) if p != key => self.insert(p),
                    _ => true,
                };
                self.insert(key) && new_pos
            }
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn same_msg_id_is_shown_once_same_text_twice() {
        let mut d = Dedupe::new(100);
        let a = json!({"msg_id":"m1","conv":"p1-2","seq":5,"content":"hi"});
        let b = json!({"msg_id":"m2","conv":"p1-2","seq":6,"content":"hi"});
        assert!(d.first_time(&a));
        assert!(!d.first_time(&a));
        assert!(d.first_time(&b));
    }

    #[test]
    fn position_identifies_when_msg_id_is_missing() {
        let mut d = Dedupe::new(100);
        assert!(d.first_time(&json!({"conv":"g5","seq":9})));
        assert!(!d.first_time(&json!({"conv":"g5","seq":9})));
        assert!(!d.first_time(&json!({"msg_id":"x","conv":"g5","seq":9})));
        // Without any identity every delivery is shown.
        assert!(d.first_time(&json!({"content":"hi"})));
        assert!(d.first_time(&json!({"content":"hi"})));
    }

    #[test]
    fn acked_sends_are_not_shown_again() {
        let mut d = Dedupe::new(100);
        assert!(d.insert("m9".into()));
        assert!(!d.first_time(&json!({"msg_id":"m9","conv":"p1-2","seq":1})));
    }

    #[test]
    fn memory_is_bounded() {
        let mut d = Dedupe::new(2);
        assert!(d.insert("a".into()));
        assert!(d.insert("b".into()));
        assert!(d.insert("c".into()));
        assert!(d.insert("a".into()), "the oldest key was forgotten");
        assert!(!d.insert("c".into()));
        assert!(d.seen.len() <= 2);
    }
}
