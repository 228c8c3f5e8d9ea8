//! Worker processes of the bench (`chat-zinx bench --worker …`, hidden): the open-file limit
//! (20 000 per process here) caps the sockets one process holds, so the `idle` scenario
//! spreads its client sockets over several workers, and measures a raw tokio server in a
//! process of its own. Workers talk to the bench with lines on stdout and finish when their
//! stdin closes.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;

use super::client::Conn;

/// What a worker does.
#[derive(Debug, Clone)]
pub enum Job {
    /// Opens `count` connections to `target` from `bind`; logs in with the tokens of
    /// `tokens` (one a line, from line `from`) unless `raw`. Prints `ready <ok> <failed>`.
    IdleClients {
        target: SocketAddr,
        bind: Option<IpAddr>,
        tokens: Option<PathBuf>,
        from: usize,
        count: usize,
    },
    /// A raw tokio server holding idle connections (one task each, no buffer while idle).
    /// Prints `listening <addr>`.
    RawIdleServer,
    /// The substrate of `login-storm` ([`super::substrate::Mode::Login`]) in a process of its
    /// own, like the daemon. Prints `listening <addr>`.
    RawLoginServer,
}

impl Job {
    /// The command-line arguments that run this job in a worker.
    pub fn args(&self) -> Vec<String> {
        match self {
            Job::IdleClients {
                target,
                bind,
                tokens,
                from,
                count,
            } => {
                let mut a = vec![
                    "--worker".into(),
                    "idle-clients".into(),
                    "--worker-target".into(),
                    target.to_string(),
                    "--worker-from".into(),
                    from.to_string(),
                    "--worker-count".into(),
                    count.to_string(),
                ];
                if let Some(b) = bind {
                    a.extend(["--worker-bind".into(), b.to_string()]);
                }
                if let Some(t) = tokens {
                    a.extend(["--worker-tokens".into(), t.display().to_string()]);
                }
                a
            }
            Job::RawIdleServer => vec!["--worker".into(), "raw-idle-server".into()],
            Job::RawLoginServer => vec!["--worker".into(), "raw-login-server".into()],
        }
    }
}

async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

pub async fn run(job: Job) -> anyhow::Result<()> {
    match job {
        Job::IdleClients {
            target,
            bind,
            tokens,
            from,
            count,
        } => {
            let tokens: Option<Vec<String>> = match tokens {
                Some(p) => Some(
                    std::fs::read_to_string(&p)
                        .with_context(|| format!("read {}", p.display()))?
                        .lines()
                        .skip(from)
                        .take(count)
                        .map(str::to_string)
                        .collect(),
                ),
                None => None,
            };
            let results: Vec<anyhow::Result<Conn>> = futures_util::stream::iter(0..count)
                .map(|i| {
                    let token = tokens.as_ref().and_then(|t| t.get(i).cloned());
                    async move {
                        let mut c = Conn::open(target, bind).await?;
                        if let Some(t) = token {
                            c.resume(&t).await?;
                        }
                        Ok(c)
                    }
                })
                .buffer_unordered(128)
                .collect()
                .await;
            let mut first_error = None;
            let mut conns = Vec::with_capacity(count);
            for r in results {
                match r {
                    Ok(c) => conns.push(c),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = &first_error {
                eprintln!("bench worker: a connection failed: {e:#}");
            }
            println!("ready {} {}", conns.len(), count - conns.len());
            stdin_closed().await;
            drop(conns);
            Ok(())
        }
        Job::RawLoginServer => {
            let server =
                super::substrate::RawServer::start(super::substrate::Mode::Login, None).await?;
            println!("listening {}", server.addr);
            stdin_closed().await;
            server.stop().await;
            Ok(())
        }
        Job::RawIdleServer => {
            let listener = crate::server::bind("127.0.0.1:0").await?;
            println!("listening {}", listener.local_addr()?);
            let accept = async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(async move {
                        let mut buf = [0u8; 256];
                        loop {
                            if stream.readable().await.is_err() {
                                break;
                            }
                            match stream.try_read(&mut buf) {
                                Ok(0) => break,
                                Ok(_) => {}
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                                Err(_) => break,
                            }
                        }
                    });
                }
            };
            tokio::select! {
                _ = accept => {}
                _ = stdin_closed() => {}
            }
            Ok(())
        }
    }
}
