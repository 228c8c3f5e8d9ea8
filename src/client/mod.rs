//! The terminal and scripting client of chat-zinx (`chat-zinx client`).
//!
//! It speaks v2 by default (Hello, send acks, sync, redirect; `docs/protocol.md` §9) and,
//! with `--v1`, exactly the frames of the original Go client (`docs/protocol.md` §13), so
//! that the daemon's compatibility can be checked with it too.
//!
//! Two ways of running:
//! * at a terminal: commands are sent as typed; replies and incoming messages are printed as
//!   they arrive, in readable form;
//! * scripted (`--json`, `-e`, or stdin not a terminal): commands run one after another, each
//!   waiting for its reply; `--json` prints one JSON object per line, `/wait` and `/sleep` let a
//!   script wait for pushes; the exit status reports timeouts and connection failures.
//!
//! Modules: [`connection`] (framed TCP, reader task), [`commands`] (command lines → frames),
//! [`render`] (human and JSON output), [`dedupe`] and [`backoff`] (reconnect helpers) and the
//! session loop (reconnect, resume, sync, de-duplication).

pub mod admin;
pub mod backoff;
pub mod commands;
pub mod connection;
pub mod dedupe;
pub mod discovery;
pub mod render;
mod session;

use std::collections::VecDeque;
use std::io::{BufRead, IsTerminal};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;

use commands::Command;
use session::{Config, Input, Item, Session};

/// Input lines buffered between the stdin thread and the session.
const STDIN_CAPACITY: usize = 64;

/// Command-line arguments of the client.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    /// Server address (host:port), or several separated by commas (tried in turn).
    #[arg(value_name = "ADDR", default_value = "127.0.0.1:9000")]
    pub addr: String,

    /// Pick the least-loaded healthy node from this Consul (e.g. http://127.0.0.1:8500)
    /// instead of ADDR.
    #[arg(long, value_name = "URL")]
    pub consul: Option<String>,

    /// Print every reply, push, error and event as one JSON object per line.
    #[arg(long)]
    pub json: bool,

    /// Behave as the original v1 client: no Hello, only the original frames.
    #[arg(long)]
    pub v1: bool,

    /// Run this command (repeatable, in order), then exit; stdin is not read.
    #[arg(short = 'e', long = "exec", value_name = "COMMAND")]
    pub exec: Vec<String>,

    /// How long to wait for each reply (and for a connection), e.g. `10s`, `500ms`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Log in as this user right after connecting (needs --password).
    #[arg(long, value_name = "USERNAME")]
    pub user: Option<String>,

    /// Password for --user.
    #[arg(long, env = "CHAT_ZINX_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,

    /// Connect over TLS (the node's `tls.listen` port). An address may also be written
    /// `tls://host:port`. With --consul, only nodes that advertise TLS are used; without
    /// --tls, --consul still prefers TLS on the nodes that offer it.
    #[arg(long)]
    pub tls: bool,

    /// Trust the CA certificate(s) in this PEM file for TLS, instead of the public web roots
    /// (a node with a certificate of its own CA needs it).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,

    /// The name the server's TLS certificate must carry (default: the host of the address).
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
}

/// Run the client until `/quit`, the end of its commands, or (scripted) a failed connection.
///
/// Returns an error when a command timed out, failed for want of a connection, or could not be
/// parsed in a script, so that the process exit status tells a script whether all went well.
/// Replies that report an error of the daemon (wrong password, …) count as answered.
pub async fn run(args: ClientArgs) -> anyhow::Result<()> {
    let stdin_is_terminal = std::io::stdin().is_terminal();
    let sequential = args.json || !args.exec.is_empty() || !stdin_is_terminal;
    let mut queued = VecDeque::new();
    match (&args.user, &args.password) {
        (Some(username), Some(password)) => queued.push_back(Item::Command(Command::Login {
            username: username.clone(),
            password: password.clone(),
        })),
        (Some(_), None) => anyhow::bail!("--user needs --password (or CHAT_ZINX_PASSWORD)"),
        _ => {}
    }
    queued.extend(args.exec.iter().cloned().map(Item::Line));
    let stdin = if args.exec.is_empty() {
        Some(spawn_stdin_reader().context("starting the stdin reader")?)
    } else {
        None
    };
    if !args.json && !sequential {
        println!(
            "chat-zinx client {} — /help for commands",
            env!("CARGO_PKG_VERSION")
        );
    }
    let tls = connection::TlsClient::new(args.ca.as_deref(), args.server_name.as_deref())?;
    let cfg = Config {
        json: args.json,
        v1: args.v1,
        timeout: args.timeout,
        sequential,
        tls: Some(std::sync::Arc::new(tls)),
    };
    let addrs = match &args.consul {
        Some(consul) => discovery::nodes_from_consul(consul, "chat-zinx", None, args.tls).await?,
        None => args
            .addr
            .split(',')
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
            .map(|a| match connection::split_scheme(a) {
                (false, plain) if args.tls => format!("{}{plain}", connection::TLS_SCHEME),
                _ => a.to_string(),
            })
            .collect(),
    };
    let failures = Session::new(cfg, addrs).run(Input { queued, stdin }).await;
    if failures > 0 {
        anyhow::bail!("{failures} command(s) failed (timeout, no connection or bad command)");
    }
    Ok(())
}

/// Read stdin lines on a plain thread. Not `tokio::io::stdin`: its blocking read cannot be
/// cancelled, so a runtime shutting down after `/quit` would hang until the next Enter; a
/// detached thread simply ends with the process.
fn spawn_stdin_reader() -> std::io::Result<mpsc::Receiver<String>> {
    let (tx, rx) = mpsc::channel(STDIN_CAPACITY);
    std::thread::Builder::new()
        .name("client-stdin".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut lock = stdin.lock();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match lock.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        let line = line.trim_end_matches(['\n', '\r']).to_string();
                        if tx.blocking_send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        })?;
    Ok(rx)
}
