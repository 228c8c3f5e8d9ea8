//! `history`: group history pages from a log filled through the daemon's own store code, for
//! a conversation at the start, the end and spread over the whole log. The substrate reads the
//! same pages straight off JetStream (direct gets by subject, then the `prev` links).

use std::time::Instant;

use anyhow::{anyhow, bail};
use indicatif::ProgressBar;
use serde_json::{json, Value};

use super::{progress, Bench};
use crate::bench::client::{self, Conn};
use crate::bench::report::ScenarioReport;
use crate::bench::stats::Latency;
use crate::core::model::{ConvId, MessageBody, NewMessage};
use crate::core::ports::Store;
use crate::protocol::ids;

pub(super) async fn history(b: &mut Bench) -> anyhow::Result<ScenarioReport> {
    let s = b.sizes.clone();
    let mut report = ScenarioReport::new("history");
    let nodes = b.start_nodes(1, 0)?;
    let user = b.users(1).await?.remove(0);
    let mut conn = Conn::open(nodes[0].addr, None).await?;
    conn.resume(&user.token).await?;
    let mut gids = Vec::new();
    for name in ["bench-early", "bench-spread", "bench-late"] {
        conn.send_json(
            ids::CREATE_GROUP_REQ,
            &json!({"name": name, "description": "bench"}),
        )
        .await?;
        let r = conn.expect(ids::CREATE_GROUP_RESP).await?;
        gids.push(
            r["id"]
                .as_u64()
                .ok_or_else(|| anyhow!("create group: {r}"))?,
        );
    }
    let (early, spread, late) = (gids[0], gids[1], gids[2]);
    let tail =
        b.js.get_stream("CHAT_ZINX")
            .await?
            .info()
            .await?
            .state
            .last_sequence;

    // Fill through the daemon's own store code (`NatsStore::append`), one append at a time
    // per conversation and many conversations at once: the records and their `prev` links
    // are exactly what the daemon writes.
    let edge = 200usize.min(s.history_messages / 10);
    let bulk = s.history_messages - 2 * edge;
    let convs = 256usize;
    let fill_start = Instant::now();
    let pb = progress(s.history_messages as u64, "filling the log");
    let uid = user.id;
    let append = |group: u64, n: usize, pb: ProgressBar| {
        let store = b.store.clone();
        let payload = s.payload;
        async move {
            let mut seqs = Vec::with_capacity(n);
            for i in 0..n {
                let msg = NewMessage {
                    msg_id: uuid::Uuid::new_v4().to_string(),
                    conv: ConvId::Group(group),
                    sender_id: uid,
                    sender_uuid: String::new(),
                    sender_name: "bench".into(),
                    timestamp: crate::core::model::now_ms(),
                    body: MessageBody::Group {
                        group_id: group,
                        content: client::stamp(9, i as u64, payload),
                    },
                };
                let a = store
                    .append(msg, None)
                    .await
                    .map_err(|e| anyhow!("append: {e}"))?;
                seqs.push(a.message.seq);
                pb.inc(1);
            }
            Ok::<_, anyhow::Error>(seqs)
        }
    };
    append(early, edge, pb.clone()).await?;
    let per = bulk / convs;
    let mut tasks = Vec::new();
    for k in 0..convs {
        let group = if k == 0 {
            spread
        } else {
            10_000_000 + k as u64
        };
        let n = if k == 0 { per + bulk % convs } else { per };
        tasks.push(tokio::spawn(append(group, n, pb.clone())));
    }
    let mut spread_seqs = Vec::new();
    for (k, t) in tasks.into_iter().enumerate() {
        let seqs = t.await??;
        if k == 0 {
            spread_seqs = seqs;
        }
    }
    append(late, edge, pb.clone()).await?;
    pb.finish_and_clear();
    let fill_secs = fill_start.elapsed().as_secs_f64();
    let stream_last =
        b.js.get_stream("CHAT_ZINX")
            .await?
            .info()
            .await?
            .state
            .last_sequence;
    // Deep in the spread conversation: a page that starts near the beginning of the log.
    let deep = spread_seqs
        .get(40.min(spread_seqs.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0);

    let probes = [
        ("early_newest", early, 0u64),
        ("late_newest", late, 0),
        ("spread_newest", spread, 0),
        ("spread_near_start", spread, deep),
    ];
    let limit = 20u64;
    let stream = b.js.get_stream("CHAT_ZINX").await?;
    let mut chat_all = Latency::default();
    let mut sub_all = Latency::default();
    let (mut chat_msgs, mut chat_secs, mut sub_msgs, mut sub_secs) = (0u64, 0f64, 0u64, 0f64);
    let mut per_probe = serde_json::Map::new();
    for (label, gid, last_id) in probes {
        let mut h = Latency::default();
        let mut n_msgs = 0u64;
        let pb = progress(s.history_pages as u64, &format!("history {label}"));
        let t0 = Instant::now();
        for _ in 0..s.history_pages {
            let t = Instant::now();
            conn.send_json(
                ids::GROUP_HISTORY_REQ,
                &json!({"group_id": gid, "last_id": last_id, "limit": limit}),
            )
            .await?;
            let r = conn.expect(ids::GROUP_HISTORY_RESP).await?;
            h.record(t.elapsed());
            let got = r["messages"].as_array().map_or(0, Vec::len) as u64;
            if got == 0 {
                bail!("history {label} returned no messages: {r}");
            }
            n_msgs += got;
            pb.inc(1);
        }
        chat_secs += t0.elapsed().as_secs_f64();
        chat_msgs += n_msgs;
        pb.finish_and_clear();
        // The same reads straight on JetStream: the newest before the cursor, then `prev`.
        let subject = format!("cz.log.g.{gid}");
        let mut sh = Latency::default();
        let t0 = Instant::now();
        for _ in 0..s.history_pages {
            let t = Instant::now();
            let first = if last_id == 0 {
                stream.direct_get_last_for_subject(&subject).await?
            } else {
                let m = stream
                    .direct_get_next_for_subject(&subject, Some(last_id))
                    .await?;
                let prev = prev_of(&m.payload)?;
                stream.direct_get(prev).await?
            };
            let mut next = prev_of(&first.payload)?;
            let mut got = 1;
            while next != 0 && got < limit {
                let m = stream.direct_get(next).await?;
                next = prev_of(&m.payload)?;
                got += 1;
            }
            sh.record(t.elapsed());
            sub_msgs += got;
        }
        sub_secs += t0.elapsed().as_secs_f64();
        let (c, x) = (h.summary(), sh.summary());
        per_probe.insert(
            label.into(),
            json!({"group_id": gid, "last_id": last_id, "p50_us": c.p50_us, "p99_us": c.p99_us,
                   "substrate_p50_us": x.p50_us, "substrate_p99_us": x.p99_us}),
        );
        chat_all.merge(&h);
        sub_all.merge(&sh);
    }
    report.daemon_rss_bytes = Bench::rss(&nodes);
    drop(conn);
    drop(nodes);

    report.nodes = 1;
    report.clients = 1;
    report.delivered = chat_msgs;
    report.throughput_msgs_per_s = chat_msgs as f64 / chat_secs.max(1e-9);
    report.latency(chat_all.summary());
    report.substrate =
        "direct gets on JetStream: last/next by subject, then the prev links (no chat layer)"
            .into();
    report.substrate_throughput_msgs_per_s = sub_msgs as f64 / sub_secs.max(1e-9);
    report.substrate_latency(sub_all.summary());
    report.extra("log_messages", stream_last);
    report.extra("filled_messages", s.history_messages);
    report.extra("fill_msgs_per_s", (stream_last - tail) as f64 / fill_secs);
    report.extra("fill_seconds", fill_secs);
    report.extra("page_size", limit);
    report.extra("probes", Value::Object(per_probe));
    Ok(report)
}

fn prev_of(payload: &[u8]) -> anyhow::Result<u64> {
    let v: Value = serde_json::from_slice(payload)?;
    v["prev"]
        .as_u64()
        .ok_or_else(|| anyhow!("a log record without prev"))
}
