//! The daemon as systemd runs it: socket activation with `systemd-socket-activate` (the chat
//! and HTTP sockets, by name), a `NOTIFY_SOCKET` listener (a real filesystem datagram socket)
//! that records every notification, `WATCHDOG_USEC`, SIGHUP and SIGTERM.
//!
//! Needs `systemd-socket-activate` (Debian package `systemd`; scripts/test installs it).

mod http_client;
#[path = "support/pki.rs"]
mod pki;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_chat-zinx");
/// How long a test waits for something it expects (a safety net, not a timing assertion).
const WAIT: Duration = Duration::from_secs(30);

/// Lines collected by a reader thread, waited on with a deadline.
#[derive(Clone, Default)]
struct Lines(Arc<(Mutex<Vec<String>>, Condvar)>);

impl Lines {
    fn push(&self, line: String) {
        let (lock, cv) = &*self.0;
        lock.lock().unwrap().push(line);
        cv.notify_all();
    }

    fn snapshot(&self) -> Vec<String> {
        self.0 .0.lock().unwrap().clone()
    }

    /// Waits until a line at index >= `from` satisfies `pred`; returns its index.
    fn wait_for(&self, from: usize, what: &str, pred: impl Fn(&str) -> bool) -> usize {
        let (lock, cv) = &*self.0;
        let deadline = Instant::now() + WAIT;
        let mut lines = lock.lock().unwrap();
        loop {
            if let Some(i) = lines.iter().skip(from).position(|l| pred(l)) {
                return from + i;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "waited {WAIT:?} for {what}; got:\n{}",
                lines.join("\n")
            );
            lines = cv.wait_timeout(lines, left).unwrap().0;
        }
    }
}

/// A bound `NOTIFY_SOCKET`: every datagram's lines, in arrival order, each prefixed with the
/// datagram's number (`3 READY=1`).
fn notify_listener(path: &Path) -> Lines {
    let sock = UnixDatagram::bind(path).unwrap();
    let lines = Lines::default();
    let out = lines.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        let mut n_datagram = 0;
        while let Ok(n) = sock.recv(&mut buf) {
            n_datagram += 1;
            for l in String::from_utf8_lossy(&buf[..n]).lines() {
                out.push(format!("{n_datagram} {l}"));
            }
        }
    });
    lines
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the daemon if a test fails half-way, so no process outlives the test.
struct Daemon {
    child: Child,
    stderr: Lines,
    chat: SocketAddr,
    http: SocketAddr,
    /// The TLS chat socket (`chat-tls`), when asked for.
    tls: Option<SocketAddr>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// `systemd-socket-activate` listening on two fresh loopback ports (names `chat` and
    /// `http`), running `chat-zinx --config CONFIG serve` on the first connection.
    fn spawn(config: &Path, notify: &Path) -> Daemon {
        Self::spawn_with(config, notify, false)
    }

