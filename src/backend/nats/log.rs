//! The message log: what a record holds, the two-phase append (admission of overlapping
//! appends, the publish that fixes a message's place, the acknowledgement and its retry after
//! a lost race) and the reads by position (direct gets) that history and sync walk.

use std::sync::Arc;

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{unavailable, unavailable_because, unavailable_with, Nats};
use crate::core::model::*;
use crate::core::ports::*;

/// Whether a publish was refused because the subject's last sequence was not the one the
/// `Nats-Expected-Last-Subject-Sequence` header named: another writer appended first.
///
/// The server says so in two ways. A stream with one replica answers error code 10071
/// ("wrong last sequence: N"); a replicated stream, where the check runs in the clustered
/// proposal path, answers 10164 ("wrong last sequence", no number). async-nats (0.46 to
/// 0.51 at least) classifies only 10071 as `WrongLastSequence` and reports 10164 as `Other`,
/// so the answer is recognised here by kind, by code and by description, whatever the
/// client version does.
pub(super) fn is_wrong_last_sequence(e: &jetstream::context::PublishError) -> bool {
    use jetstream::context::PublishErrorKind;
    if e.kind() == PublishErrorKind::WrongLastSequence {
        return true;
    }
    if e.kind() != PublishErrorKind::Other {
        return false;
    }
    let Some(source) = std::error::Error::source(e) else {
        return false;
    };
    match source.downcast_ref::<jetstream::Error>() {
        Some(api) => is_wrong_last_sequence_answer(api.error_code().0, &api.to_string()),
        None => is_wrong_last_sequence_answer(0, &source.to_string()),
    }
}

/// The JetStream API error codes that mean "wrong last sequence" (see
/// [`is_wrong_last_sequence`]), or a description that says so.
pub(super) fn is_wrong_last_sequence_answer(code: u64, description: &str) -> bool {
    const STREAM_WRONG_LAST_SEQUENCE: u64 = 10071;
    const STREAM_WRONG_LAST_SEQUENCE_CONSTANT: u64 = 10164;
    matches!(
        code,
        STREAM_WRONG_LAST_SEQUENCE | STREAM_WRONG_LAST_SEQUENCE_CONSTANT
    ) || description
        .to_ascii_lowercase()
        .starts_with("wrong last sequence")
}

/// The stored form of a message in the log (its position is the stream sequence).
#[derive(Serialize, Deserialize)]
pub(super) struct LogRecord {
    msg_id: String,
    sender_id: UserId,
    sender_uuid: String,
    sender_name: String,
    timestamp: UnixMs,
    body: MessageBody,
    /// Position of the previous message of the same conversation (0 = first); with `gap`,
    /// of an earlier one (messages of the conversation may lie between).
    prev: Seq,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    gap: bool,
}

/// Where the message before a log record is, as the record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Link {
    pub(super) prev: Seq,
    /// `prev` is a lower bound: the conversation may have messages between it and the record.
    pub(super) gap: bool,
}

/// This node's appends to one conversation that are under way (see the module docs).
#[derive(Default)]
pub(super) struct Appending {
    /// Appends admitted and not yet done.
    under_way: u32,
    /// Set while a conditional append is under way: every later one waits for it.
    conditional: Option<tokio_util::sync::CancellationToken>,
}

/// An admitted append; leaving it (done, failed or dropped) updates [`Appending`].
pub(super) struct AppendSlot {
    nats: Arc<Nats>,
    subject: String,
    /// The token other appends wait on, for a conditional append.
    conditional: Option<tokio_util::sync::CancellationToken>,
}

impl Drop for AppendSlot {
    fn drop(&mut self) {
        let mut map = self
            .nats
            .appending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(a) = map.get_mut(&self.subject) {
            a.under_way = a.under_way.saturating_sub(1);
            if self.conditional.is_some() {
                a.conditional = None;
            }
            if a.under_way == 0 && a.conditional.is_none() {
                map.remove(&self.subject);
            }
        }
        drop(map);
        if let Some(done) = self.conditional.take() {
            done.cancel();
        }
    }
}

impl Nats {
    /// Records both users of a direct conversation as each other's chat relations (its first
    /// message does this; idempotent).
    async fn add_peers(&self, conv: ConvId) -> BackendResult<()> {
        if let ConvId::Direct(a, b) = conv {
            self.add_peer(a, b).await?;
            if a != b {
                self.add_peer(b, a).await?;
            }
        }
        Ok(())
    }

