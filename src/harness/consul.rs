//! `consul agent -dev`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::ports::loopback;
use super::probe::Probe;
use super::process::try_find_binary;
use super::server::{start_with_fresh_ports, ServerDir, ServerProcess};

/// `consul agent -dev` (a single server that elects itself; state in memory, lost on restart)
/// on free loopback ports: HTTP, DNS (UDP and TCP, answering only with passing instances, as a
/// load balancer wants them), serf LAN and WAN, server RPC and gRPC; HTTPS and ACLs when
/// [`ConsulOptions`] ask for them.
pub struct ConsulAgent {
    // Declared before `_dir`: the agent stops before its directory is removed.
    process: ServerProcess,
    http_port: u16,
    dns_port: u16,
    https_port: Option<u16>,
    _dir: ServerDir,
}

/// How the agent is set up beyond the harness's defaults.
#[derive(Debug, Clone, Default)]
pub struct ConsulOptions {
    /// ACLs on, default policy `deny`, with this management ("master") token, which is also
    /// the agent's own token. Tokens for clients are made through the HTTP API with it.
    pub acl_master_token: Option<String>,
    /// HTTPS on a port of its own beside plain HTTP (which the readiness probe keeps using).
    pub tls: Option<ConsulTls>,
}

/// The HTTPS listener's certificate (PEM files); clients are not asked for a certificate.
#[derive(Debug, Clone)]
pub struct ConsulTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
}

impl ConsulAgent {
    /// Panics with the end of its log when it does not start.
    pub async fn start() -> ConsulAgent {
        Self::try_start().await.unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub async fn try_start() -> anyhow::Result<ConsulAgent> {
        Self::try_start_with(&ConsulOptions::default()).await
    }

    /// An agent set up with `options`.
    pub async fn try_start_with(options: &ConsulOptions) -> anyhow::Result<ConsulAgent> {
        let program = try_find_binary("consul")?;
        start_with_fresh_ports(
            7,
            |ports| {
                let dir = ServerDir::new(None, "cz-consul-")?;
                let [http, serf_lan, serf_wan, server, grpc, dns] =
                    [ports[0], ports[1], ports[2], ports[3], ports[4], ports[6]];
                let node = format!("cz-test-{http}");
                let args: Vec<OsString> = [
                    "agent".to_string(),
                    "-dev".into(),
                    "-bind=127.0.0.1".into(),
                    "-client=127.0.0.1".into(),
                    format!("-node={node}"),
                    format!("-http-port={http}"),
                    format!("-dns-port={dns}"),
                    format!("-serf-lan-port={serf_lan}"),
                    format!("-serf-wan-port={serf_wan}"),
                    format!("-server-port={server}"),
                    format!("-grpc-port={grpc}"),
                    "-log-level=warn".into(),
                    "-hcl=disable_update_check = true".into(),
                    // As the deployment's Consul (nix/images/consul.nix): a node whose check
                    // is not passing is not in DNS answers.
                    "-hcl=dns_config { only_passing = true }".into(),
                ]
                .into_iter()
                .map(OsString::from)
                .collect();
                let mut args = args;
                if let Some(token) = &options.acl_master_token {
                    args.push(OsString::from(format!(
                        "-hcl=acl {{ enabled = true\n default_policy = \"deny\"\n \
                         enable_token_persistence = false\n tokens {{ master = \"{token}\"\n \
                         agent = \"{token}\" }} }}"
                    )));
                }
                let https = options.tls.as_ref().map(|_| ports[5]);
                if let (Some(tls), Some(https)) = (&options.tls, https) {
                    args.push(OsString::from(format!(
                        "-hcl=cert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n\
                         ports {{ https = {https} }}\nverify_incoming = false",
                        tls.cert_file.display(),
                        tls.key_file.display(),
                        tls.ca_file.display(),
                    )));
                }
                let mut process = ServerProcess::new(
                    format!("consul agent -dev on 127.0.0.1:{http}"),
                    program.clone(),
                    args,
                    dir.path().join("consul.log"),
                    Probe::Consul { http },
                );
                // No call home to HashiCorp's update check.
                process.env("CHECKPOINT_DISABLE", "1");
                Ok(ConsulAgent {
                    process,
                    http_port: http,
                    dns_port: dns,
                    https_port: https,
                    _dir: dir,
                })
            },
            |s| vec![&mut s.process],
        )
        .await
    }

    /// `127.0.0.1:<http port>` (the form `consul.addr` takes).
    pub fn http_addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    /// `127.0.0.1:<dns port>`: the agent's DNS interface (UDP and TCP), where
    /// `_<service>._tcp.service.consul` has an SRV record per passing instance.
    pub fn dns_addr(&self) -> SocketAddr {
        loopback(self.dns_port)
    }

    /// `http://127.0.0.1:<http port>`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// `https://127.0.0.1:<https port>`, when started with [`ConsulOptions::tls`].
    pub fn https_url(&self) -> Option<String> {
        self.https_port.map(|p| format!("https://127.0.0.1:{p}"))
    }

    pub fn addr(&self) -> SocketAddr {
        loopback(self.http_port)
    }

    pub fn process(&mut self) -> &mut ServerProcess {
        &mut self.process
    }
}

/// Stop, kill, restart (on the same ports, then ready again), `is_running`, `pid` and
/// `log_tail` are the process's own: see [`ServerProcess`].
impl std::ops::Deref for ConsulAgent {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        &self.process
    }
}

impl std::ops::DerefMut for ConsulAgent {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.process
    }
}
