//! `chat-zinx admin`: the admin API of a node (`/admin/...` on its HTTP listener, see
//! docs/operations.md "Admin API") from the command line, with readable output or, with
//! `--json`, the API's answer as one JSON line.
//!
//! The node's URL and the token file come from the options, else from the configuration
//! (`server.http_listen`, `admin.token_file`; the command's caller reads it and passes
//! [`Defaults`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Args, Debug, Clone)]
pub struct AdminArgs {
    /// The node's HTTP endpoint, e.g. http://127.0.0.1:9100. Default: server.http_listen of
    /// the configuration.
    #[arg(long, global = true, value_name = "URL", env = "CHAT_ZINX_ADMIN_URL")]
    pub url: Option<String>,
    /// File holding the admin token. Default: admin.token_file of the configuration.
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Print the API's answer as one JSON object.
    #[arg(long, global = true)]
    pub json: bool,
    /// The name the node logs as the actor of each action (default: $USER).
    #[arg(long, global = true, value_name = "NAME")]
    pub actor: Option<String>,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum AdminCommand {
    /// The nodes of the cluster (the registry: Consul, else this node) and their load.
    Nodes,
    /// A user's sessions on every node. WHO: numeric id, UUID or username.
    Sessions { who: String },
    /// Close a user's sessions: all of them on every node, or one (--session) or one
    /// device's (--device). The client gets 99 code 17 with the reason.
    Kick {
        who: String,
        /// One session, NODE/CONN as `sessions` lists it.
        #[arg(long, conflicts_with = "device")]
        session: Option<String>,
        /// The sessions that logged in with this device name.
        #[arg(long)]
        device: Option<String>,
        /// What the client is told.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Refuse every login token of a user issued up to now, on every node (open sessions
    /// stay: kick them too to end them).
    Revoke { who: String },
    /// Drain this node: no new connections, its clients redirected to other nodes over
    /// server.drain_window; the process keeps running.
    Drain,
    /// Take a drained node back into service.
    Undrain,
}

/// What the configuration says, when the options do not.
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    /// `server.http_listen` as a URL.
    pub url: Option<String>,
    /// `admin.token_file`.
    pub token_file: Option<PathBuf>,
}

/// `http://HOST:PORT` for a listen address (an unspecified IP becomes the loopback one).
pub fn url_of_listen(listen: &str) -> String {
    let (host, port) = listen.rsplit_once(':').unwrap_or((listen, "9100"));
    let host = match host {
        "0.0.0.0" | "" => "127.0.0.1",
        "[::]" => "[::1]",
        h => h,
    };
    format!("http://{host}:{port}")
}

/// Runs one admin command; an error (refused, not found, unreachable) is returned after the
/// output (with `--json`, the API's error body is printed too).
pub async fn run(args: AdminArgs, defaults: Defaults) -> anyhow::Result<()> {
    let base = args
        .url
        .clone()
        .or(defaults.url)
        .context("no node URL: give --url http://HOST:PORT (the node's server.http_listen)")?;
    let token_file = args.token_file.clone().or(defaults.token_file).context(
        "no admin token: give --token-file FILE, or set admin.token_file in the configuration",
    )?;
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("cannot read the admin token file {}", token_file.display()))?;
    let token = token.trim();
    if token.is_empty() {
        bail!("the admin token file {} is empty", token_file.display());
    }
    let actor = args
        .actor
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_default();