    /// Admits an append to `subject`: conditional (`true`) when no other append of this node
    /// to it is under way, else overlapping. An append that arrives while a conditional one
    /// is under way waits for it to be done, then overlaps (it is part of a burst).
    pub(super) async fn admit(self: &Arc<Self>, subject: &str) -> (bool, AppendSlot) {
        let mut waited = false;
        loop {
            let wait = {
                let mut map = self.appending.lock().unwrap_or_else(|e| e.into_inner());
                let a = map.entry(subject.to_string()).or_default();
                match &a.conditional {
                    Some(done) => done.clone(),
                    None => {
                        a.under_way += 1;
                        let conditional = a.under_way == 1 && !waited;
                        let token = conditional.then(tokio_util::sync::CancellationToken::new);
                        a.conditional = token.clone();
                        return (
                            conditional,
                            AppendSlot {
                                nats: self.clone(),
                                subject: subject.to_string(),
                                conditional: token,
                            },
                        );
                    }
                }
            };
            wait.cancelled().await;
            waited = true;
        }
    }

    /// Publishes one attempt of an append (the record linking to `prev`, conditional on it
    /// when `conditional`), returning once the publish is on the connection.
    pub(super) async fn publish_append(
        &self,
        subject: &str,
        msg: &NewMessage,
        dedupe: Option<&DedupeKey>,
        prev: Seq,
        conditional: bool,
    ) -> BackendResult<jetstream::context::PublishAckFuture> {
        let record = LogRecord {
            msg_id: msg.msg_id.clone(),
            sender_id: msg.sender_id,
            sender_uuid: msg.sender_uuid.clone(),
            sender_name: msg.sender_name.clone(),
            timestamp: msg.timestamp,
            body: msg.body.clone(),
            prev,
            gap: !conditional,
        };
        let mut headers = HeaderMap::new();
        if conditional {
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                prev.to_string().as_str(),
            );
        }
        if let Some(key) = dedupe {
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("{}:{}", key.sender_id, key.client_msg_id).as_str(),
            );
        }
        let payload = Bytes::from(serde_json::to_vec(&record).expect("serialises"));
        self.js
            .publish_with_headers(subject.to_string(), headers, payload)
            .await
            .map_err(unavailable)
    }

    /// The second phase of an append: awaits the stream's answer to the first attempt and,
    /// after a lost race (another node appended to the conversation first), reads the newest
    /// position and tries again.
    pub(super) async fn finish_append(
        &self,
        subject: String,
        msg: NewMessage,
        dedupe: Option<DedupeKey>,
        mut prev: Seq,
        conditional: bool,
        first: jetstream::context::PublishAckFuture,
    ) -> BackendResult<Appended> {
        let mut pending = Some(first);
        for _ in 0..32 {
            let ack = match pending.take() {
                Some(fut) => fut.await,
                None => {
                    self.publish_append(&subject, &msg, dedupe.as_ref(), prev, conditional)
                        .await?
                        .await
                }
            };
            match ack {
                Ok(ack) if ack.duplicate => {
                    let m = self.at(ack.sequence).await?.ok_or_else(|| {
                        unavailable_because("the original of a duplicate is gone")
                    })?;
                    let (message, link) = self.decode(&m)?;
                    // The first attempt may have been stored and then failed writing the chat
                    // relation (below): write it now, or the conversation would stay missing
                    // from relations, backlog and sync.
                    if link.prev == 0 {
                        self.add_peers(message.conv).await?;
                    }
                    return Ok(Appended {
                        message,
                        duplicate: true,
                    });
                }
                Ok(ack) => {
                    self.remember_last(&subject, Some(ack.sequence));
                    if prev == 0 {
                        self.add_peers(msg.conv).await?;
                    }
                    return Ok(Appended {
                        message: StoredMessage::from_new(msg, ack.sequence),
                        duplicate: false,
                    });
                }
                Err(e) if is_wrong_last_sequence(&e) => {
                    // Another node appended to this conversation: read its newest and retry.
                    // Nothing of this node is published behind a conditional append, so the
                    // retry keeps this node's order.
                    self.remember_last(&subject, None);
                    prev = self.last_of(&subject).await?.map_or(0, |m| m.sequence);
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(unavailable_because(format!(
            "too much contention appending to {subject}"
        )))
    }

    /// The messages of `subject` strictly between positions `after` and `before`, oldest
    /// first (the gap before a record whose link says `gap`).
    pub(super) async fn between(
        &self,
        subject: &str,
        after: Seq,
        before: Seq,
    ) -> BackendResult<Vec<(StoredMessage, Link)>> {
        let mut out = Vec::new();
        let mut from = after + 1;
        while from < before {
            let Some(m) = self.next_of(subject, from).await? else {
                break;
            };
            if m.sequence >= before {
                break;
            }
            from = m.sequence + 1;
            out.push(self.decode(&m)?);
        }
        Ok(out)
    }

    /// The newest message of a subject, if any.
    pub(super) async fn last_of(&self, subject: &str) -> BackendResult<Option<StreamMessage>> {
        match self.log.direct_get_last_for_subject(subject).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    pub(super) async fn next_of(
        &self,
        subject: &str,
        from: Seq,
    ) -> BackendResult<Option<StreamMessage>> {
        match self
            .log
            .direct_get_next_for_subject(subject, Some(from))
            .await
        {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    pub(super) async fn at(&self, seq: Seq) -> BackendResult<Option<StreamMessage>> {
        match self.log.direct_get(seq).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    // -- KV helpers --------------------------------------------------------------------------

    pub(super) fn decode(&self, m: &StreamMessage) -> BackendResult<(StoredMessage, Link)> {
        let rec: LogRecord = serde_json::from_slice(&m.payload)
            .map_err(|e| unavailable_with(format!("corrupt log record {}: {e}", m.sequence), e))?;
        let conv = self.conv_of(m.subject.as_str()).ok_or_else(|| {
            unavailable_because(format!(
                "log record {} has an unknown subject {}",
                m.sequence, m.subject
            ))
        })?;
        Ok((
            StoredMessage {
                seq: m.sequence,
                msg_id: rec.msg_id,
                conv,
                sender_id: rec.sender_id,
                sender_uuid: rec.sender_uuid,
                sender_name: rec.sender_name,
                timestamp: rec.timestamp,
                body: rec.body,
            },
            Link {
                prev: rec.prev,
                gap: rec.gap,
            },
        ))
    }

    pub(super) fn conv_of(&self, subject: &str) -> Option<ConvId> {
        let rest = subject.strip_prefix(&self.log_prefix)?.strip_prefix('.')?;
        let parts: Vec<&str> = rest.split('.').collect();
        match parts.as_slice() {
            ["p", a, b] => Some(ConvId::direct(a.parse().ok()?, b.parse().ok()?)),
            ["g", g] => Some(ConvId::Group(g.parse().ok()?)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetstream::context::{PublishError, PublishErrorKind};

    fn refused(answer: &str) -> PublishError {
        let api: jetstream::Error = serde_json::from_str(answer).expect("an API error");
        PublishError::with_source(PublishErrorKind::Other, api)
    }

    #[test]
    fn every_wrong_last_sequence_answer_is_recognised() {
        // One replica: the client classifies it itself.
        assert!(is_wrong_last_sequence(&PublishError::new(
            PublishErrorKind::WrongLastSequence
        )));
        // Three replicas: the clustered answer, which the client reports as `Other`.
        assert!(is_wrong_last_sequence(&refused(
            r#"{"code":400,"err_code":10164,"description":"wrong last sequence"}"#
        )));
        // The single-server answer arriving as `Other` (another client version).
        assert!(is_wrong_last_sequence(&refused(
            r#"{"code":400,"err_code":10071,"description":"wrong last sequence: 12"}"#
        )));
        // A code this build does not know, recognised by its description.
        assert!(is_wrong_last_sequence(&refused(
            r#"{"code":400,"err_code":19999,"description":"wrong last sequence"}"#
        )));
    }

    #[test]
    fn other_refusals_are_not_taken_for_a_lost_race() {
        assert!(!is_wrong_last_sequence(&refused(
            r#"{"code":503,"err_code":10077,"description":"error saving message"}"#
        )));
        assert!(!is_wrong_last_sequence(&refused(
            r#"{"code":400,"err_code":10070,"description":"wrong last msg ID: x"}"#
        )));
        assert!(!is_wrong_last_sequence(&PublishError::new(
            PublishErrorKind::TimedOut
        )));
        assert!(!is_wrong_last_sequence(&PublishError::new(
            PublishErrorKind::Other
        )));
    }
}
