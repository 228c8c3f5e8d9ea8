//! What a scenario reports: one JSON object per scenario and a table at the end.

use serde::Serialize;
use serde_json::{Map, Value};

use super::stats::Percentiles;

/// The result of one scenario. Latencies are sender-send to receiver-read, in µs, measured
/// at half of the maximum load (see `load_msgs_per_s`); throughputs are messages delivered
/// per second at the maximum load (for `idle` and `login-storm`: logins per second; for
/// `history`: messages read per second through history pages).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScenarioReport {
    pub scenario: String,
    pub nodes: usize,
    pub clients: usize,
    pub delivered: u64,
    pub throughput_msgs_per_s: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// The offered load (messages or deliveries per second) of the latency phase.
    pub load_msgs_per_s: f64,
    /// p99 at the maximum load (queueing included).
    pub max_load_p99_us: u64,
    /// Daemon RSS growth per connection (`idle`), else `null`.
    pub rss_bytes_per_conn: Option<f64>,
    /// Daemon RSS (all nodes) at the end of the measurement.
    pub daemon_rss_bytes: u64,
    /// Daemon CPU (all nodes) during the max-load phase, percent of one core.
    pub daemon_cpu_percent: f64,
    /// nats-server CPU during the same phase.
    pub nats_cpu_percent: f64,
    pub errors: u64,
    /// What the substrate run was.
    pub substrate: String,
    pub substrate_throughput_msgs_per_s: f64,
    pub substrate_p50_us: u64,
    pub substrate_p99_us: u64,
    pub substrate_p999_us: u64,
    pub substrate_rss_bytes_per_conn: Option<f64>,
    /// chat-zinx / substrate: throughput (memory per connection for `idle`).
    pub ratio: f64,
    /// chat-zinx p99 / substrate p99 at the same offered load.
    pub p99_ratio: f64,
    /// The 1-minute load average when the scenario ended (noise on a shared machine).
    pub loadavg: f64,
    pub elapsed_s: f64,
    /// Scenario-specific figures (raw TCP relay, fill rate, per-probe latencies …).
    pub extra: Map<String, Value>,
}

impl ScenarioReport {
    pub fn new(scenario: &str) -> Self {
        ScenarioReport {
            scenario: scenario.into(),
            ..Default::default()
        }
    }

    pub fn latency(&mut self, p: Percentiles) {
        self.p50_us = p.p50_us;
        self.p90_us = p.p90_us;
        self.p99_us = p.p99_us;
        self.p999_us = p.p999_us;
    }

    pub fn substrate_latency(&mut self, p: Percentiles) {
        self.substrate_p50_us = p.p50_us;
        self.substrate_p99_us = p.p99_us;
        self.substrate_p999_us = p.p999_us;
    }

    /// Fills the ratios from the figures.
    pub fn ratios(&mut self) {
        self.ratio = match (self.rss_bytes_per_conn, self.substrate_rss_bytes_per_conn) {
            (Some(c), Some(s)) if s > 0.0 => c / s,
            _ if self.substrate_throughput_msgs_per_s > 0.0 => {
                self.throughput_msgs_per_s / self.substrate_throughput_msgs_per_s
            }
            _ => 0.0,
        };
        self.p99_ratio = if self.substrate_p99_us > 0 {
            self.p99_us as f64 / self.substrate_p99_us as f64
        } else {
            0.0
        };
    }

    pub fn extra(&mut self, key: &str, v: impl Serialize) {
        self.extra
            .insert(key.into(), serde_json::to_value(v).unwrap_or(Value::Null));
    }
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1024.0 * 1024.0))
}

/// The table printed at the end of a run.
pub fn table(reports: &[ScenarioReport]) -> String {
    let header = [
        "scenario",
        "delivered",
        "per s",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p999 µs",
        "sub per s",
        "sub p99",
        "ratio",
        "p99 ×",
        "RSS MiB",
        "CPU %",
        "B/conn",
    ];
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            vec![
                r.scenario.clone(),
                r.delivered.to_string(),
                human(r.throughput_msgs_per_s),
                r.p50_us.to_string(),
                r.p90_us.to_string(),
                r.p99_us.to_string(),
                r.p999_us.to_string(),
                human(r.substrate_throughput_msgs_per_s),
                r.substrate_p99_us.to_string(),
                format!("{:.2}", r.ratio),
                format!("{:.2}", r.p99_ratio),
                mib(r.daemon_rss_bytes),
                format!("{:.0}", r.daemon_cpu_percent),
                r.rss_bytes_per_conn
                    .map_or_else(|| "-".into(), |b| format!("{b:.0}")),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let mut s = String::from("|");
        for (c, w) in cells.iter().zip(&widths) {
            s.push_str(&format!(" {c:>w$} |", w = *w));
        }
        s.push('\n');
        s
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out.push_str(&line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    for row in rows {
        out.push_str(&line(row));
    }
    out
}
