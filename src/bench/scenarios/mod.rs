//! The scenarios. Each starts the daemon nodes it needs (child processes), connects its
//! clients, measures the chat path, then the same pattern through the substrate, and
//! returns a [`ScenarioReport`].
//!
//! One file per scenario (`p2p.rs`, `group_fanout.rs`, `idle.rs`, `login_storm.rs`,
//! `history.rs`); what they share: `setup.rs` ([`Bench`]: servers, store, users), `flow.rs`
//! (senders and receivers driven through the measured phases) and `source.rs` (loopback source
//! addresses). This file runs the chosen scenarios one after another and reports them.

mod flow;
mod group_fanout;
mod history;
mod idle;
mod login_storm;
mod p2p;
mod setup;
mod source;

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

use super::report::{table, ScenarioReport};
use super::stats;
use super::{BenchArgs, Scenario};

pub use setup::{Bench, BenchUser};

fn progress(len: u64, prefix: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>28} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(prefix.to_string());
    pb
}

fn say(what: &str) {
    eprintln!("bench: {what}");
}

async fn one(b: &mut Bench, scenario: Scenario) -> anyhow::Result<ScenarioReport> {
    let start = Instant::now();
    let mut r = match scenario {
        Scenario::P2pLocal => p2p::p2p(b, false).await?,
        Scenario::P2pCross => p2p::p2p(b, true).await?,
        Scenario::GroupFanout => group_fanout::group_fanout(b).await?,
        Scenario::Idle => idle::idle(b).await?,
        Scenario::LoginStorm => login_storm::login_storm(b).await?,
        Scenario::History => history::history(b).await?,
    };
    r.ratios();
    r.loadavg = stats::loadavg();
    r.elapsed_s = start.elapsed().as_secs_f64();
    Ok(r)
}

pub async fn run_all(args: &BenchArgs, scenarios: &[Scenario]) -> anyhow::Result<()> {
    let sizes = args.sizes();
    let (cores, mem) = stats::machine();
    say(&format!(
        "{cores} cores, {:.1} GiB, load {:.2}; scenarios: {}",
        mem as f64 / (1u64 << 30) as f64,
        stats::loadavg(),
        scenarios
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut bench = Bench::start(sizes).await?;
    let mut json_out: Option<Box<dyn Write>> = match &args.json {
        None => None,
        Some(p) if p.as_os_str() == "-" => Some(Box::new(std::io::stdout())),
        Some(p) => Some(Box::new(
            std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?,
        )),
    };
    let mut reports = Vec::new();
    let mut failed = Vec::new();
    for &s in scenarios {
        say(&format!("{} …", s.name()));
        match one(&mut bench, s).await {
            Ok(r) => {
                if let Some(out) = json_out.as_mut() {
                    writeln!(out, "{}", serde_json::to_string(&r)?)?;
                    out.flush()?;
                }
                say(&format!(
                    "{}: {:.0}/s (substrate {:.0}/s, ratio {:.2}), p99 {} µs",
                    r.scenario,
                    r.throughput_msgs_per_s,
                    r.substrate_throughput_msgs_per_s,
                    r.ratio,
                    r.p99_us
                ));
                reports.push(r);
            }
            Err(e) => {
                say(&format!("{} FAILED: {e:#}", s.name()));
                failed.push(s.name());
            }
        }
    }
    let summary = table(&reports);
    if args.json.as_ref().is_some_and(|p| p.as_os_str() == "-") {
        eprint!("{summary}");
    } else {
        print!("{summary}");
    }
    if args.keep_logs {
        let Bench { dir, .. } = bench;
        let kept = dir.keep();
        say(&format!("logs kept in {}", kept.display()));
    } else {
        drop(bench);
    }
    if !failed.is_empty() {
        bail!("scenarios failed: {}", failed.join(", "));
    }
    Ok(())
}