    /// [`Daemon::spawn`], with a third socket named `chat-tls` when `tls`.
    fn spawn_with(config: &Path, notify: &Path, tls: bool) -> Daemon {
        // The ports are free when picked; another process could take one before
        // systemd-socket-activate binds it, so a failed bind is retried with new ports.
        for _ in 0..5 {
            let chat: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let tls_addr: Option<SocketAddr> =
                tls.then(|| format!("127.0.0.1:{}", free_port()).parse().unwrap());
            let mut cmd = Command::new("systemd-socket-activate");
            cmd.arg(format!("--listen={chat}"))
                .arg(format!("--listen={http}"));
            match tls_addr {
                Some(t) => cmd
                    .arg(format!("--listen={t}"))
                    .arg("--fdname=chat:http:chat-tls"),
                None => cmd.arg("--fdname=chat:http"),
            };
            let mut child = cmd
                // Only what -E names reaches the daemon (and PATH, HOME, TERM).
                .arg(format!("--setenv=NOTIFY_SOCKET={}", notify.display()))
                .arg("--setenv=WATCHDOG_USEC=2000000")
                .arg(BIN)
                .arg("--config")
                .arg(config)
                .arg("serve")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("systemd-socket-activate runs (Debian package systemd)");
            let stderr = Lines::default();
            let out = stderr.clone();
            let pipe = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    out.push(line);
                }
            });
            // It says where it listens before waiting for the first connection.
            let deadline = Instant::now() + WAIT;
            loop {
                let lines = stderr.snapshot();
                if lines
                    .iter()
                    .filter(|l| l.starts_with("Listening on"))
                    .count()
                    == 2 + usize::from(tls)
                {
                    return Daemon {
                        child,
                        stderr,
                        chat,
                        http,
                        tls: tls_addr,
                    };
                }
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(
                        lines.iter().any(|l| l.contains("in use")),
                        "systemd-socket-activate exited ({status}):\n{}",
                        lines.join("\n")
                    );
                    break; // a port was taken meanwhile: try new ones
                }
                assert!(
                    Instant::now() < deadline,
                    "systemd-socket-activate did not listen:\n{}",
                    lines.join("\n")
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not find two free ports");
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit; log:\n{}",
                self.stderr.snapshot().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A raw chat connection (v1 frames).
struct Chat(TcpStream);

impl Chat {
    fn connect(addr: SocketAddr) -> Chat {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        Chat(s)
    }

    fn send(&mut self, id: u32, body: &[u8]) {
        let mut frame = Vec::new();
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&id.to_le_bytes());
        frame.extend_from_slice(body);
        self.0.write_all(&frame).unwrap();
    }

    /// The next frame, or `None` at end of stream.
    fn recv(&mut self) -> Option<(u32, Vec<u8>)> {
        let mut head = [0u8; 8];
        if self.0.read_exact(&mut head).is_err() {
            return None;
        }
        let len = u32::from_le_bytes(head[..4].try_into().unwrap()) as usize;
        let id = u32::from_le_bytes(head[4..].try_into().unwrap());
        let mut body = vec![0u8; len];
        self.0.read_exact(&mut body).ok()?;
        Some((id, body))
    }

    /// Ping, and the pong comes back: the connection is served. Everything sent before the
    /// ping has been handled once the pong arrives (frames are handled in order).
    fn ping(&mut self) {
        self.send(1, b"ping");
        assert_eq!(self.recv(), Some((2, b"pong".to_vec())));
    }
}

fn write_config(path: &Path, state: &Path, level: &str) {
    std::fs::write(
        path,
        format!(
            "[server]\nnode_id = \"sd-test\"\nstate_dir = \"{}\"\ndrain_window = \"3s\"\n[log]\nlevel = \"{level}\"\nformat = \"text\"\n",
            state.display()
        ),
    )
    .unwrap();
}

/// Index of the first line at or after `from` that starts with `prefix` (after the datagram
/// number), if any.
fn find(lines: &[String], from: usize, prefix: &str) -> Option<usize> {
    lines
        .iter()
        .skip(from)
        .position(|l| {
            l.split_once(' ')
                .is_some_and(|(_, s)| s.starts_with(prefix))
        })
        .map(|i| from + i)
}

fn datagram(line: &str) -> &str {
    line.split_once(' ').unwrap().0
}

