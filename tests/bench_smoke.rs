//! Smoke test of `chat-zinx bench`: every scenario runs with tiny sizes against real
//! nats-server and redis-server (started by the bench itself) and reports sane fields. It
//! asserts that the bench completes and what it reports is well formed, never a speed.

use std::process::Command;

use serde_json::Value;

const SCENARIOS: [&str; 6] = [
    "p2p-local",
    "p2p-cross",
    "group-fanout",
    "idle",
    "login-storm",
    "history",
];

#[test]
fn every_scenario_completes_with_tiny_sizes_and_reports_sane_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("bench.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_chat-zinx"))
        .args(["bench", "--tiny", "--json"])
        .arg(&json)
        .env_remove("CHAT_ZINX_CONFIG")
        .output()
        .expect("run chat-zinx bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let text = std::fs::read_to_string(&json).expect("the JSON file");
    let reports: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let names: Vec<&str> = reports
        .iter()
        .map(|r| r["scenario"].as_str().expect("scenario name"))
        .collect();
    assert_eq!(names, SCENARIOS, "one object per scenario, in order");
    for r in &reports {
        let name = r["scenario"].as_str().unwrap();
        for key in [
            "delivered",
            "throughput_msgs_per_s",
            "p50_us",
            "p99_us",
            "p999_us",
            "rss_bytes_per_conn",
            "substrate_throughput_msgs_per_s",
            "ratio",
        ] {
            assert!(r.get(key).is_some(), "{name}: no {key} in {r}");
        }
        assert!(r["delivered"].as_u64().unwrap() > 0, "{name}: {r}");
        assert!(
            r["throughput_msgs_per_s"].as_f64().unwrap() > 0.0,
            "{name}: {r}"
        );
        assert!(
            r["substrate_throughput_msgs_per_s"].as_f64().unwrap() > 0.0,
            "{name}: {r}"
        );
        let ratio = r["ratio"].as_f64().unwrap();
        assert!(ratio > 0.0 && ratio.is_finite(), "{name}: ratio {ratio}");
        assert_eq!(r["errors"].as_u64(), Some(0), "{name}: {r}");
        if name == "idle" {
            // RSS grows by pages: with a handful of connections the growth may even be 0.
            assert!(r["rss_bytes_per_conn"].as_f64().is_some(), "{r}");
        } else {
            assert!(r["p50_us"].as_u64().unwrap() > 0, "{name}: no latency: {r}");
            assert!(r["p50_us"].as_u64() <= r["p999_us"].as_u64(), "{name}: {r}");
        }
    }
    // The table at the end names every scenario.
    for name in SCENARIOS {
        assert!(stdout.contains(name), "table without {name}:\n{stdout}");
    }
}
