//! `redis-server`, without persistence.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::ports::loopback;
use super::probe::Probe;
use super::process::try_find_binary;
use super::server::{start_with_fresh_ports, ServerDir, ServerProcess};

/// How the server is set up beyond the harness's defaults.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// Keep the log (`redis.log`) here instead of in a temporary directory removed on drop.
    pub dir: Option<PathBuf>,
    /// Arguments after the harness's own, e.g. `["--maxclients", "1000"]` (the bench), or ACL
    /// users (`["--user", "cz", "on", ">password", "~*", "+@all"]`).
    pub extra_args: Vec<String>,
    /// A TLS port beside the plain one (which the readiness probe keeps using).
    pub tls: Option<RedisTls>,
}

/// The TLS port's certificate (PEM files); clients are not asked for a certificate.
#[derive(Debug, Clone)]
pub struct RedisTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA of the certificate (redis-server wants one even when it verifies no client).
    pub ca_file: PathBuf,
}

/// A `redis-server` on a free loopback port, without persistence: a restart starts empty.
pub struct RedisServer {
    // Declared before `_dir`: the server stops before its directory is removed.
    process: ServerProcess,
    port: u16,
    tls_port: Option<u16>,
    _dir: ServerDir,
}

impl RedisServer {
    /// Panics with the end of its log when it does not start.
    pub async fn start() -> RedisServer {
        Self::try_start().await.unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub async fn try_start() -> anyhow::Result<RedisServer> {
        Self::try_start_with(&RedisOptions::default()).await
    }

    pub async fn try_start_with(options: &RedisOptions) -> anyhow::Result<RedisServer> {
        let program = try_find_binary("redis-server")?;
        let n_ports = if options.tls.is_some() { 2 } else { 1 };
        start_with_fresh_ports(
            n_ports,
            |ports| {
                let port = ports[0];
                let tls_port = options.tls.as_ref().map(|_| ports[1]);
                let dir = ServerDir::new(options.dir.as_deref(), "cz-redis-")?;
                let mut args: Vec<OsString> = [
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--protected-mode",
                    "yes",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--dir",
                    &dir.path().to_string_lossy(),
                ]
                .iter()
                .map(OsString::from)
                .collect();
                if let (Some(tls), Some(tls_port)) = (&options.tls, tls_port) {
                    args.extend([
                        OsString::from("--tls-port"),
                        tls_port.to_string().into(),
                        "--tls-cert-file".into(),
                        tls.cert_file.clone().into_os_string(),
                        "--tls-key-file".into(),
                        tls.key_file.clone().into_os_string(),
                        "--tls-ca-cert-file".into(),
                        tls.ca_file.clone().into_os_string(),
                        "--tls-auth-clients".into(),
                        "no".into(),
                    ]);
                }
                args.extend(options.extra_args.iter().map(OsString::from));
                let process = ServerProcess::new(
                    format!("redis-server on 127.0.0.1:{port}"),
                    program.clone(),
                    args,
                    dir.path().join("redis.log"),
                    Probe::Redis { port },
                );
                Ok(RedisServer {
                    process,
                    port,
                    tls_port,
                    _dir: dir,
                })
            },
            |s| vec![&mut s.process],
        )
        .await
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// `redis://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TLS port, when started with [`RedisOptions::tls`].
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    pub fn process(&mut self) -> &mut ServerProcess {
        &mut self.process
    }
}

/// Stop, kill, restart (on the same ports, then ready again), `is_running`, `pid` and
/// `log_tail` are the process's own: see [`ServerProcess`].
impl std::ops::Deref for RedisServer {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        &self.process
    }
}

impl std::ops::DerefMut for RedisServer {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.process
    }
}