#[test]
fn runs_socket_activated_notifies_reloads_on_sighup_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let state = dir.path().join("state");
    write_config(&config, &state, "info");
    let notify_path = dir.path().join("notify.sock");
    let notes = notify_listener(&notify_path);
    let mut daemon = Daemon::spawn(&config, &notify_path);
    let is = |prefix: &'static str| {
        move |l: &str| {
            l.split_once(' ')
                .is_some_and(|(_, s)| s.starts_with(prefix))
        }
    };

    // The first connection starts the daemon, which takes both sockets from systemd.
    let mut chat = Chat::connect(daemon.chat);
    chat.send(777, b"{}"); // an unknown id: logged at debug level only
    chat.ping();
    let ready = notes.wait_for(0, "READY=1", is("READY=1"));
    notes.wait_for(ready, "WATCHDOG=1", is("WATCHDOG=1"));
    daemon
        .stderr
        .wait_for(0, "the HTTP endpoint's log line", |l| {
            l.contains("HTTP endpoint up") && l.contains("socket_activated=true")
        });

    // The HTTP socket systemd passed serves /health, /ready and /metrics.
    let r = http_client::get(daemon.http, "/health");
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    let r = http_client::get(daemon.http, "/ready");
    assert_eq!(r.status, 200, "{}", r.body);
    let m = http_client::parse(&http_client::get(daemon.http, "/metrics").body);
    assert_eq!(
        http_client::value(&m, "chat_zinx_connections", &[]),
        Some(1.0)
    );
    assert_eq!(
        http_client::value(&m, "chat_zinx_node_info", &[("node_id", "sd-test")]),
        Some(1.0)
    );

    // SIGHUP with a new log level: RELOADING=1 (with MONOTONIC_USEC), then READY=1; the
    // connection stays, and debug events now show.
    assert!(
        !daemon
            .stderr
            .snapshot()
            .iter()
            .any(|l| l.contains("unknown message id")),
        "debug is off at level info"
    );
    write_config(&config, &state, "debug");
    let before_reload = notes.snapshot().len();
    daemon.signal("HUP");
    let reloading = notes.wait_for(before_reload, "RELOADING=1", is("RELOADING=1"));
    notes.wait_for(reloading + 1, "READY=1 after RELOADING=1", is("READY=1"));
    daemon.stderr.wait_for(0, "the reload's log line", |l| {
        l.contains("configuration reloaded") && l.contains("log.level")
    });
    chat.send(778, b"{}");
    chat.ping();
    daemon
        .stderr
        .wait_for(0, "a debug event after the reload", |l| {
            l.contains("unknown message id") && l.contains("778")
        });

    // A broken file is rejected; the running configuration (debug level) stays.
    std::fs::write(&config, "[server\nthis is not toml").unwrap();
    let before_broken = notes.snapshot().len();
    daemon.signal("HUP");
    let reloading2 = notes.wait_for(before_broken, "RELOADING=1", is("RELOADING=1"));
    notes.wait_for(
        reloading2 + 1,
        "READY=1 after a rejected reload",
        is("READY=1"),
    );
    daemon.stderr.wait_for(0, "the rejection", |l| {
        l.contains("configuration reload rejected") && l.contains("is not valid TOML")
    });
    chat.send(779, b"{}");
    chat.ping();
    daemon.stderr.wait_for(0, "debug still on", |l| {
        l.contains("unknown message id") && l.contains("779")
    });

    // SIGTERM: STOPPING=1, the client is told (99, code 13) and closed, exit code 0.
    let before_stop = notes.snapshot().len();
    daemon.signal("TERM");
    let stopping = notes.wait_for(before_stop, "STOPPING=1", is("STOPPING=1"));
    notes.wait_for(stopping, "EXTEND_TIMEOUT_USEC", is("EXTEND_TIMEOUT_USEC="));
    let (id, body) = chat.recv().expect("a farewell frame before the close");
    assert_eq!(id, 99);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["code"], 13, "{body}");
    assert_eq!(chat.recv(), None, "closed after the farewell");
    let status = daemon.wait_exit();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        daemon.stderr.snapshot().join("\n")
    );

    // The whole conversation with systemd, in order: READY (with STATUS), WATCHDOG,
    // RELOADING (with MONOTONIC_USEC), READY, STOPPING.
    let all = notes.snapshot();
    let ready = find(&all, 0, "READY=1").unwrap();
    let status = find(&all, 0, "STATUS=").unwrap();
    assert_eq!(datagram(&all[ready]), datagram(&all[status]), "{all:#?}");
    assert!(all[status].contains("node sd-test: "), "{all:#?}");
    let watchdog = find(&all, ready, "WATCHDOG=1").expect("WATCHDOG=1 after READY=1");
    let reloading = find(&all, watchdog, "RELOADING=1").expect("RELOADING=1 after WATCHDOG=1");
    let mono = find(&all, reloading, "MONOTONIC_USEC=").unwrap();
    assert_eq!(datagram(&all[reloading]), datagram(&all[mono]), "{all:#?}");
    let ready2 = find(&all, reloading, "READY=1").expect("READY=1 after RELOADING=1");
    let stopping = find(&all, ready2, "STOPPING=1").expect("STOPPING=1 last");
    assert!(find(&all, stopping, "READY=1").is_none(), "{all:#?}");
}