    let (method, segments, body): (reqwest::Method, Vec<&str>, Option<Value>) = match &args.command
    {
        AdminCommand::Nodes => (reqwest::Method::GET, vec!["admin", "nodes"], None),
        AdminCommand::Sessions { who } => (
            reqwest::Method::GET,
            vec!["admin", "users", who, "sessions"],
            None,
        ),
        AdminCommand::Kick {
            who,
            session,
            device,
            reason,
        } => {
            let mut b = json!({});
            if let Some(s) = session {
                b["session"] = json!(s);
            }
            if let Some(d) = device {
                b["device"] = json!(d);
            }
            if let Some(r) = reason {
                b["reason"] = json!(r);
            }
            (
                reqwest::Method::POST,
                vec!["admin", "users", who, "kick"],
                Some(b),
            )
        }
        AdminCommand::Revoke { who } => (
            reqwest::Method::POST,
            vec!["admin", "users", who, "revoke-tokens"],
            None,
        ),
        AdminCommand::Drain => (reqwest::Method::POST, vec!["admin", "drain"], None),
        AdminCommand::Undrain => (reqwest::Method::POST, vec!["admin", "undrain"], None),
    };
    let mut url = reqwest::Url::parse(&base)
        .with_context(|| format!("--url {base:?} is not a URL such as http://127.0.0.1:9100"))?;
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("--url {base:?} cannot take a path"))?
        .pop_if_empty()
        .extend(&segments);
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .context("cannot set up the HTTP client")?;
    let mut req = client
        .request(method, url.clone())
        .bearer_auth(token)
        .header("x-admin-actor", actor);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach the admin API at {url}: is the node running, and is --url its server.http_listen?"))?;
    let status = resp.status();
    let text = resp.text().await.context("reading the answer")?;
    let answer: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| json!({"error": text.trim()}));
    if args.json {
        println!("{answer}");
    }
    if !status.is_success() {
        let why = answer["error"].as_str().unwrap_or("(no reason given)");
        bail!(
            "{} {}: {why}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
    }
    if !args.json {
        print!("{}", human(&args.command, &answer));
    }
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn user_line(u: &Value) -> String {
    format!(
        "{} (id {}, uuid {})",
        s(&u["username"]),
        s(&u["id"]),
        s(&u["uuid"])
    )
}

fn time_of_ms(ms: &Value) -> String {
    ms.as_i64()
        .and_then(|ms| time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| s(ms))
}

fn sessions_table(list: &[Value]) -> String {
    let mut out = String::new();
    for x in list {
        out.push_str(&format!(
            "  {:<28} device {:<16} since {}\n",
            s(&x["session"]),
            s(&x["device"]),
            time_of_ms(&x["since_ms"])
        ));
    }
    out
}

/// The answer for a person.
fn human(command: &AdminCommand, a: &Value) -> String {
    let empty = Vec::new();
    match command {
        AdminCommand::Nodes => {
            let nodes = a["nodes"].as_array().unwrap_or(&empty);
            let mut out = format!(
                "{:<24} {:<24} {:>12} {:>6}  state\n",
                "node", "address", "connections", "load"
            );
            for n in nodes {
                let state = if n["draining"] == true {
                    "draining"
                } else {
                    "serving"
                };
                let this = if n["this_node"] == true {
                    " (this node)"
                } else {
                    ""
                };
                out.push_str(&format!(
                    "{:<24} {:<24} {:>12} {:>5.1}%  {state}{this}\n",
                    s(&n["node_id"]),
                    s(&n["addr"]),
                    format!("{}/{}", s(&n["connections"]), s(&n["capacity"])),
                    n["load"].as_f64().unwrap_or(0.0) * 100.0,
                ));
            }
            out
        }
        AdminCommand::Sessions { .. } => {
            let list = a["sessions"].as_array().unwrap_or(&empty);
            format!(
                "{}: {} session{}\n{}",
                user_line(&a["user"]),
                list.len(),
                if list.len() == 1 { "" } else { "s" },
                sessions_table(list)
            )
        }
        AdminCommand::Kick { .. } => {
            let list = a["kicked"].as_array().unwrap_or(&empty);
            let mut out = if a["all"] == true {
                format!(
                    "every session of {} closed, on every node ({} known to presence):\n",
                    user_line(&a["user"]),
                    list.len()
                )
            } else {
                format!(
                    "closed {} session{} of {}:\n",
                    list.len(),
                    if list.len() == 1 { "" } else { "s" },
                    user_line(&a["user"])
                )
            };
            out.push_str(&sessions_table(list));
            out.push_str(&format!("reason given: {}\n", s(&a["reason"])));
            out
        }
        AdminCommand::Revoke { .. } => {
            let from = a["tokens_valid_from"].as_i64().unwrap_or(0);
            format!(
                "login tokens of {} issued before {} are refused on every node; open sessions stay open (chat-zinx admin kick {})\n",
                user_line(&a["user"]),
                time_of_ms(&json!(from * 1000)),
                s(&a["user"]["id"]),
            )
        }
        AdminCommand::Drain => {
            if a["already_draining"] == true {
                format!("node {} was already draining\n", s(&a["node_id"]))
            } else {
                format!(
                    "node {} draining: takes no new connections; its {} logged-in connection{} are redirected to other nodes over {} ms; the process keeps running (chat-zinx admin undrain to take it back)\n",
                    s(&a["node_id"]),
                    s(&a["connections"]),
                    if a["connections"] == 1 { "" } else { "s" },
                    s(&a["drain_window_ms"]),
                )
            }
        }
        AdminCommand::Undrain => {
            if a["was_draining"] == true {
                format!("node {} is serving again\n", s(&a["node_id"]))
            } else {
                format!("node {} was not draining\n", s(&a["node_id"]))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listen_address_becomes_a_url() {
        assert_eq!(url_of_listen("127.0.0.1:9100"), "http://127.0.0.1:9100");
        assert_eq!(url_of_listen("0.0.0.0:9101"), "http://127.0.0.1:9101");
        assert_eq!(url_of_listen("[::]:9100"), "http://[::1]:9100");
    }

    #[test]
    fn sessions_read_as_a_table() {
        let a = json!({"user": {"id": 3, "uuid": "u", "username": "alice"},
            "sessions": [{"session": "node-a/7", "device": "phone", "since_ms": 0}]});
        let out = human(
            &AdminCommand::Sessions {
                who: "alice".into(),
            },
            &a,
        );
        assert!(
            out.starts_with("alice (id 3, uuid u): 1 session\n"),
            "{out}"
        );
        assert!(
            out.contains("node-a/7")
                && out.contains("phone")
                && out.contains("1970-01-01T00:00:00Z"),
            "{out}"
        );
    }
}
