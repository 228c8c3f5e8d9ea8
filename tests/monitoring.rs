//! The monitoring files in deploy/monitoring (Prometheus alert rules, Grafana dashboard) query
//! only metrics the daemon exports: every `chat_zinx_*` series name in their PromQL is one the
//! daemon's /metrics declares (`# TYPE` lines, with the suffixes of each type).

mod http_client;
mod support;

use std::collections::BTreeSet;

use chat_zinx::harness::NatsServer;
use chat_zinx::protocol::ids;
use serde_json::Value;
use support::*;

const RULES: &str = "deploy/monitoring/alerts.rules.json";
const DASHBOARD: &str = "deploy/monitoring/dashboard.json";

/// Series names a real node's /metrics carries, from its `# TYPE` lines: a node on NATS that
/// has stored and delivered a message, so that every family has a series (a family without
/// one is not listed at all).
async fn exported_series() -> BTreeSet<String> {
    let nats = NatsServer::start().await;
    let url = nats.url();
    let secret = tempfile::tempdir().unwrap();
    let secret_file = secret.path().join("token_secret");
    let server = TestServer::with(move |c| {
        c.nats.url = Some(url);
        c.auth.token_secret_file = Some(secret_file);
    })
    .await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    alice.msg("bob", "counted").await;
    assert_eq!(bob.expect(ids::TEXT_MSG).await["content"], "counted");
    let http = server
        .node()
        .serve_http(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap();
    let r = tokio::task::spawn_blocking(move || http_client::get(http, "/metrics"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let text = r.body;
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        // prometheus-client names a counter's family with its `_total`.
        let name = name.strip_suffix("_total").unwrap_or(name);
        let suffixes: &[&str] = match kind {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "summary" => &["", "_sum", "_count"],
            "info" => &["_info"],
            _ => &[""],
        };
        for s in suffixes {
            names.insert(format!("{name}{s}"));
        }
    }
    server.stop().await;
    assert!(
        names.len() > 20,
        "too few metrics in /metrics: is the parse broken?\n{text}"
    );
    names
}

/// The `chat_zinx_*` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("chat_zinx_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            out.push(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

fn read_json(path: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// Every alert rule: its expression, with a `for`, a severity and a summary.
fn rule_exprs() -> Vec<(String, String)> {
    let rules = read_json(RULES);
    let mut out = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .expect("every rule is an alert")
                .to_string();
            assert!(rule["for"].is_string(), "{name}: no `for`");
            assert!(
                ["page", "warning"].contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
                "{name}: severity is page or warning"
            );
            assert!(
                rule["annotations"]["summary"].is_string(),
                "{name}: no summary"
            );
            out.push((name, rule["expr"].as_str().expect("expr").to_string()));
        }
    }
    out
}

fn dashboard_exprs() -> Vec<(String, String)> {
    let dash = read_json(DASHBOARD);
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("title").to_string();
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} queries nothing");
        for t in targets {
            out.push((title.clone(), t["expr"].as_str().expect("expr").to_string()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alerts_and_the_dashboard_query_only_exported_metrics() {
    let exported = exported_series().await;
    let mut queried = BTreeSet::new();
    let mut unknown = Vec::new();
    for (file, exprs) in [(RULES, rule_exprs()), (DASHBOARD, dashboard_exprs())] {
        assert!(!exprs.is_empty(), "{file} has no queries");
        for (what, expr) in exprs {
            let names = metric_names(&expr);
            assert!(
                !names.is_empty() || expr.contains("up{job=\"chat-zinx\"}"),
                "{file}: {what} queries no chat-zinx metric: {expr}"
            );
            for name in names {
                if !exported.contains(&name) {
                    unknown.push(format!("{file}: {what}: {name}"));
                }
                queried.insert(name);
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics the daemon does not export (its /metrics declares {exported:?}):\n{}",
        unknown.join("\n")
    );
    // The figures the issue asks for are there.
    for name in [
        "chat_zinx_cross_node_deliveries_total",
        "chat_zinx_delivery_latency_seconds_bucket",
        "chat_zinx_bus_messages_total",
        "chat_zinx_backend_queue_depth",
        "chat_zinx_backend_up",
        "chat_zinx_cluster_nodes",
        "chat_zinx_users",
        "chat_zinx_slow_consumer_disconnects_total",
    ] {
        assert!(queried.contains(name), "nothing queries {name}");
    }
}

#[test]
fn the_metric_name_scan_finds_whole_names_only() {
    assert_eq!(
        metric_names("sum by (le) (rate(chat_zinx_a_bucket[5m])) / my_chat_zinx_b + chat_zinx_c"),
        ["chat_zinx_a_bucket", "chat_zinx_c"]
    );
}