/// The TLS socket systemd passes (`chat-tls`) serves TLS with the configured certificate;
/// SIGHUP puts a renewed certificate in service for new connections without dropping the open
/// ones, and refuses a broken one, naming the file, while the old one keeps serving.
#[test]
fn serves_tls_on_the_activated_socket_and_rotates_the_certificate_on_sighup() {
    use chat_zinx::client::connection::{Connection, Inbound};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    let old_ca = pki::Ca::new(dir.path(), "old");
    old_ca.issue_to(&cert_file, &key_file);
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nnode_id = \"sd-tls\"\nstate_dir = \"{}\"\ndrain_window = \"1s\"\n\
             [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n[log]\nformat = \"text\"\n",
            state.display(),
            cert_file.display(),
            key_file.display()
        ),
    )
    .unwrap();
    let notify_path = dir.path().join("notify.sock");
    let _notes = notify_listener(&notify_path);
    let mut daemon = Daemon::spawn_with(&config, &notify_path, true);
    let target = format!("tls://{}", daemon.tls.unwrap());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let ping = |conn: &mut Connection| {
        rt.block_on(async {
            conn.send(1, b"ping").await.unwrap();
            match tokio::time::timeout(WAIT, conn.recv()).await.unwrap() {
                Inbound::Frame(f) => assert_eq!((f.id, &f.body[..]), (2, &b"pong"[..])),
                Inbound::Closed(why) => panic!("closed: {why}"),
            }
        })
    };
    let connect = |ca: &pki::Ca| rt.block_on(Connection::open(&target, WAIT, Some(&ca.client())));

    // The first connection (on the TLS socket) starts the daemon.
    let mut open = connect(&old_ca).expect("TLS with the configured certificate");
    ping(&mut open);
    daemon.stderr.wait_for(0, "the listening line", |l| {
        l.contains("listening") && l.contains("tls_addr")
    });

    // Renewal: a certificate of another CA in the same files, then SIGHUP.
    let new_ca = pki::Ca::new(dir.path(), "new");
    new_ca.issue_to(&cert_file, &key_file);
    let seen = daemon.stderr.snapshot().len();
    daemon.signal("HUP");
    daemon
        .stderr
        .wait_for(seen, "the certificate's reload", |l| {
            l.contains("TLS certificate reloaded")
        });
    let mut fresh = connect(&new_ca).expect("new connections get the new certificate");
    ping(&mut fresh);
    assert!(
        connect(&old_ca).is_err(),
        "the old certificate is no longer presented"
    );
    ping(&mut open);

    // A broken certificate file: refused, named, and the renewed pair keeps serving.
    std::fs::write(&cert_file, "not a certificate").unwrap();
    let seen = daemon.stderr.snapshot().len();
    daemon.signal("HUP");
    let at = daemon.stderr.wait_for(seen, "the refusal", |l| {
        l.contains("TLS certificate not reloaded")
    });
    let line = &daemon.stderr.snapshot()[at];
    assert!(line.contains(&cert_file.display().to_string()), "{line}");
    let mut again = connect(&new_ca).expect("the running certificate stays");
    ping(&mut again);
    ping(&mut open);

    daemon.signal("TERM");
    let status = daemon.wait_exit();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        daemon.stderr.snapshot().join("\n")
    );
}
