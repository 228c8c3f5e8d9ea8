//! The `chat-zinx` binary: configuration layering and errors, `config` and `config --check`,
//! and `serve` start-up and shutdown.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_chat-zinx");

fn chat_zinx() -> Command {
    let mut c = Command::new(BIN);
    // Start from a clean slate: no inherited CHAT_ZINX_* settings, no RUST_LOG.
    for (k, _) in std::env::vars() {
        if k.starts_with("CHAT_ZINX_") || k == "RUST_LOG" || k == "STATE_DIRECTORY" {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn config_prints_defaults_overridden_by_file_then_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:9001\"\nnode_id = \"from-file\"\n[consul]\ntoken = \"file-secret\"\n",
    )
    .unwrap();
    let out = chat_zinx()
        .args(["--config", file.to_str().unwrap(), "config"])
        .env("CHAT_ZINX_SERVER__NODE_ID", "7")
        .env("CHAT_ZINX_PROTOCOL__MAX_BODY", "4096")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("listen = \"127.0.0.1:9001\""), "{text}");
    // An all-digit environment value for a string key stays a string.
    assert!(text.contains("node_id = \"7\""), "{text}");
    assert!(text.contains("max_body = 4096"), "{text}");
    assert!(
        text.contains("idle_timeout = \"3m\"") || text.contains("idle_timeout = \"180s\""),
        "{text}"
    );
    assert!(
        !text.contains("file-secret"),
        "secrets are redacted: {text}"
    );
    // The output is itself a valid configuration file.
    let again = dir.path().join("again.toml");
    std::fs::write(&again, text.replace("\"***\"", "\"x\"")).unwrap();
    let st = chat_zinx()
        .args(["config", "--check", again.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn config_check_accepts_the_example_and_rejects_bad_files_with_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, chat_zinx::config::EXAMPLE_TOML).unwrap();
    let out = chat_zinx()
        .args(["config", "--check", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for (content, needles) in [
        (
            "[protocol]\nmax_body = \"big\"\n",
            vec!["protocol.max_body", "bad.toml"],
        ),
        (
            "[server]\nlisten = \"not an address\"\n",
            vec!["server.listen"],
        ),
        ("[server]\nlistn = \"0.0.0.0:1\"\n", vec!["server.listn"]),
        (
            "[protocol]\nidle_timeout = \"soon\"\n",
            vec!["protocol.idle_timeout"],
        ),
        ("this is not toml", vec!["bad.toml"]),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, content).unwrap();
        let out = chat_zinx()
            .args(["config", "--check", bad.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{content} must be rejected");
        let err = String::from_utf8_lossy(&out.stderr);
        for n in needles {
            assert!(
                err.contains(n),
                "error for {content:?} must mention {n}: {err}"
            );
        }
    }
}

#[test]
fn serve_refuses_an_invalid_environment_value_naming_key_and_variable() {
    let dir = tempfile::tempdir().unwrap();
    let out = chat_zinx()
        .arg("serve")
        .env("CHAT_ZINX_SERVER__STATE_DIR", dir.path())
        .env("CHAT_ZINX_PROTOCOL__MAX_BODY", "lots")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("protocol.max_body"), "{err}");
    assert!(err.contains("CHAT_ZINX_PROTOCOL__MAX_BODY"), "{err}");

    let out = chat_zinx()
        .arg("serve")
        .env("CHAT_ZINX_SERVER__LISTN", "0.0.0.0:1")
        .output()
        .unwrap();
    assert!(!out.status.success(), "a misspelt variable is not ignored");
    assert!(String::from_utf8_lossy(&out.stderr).contains("CHAT_ZINX_SERVER__LISTN"));
}

#[test]
fn serve_answers_a_ping_and_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let child = chat_zinx()
        .arg("serve")
        .env("CHAT_ZINX_SERVER__LISTEN", "127.0.0.1:0")
        .env("CHAT_ZINX_SERVER__HTTP_LISTEN", "127.0.0.1:0")
        .env("CHAT_ZINX_SERVER__STATE_DIR", dir.path())
        .env("CHAT_ZINX_SERVER__NODE_ID", "42")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut addr = None;
    let mut saw_memory_notice = false;
    while addr.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the daemon logs its address");
        saw_memory_notice |=
            line.contains("in-process backends") && line.contains("lost when it stops");
        if line.contains("listening") {
            let start = line.find("addr=").expect("addr field") + 5;
            addr = Some(line[start..].split_whitespace().next().unwrap().to_string());
        }
    }
    assert!(
        saw_memory_notice,
        "start-up says that state is in memory only"
    );
    let addr = addr.unwrap();
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"\x04\x00\x00\x00\x01\x00\x00\x00ping")
        .unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"\x04\x00\x00\x00\x02\x00\x00\x00pong");
    // The node id came from the environment (all digits, as a string): none was generated.
    assert!(!dir.path().join("node_id").exists());

    let pid = child.0.id() as i32;
    assert_eq!(send_sigterm(pid), 0);
    let status = wait_timeout(&mut child.0, Duration::from_secs(30)).expect("exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    // The connected client was told, then closed.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
}

/// Kills the daemon if a test fails half-way, so no process outlives the test.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn send_sigterm(pid: i32) -> i32 {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .map(|s| if s.success() { 0 } else { 1 })
        .unwrap_or(1)
}

fn wait_timeout(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
