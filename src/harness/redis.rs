//! `redis-server`, without persistence: one server ([`RedisServer`]), a three-master Redis
//! Cluster ([`RedisCluster`]) and a Sentinel set ([`RedisSentinelSet`]: a master, a replica and
//! three Sentinels).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use super::ports::loopback;
use super::probe::Probe;
use super::process::try_find_binary;
use super::server::{start_with_fresh_ports, ServerDir, ServerProcess};
use super::{PROBE_TIMEOUT, READY_TIMEOUT};

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
                let mut args = base_args(port, dir.path());
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

/// The harness's own arguments of a data server on `port` keeping its files in `dir`.
fn base_args(port: u16, dir: &Path) -> Vec<OsString> {
    [
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
        &dir.to_string_lossy(),
    ]
    .iter()
    .map(OsString::from)
    .collect()
}

/// A data server (`extra` after the harness's arguments) on `port` in a new temporary directory.
fn data_server(program: &Path, port: u16, extra: &[&str]) -> anyhow::Result<RedisServer> {
    let dir = ServerDir::new(None, "cz-redis-")?;
    let mut args = base_args(port, dir.path());
    args.extend(extra.iter().map(OsString::from));
    let process = ServerProcess::new(
        format!("redis-server on 127.0.0.1:{port}"),
        program.to_path_buf(),
        args,
        dir.path().join("redis.log"),
        Probe::Redis { port },
    );
    Ok(RedisServer {
        process,
        port,
        tls_port: None,
        _dir: dir,
    })
}

/// Runs `redis-cli -p <port> <args…>` and returns its output (the whole reply, as text).
pub async fn redis_cli(port: u16, args: &[&str]) -> anyhow::Result<String> {
    redis_cli_auth(port, None, args).await
}

/// [`redis_cli`] authenticated with `password` (given in `REDISCLI_AUTH`, not on the command
/// line).
pub async fn redis_cli_auth(
    port: u16,
    password: Option<&str>,
    args: &[&str],
) -> anyhow::Result<String> {
    let program = try_find_binary("redis-cli")?;
    let mut cmd = tokio::process::Command::new(&program);
    if let Some(password) = password {
        cmd.env("REDISCLI_AUTH", password);
    }
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(PROBE_TIMEOUT.max(Duration::from_secs(10)), cmd.output())
        .await
        .map_err(|_| anyhow!("redis-cli -p {port} {args:?} did not finish in time"))?
        .with_context(|| format!("run {}", program.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "redis-cli -p {port} {args:?} failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

/// Polls `check` every 100 ms until it returns `Ok(true)`; fails after [`READY_TIMEOUT`] with
/// the last answer.
async fn wait_for<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let mut last: String;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => last = "not yet".into(),
            Err(e) => last = format!("{e:#}"),
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{what}: not within {READY_TIMEOUT:?} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Redis Cluster of [`RedisCluster::SIZE`] masters without replicas on loopback, every slot
/// assigned (`cluster_state:ok` on every node). Each node is a [`RedisServer`]: stop, kill and
/// restart work on one node; all stop when the cluster is dropped.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// The password of every node, if any.
    password: Option<String>,
}

impl RedisCluster {
    pub const SIZE: usize = 3;

    /// Panics with the end of a node's log when the cluster does not form.
    pub async fn start() -> RedisCluster {
        Self::try_start().await.unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts the nodes (`--cluster-enabled yes`, the bus on a port of its own), joins them
    /// with `redis-cli --cluster create … --cluster-replicas 0` and waits until every node
    /// says `cluster_state:ok`.
    pub async fn try_start() -> anyhow::Result<RedisCluster> {
        Self::try_start_with_password(None).await
    }

    /// With `password`, every node requires it (`requirepass`, `masterauth`) and the cluster
    /// is created with it in `REDISCLI_AUTH`: the deployment of Terraform's
    /// `redis_mode = "cluster"`.
    pub async fn try_start_with_password(password: Option<&str>) -> anyhow::Result<RedisCluster> {
        let program = try_find_binary("redis-server")?;
        try_find_binary("redis-cli")?;
        let n = Self::SIZE;
        let cluster = start_with_fresh_ports(
            2 * n,
            |ports| {
                let nodes = (0..n)
                    .map(|i| {
                        let bus = ports[n + i].to_string();
                        let mut args = vec![
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            "nodes.conf",
                            "--cluster-node-timeout",
                            "2000",
                            "--cluster-port",
                            &bus,
                        ];
                        if let Some(p) = password {
                            args.extend(["--requirepass", p, "--masterauth", p]);
                        }
                        data_server(&program, ports[i], &args)
                    })
                    .collect::<anyhow::Result<_>>()?;
                Ok(RedisCluster {
                    nodes,
                    password: password.map(str::to_string),
                })
            },
            |c| c.nodes.iter_mut().map(|s| &mut s.process).collect(),
        )
        .await?;
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let mut args: Vec<&str> = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        redis_cli_auth(cluster.nodes[0].port, password, &args)
            .await
            .with_context(|| cluster.logs())?;
        for node in &cluster.nodes {
            let port = node.port;
            wait_for(
                &format!("cluster_state:ok on 127.0.0.1:{port}"),
                || async move {
                    let info = redis_cli_auth(port, password, &["cluster", "info"]).await?;
                    Ok(info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3"))
                },
            )
            .await
            .with_context(|| cluster.logs())?;
        }
        Ok(cluster)
    }

    /// `redis-cluster://[:<password>@]127.0.0.1:<port1>?node=127.0.0.1:<port2>&node=…` (the
    /// form `redis.url` takes).
    pub fn url(&self) -> String {
        let auth = self
            .password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        let mut url = format!("redis-cluster://{auth}127.0.0.1:{}", self.nodes[0].port);
        for (i, node) in self.nodes.iter().enumerate().skip(1) {
            let sep = if i == 1 { '?' } else { '&' };
            url.push_str(&format!("{sep}node=127.0.0.1:{}", node.port));
        }
        url
    }

    pub fn nodes(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// The client ports of the nodes.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|s| s.port).collect()
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|s| format!("{}:\n{}", s.process.what(), s.process.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The name Sentinel monitors the master under (`sentinelServiceName` in the URL).
pub const SENTINEL_MASTER_NAME: &str = "cz";

/// A Sentinel set on loopback: a master, one replica of it and three Sentinels (quorum 2)
/// that fail over quickly (`down-after-milliseconds` 1000, `failover-timeout` 5000). Ready
/// once the replica is in sync and every Sentinel knows the replica and the two other
/// Sentinels. Everything stops when it is dropped.
pub struct RedisSentinelSet {
    /// `[0]` the first master, `[1]` its replica (the roles swap on a failover).
    data: Vec<RedisServer>,
    /// The password of the servers and the Sentinels, if any.
    password: Option<String>,
    sentinels: Vec<ServerProcess>,
    sentinel_ports: Vec<u16>,
    _sentinel_dirs: Vec<ServerDir>,
}

impl RedisSentinelSet {
    pub const SENTINELS: usize = 3;

    /// Panics with the end of the logs when the set does not become ready.
    pub async fn start() -> RedisSentinelSet {
        Self::try_start().await.unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub async fn try_start() -> anyhow::Result<RedisSentinelSet> {
        Self::try_start_with_password(None).await
    }

    /// With `password`, the servers and the Sentinels all require it (`requirepass`), the
    /// replica and the Sentinels authenticate with it (`masterauth`, `sentinel auth-pass`,
    /// `sentinel sentinel-pass`): the deployment of Terraform's `redis_mode = "sentinel"`.
    pub async fn try_start_with_password(
        password: Option<&str>,
    ) -> anyhow::Result<RedisSentinelSet> {
        let program = try_find_binary("redis-server")?;
        try_find_binary("redis-cli")?;
        let n = Self::SENTINELS;
        let auth: Vec<&str> = match password {
            Some(p) => vec!["--requirepass", p, "--masterauth", p],
            None => vec![],
        };
        let sentinel_auth = match password {
            Some(p) => format!(
                "requirepass {p}\nsentinel sentinel-pass {p}\nsentinel auth-pass {SENTINEL_MASTER_NAME} {p}\n"
            ),
            None => String::new(),
        };
        let set = start_with_fresh_ports(
            2 + n,
            |ports| {
                let master = data_server(&program, ports[0], &auth)?;
                let master_port = ports[0].to_string();
                let mut replica_args = auth.clone();
                replica_args.extend(["--replicaof", "127.0.0.1", &master_port]);
                let replica = data_server(&program, ports[1], &replica_args)?;
                let mut sentinels = Vec::new();
                let mut dirs = Vec::new();
                for &port in &ports[2..] {
                    let dir = ServerDir::new(None, "cz-sentinel-")?;
                    // Sentinel rewrites its configuration file: it must be writable.
                    let conf = dir.path().join("sentinel.conf");
                    std::fs::write(
                        &conf,
                        format!(
                            "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n\
                             sentinel monitor {name} 127.0.0.1 {master} 2\n\
                             sentinel down-after-milliseconds {name} 1000\n\
                             sentinel failover-timeout {name} 5000\n\
                             sentinel parallel-syncs {name} 1\n{sentinel_auth}",
                            dir = dir.path().display(),
                            name = SENTINEL_MASTER_NAME,
                            master = ports[0],
                        ),
                    )
                    .with_context(|| format!("write {}", conf.display()))?;
                    sentinels.push(ServerProcess::new(
                        format!("redis sentinel on 127.0.0.1:{port}"),
                        program.clone(),
                        vec![conf.into_os_string(), "--sentinel".into()],
                        dir.path().join("sentinel.log"),
                        Probe::Redis { port },
                    ));
                    dirs.push(dir);
                }
                Ok(RedisSentinelSet {
                    data: vec![master, replica],
                    password: password.map(str::to_string),
                    sentinels,
                    sentinel_ports: ports[2..].to_vec(),
                    _sentinel_dirs: dirs,
                })
            },
            |s| {
                let mut all: Vec<&mut ServerProcess> =
                    s.data.iter_mut().map(|d| &mut d.process).collect();
                all.extend(s.sentinels.iter_mut());
                all
            },
        )
        .await?;
        let replica = set.data[1].port;
        let pw = set.password.clone();
        let pw = pw.as_deref();
        wait_for("the replica in sync with its master", || async move {
            let info = redis_cli_auth(replica, pw, &["info", "replication"]).await?;
            Ok(info.contains("master_link_status:up"))
        })
        .await
        .with_context(|| set.logs())?;
        for &port in &set.sentinel_ports {
            wait_for(
                &format!("sentinel 127.0.0.1:{port} knowing the replica and the other sentinels"),
                || async move {
                    let replicas =
                        redis_cli_auth(port, pw, &["sentinel", "replicas", SENTINEL_MASTER_NAME])
                            .await?;
                    let sentinels =
                        redis_cli_auth(port, pw, &["sentinel", "sentinels", SENTINEL_MASTER_NAME])
                            .await?;
                    let known = sentinels.lines().filter(|l| l.trim() == "name").count();
                    Ok(replicas.lines().any(|l| l.trim() == replica.to_string())
                        && known >= Self::SENTINELS - 1)
                },
            )
            .await
            .with_context(|| set.logs())?;
        }
        Ok(set)
    }

    /// `redis-sentinel://[:<password>@]127.0.0.1:<s1>?sentinelServiceName=cz&node=127.0.0.1:<s2>&node=…`
    pub fn url(&self) -> String {
        let auth = self
            .password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        let mut url = format!(
            "redis-sentinel://{auth}127.0.0.1:{}?sentinelServiceName={SENTINEL_MASTER_NAME}",
            self.sentinel_ports[0]
        );
        for port in &self.sentinel_ports[1..] {
            url.push_str(&format!("&node=127.0.0.1:{port}"));
        }
        url
    }

    /// The data servers: `[0]` the first master, `[1]` its replica.
    pub fn data(&mut self) -> &mut [RedisServer] {
        &mut self.data
    }

    pub fn sentinel_ports(&self) -> &[u16] {
        &self.sentinel_ports
    }

    /// The port of the master as the first Sentinel that answers names it.
    pub async fn master_port(&self) -> anyhow::Result<u16> {
        let mut last = anyhow!("no sentinel");
        for &port in &self.sentinel_ports {
            match redis_cli_auth(
                port,
                self.password.as_deref(),
                &["sentinel", "get-master-addr-by-name", SENTINEL_MASTER_NAME],
            )
            .await
            {
                Ok(out) => {
                    let lines: Vec<&str> = out.lines().collect();
                    if let Some(p) = lines.get(1).and_then(|p| p.trim().parse().ok()) {
                        return Ok(p);
                    }
                    last = anyhow!("sentinel 127.0.0.1:{port} answered {out:?}");
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Waits until every running Sentinel names a master other than the one on `old_port`
    /// and that master says `role:master` (a failover is complete).
    pub async fn wait_for_new_master(&self, old_port: u16) -> anyhow::Result<u16> {
        let ports = self.sentinel_ports.clone();
        let pw = self.password.clone();
        wait_for("a new master named by every sentinel", || {
            let ports = ports.clone();
            let pw = pw.clone();
            async move {
                let pw = pw.as_deref();
                let mut named = None;
                for port in ports {
                    let out = redis_cli_auth(
                        port,
                        pw,
                        &["sentinel", "get-master-addr-by-name", SENTINEL_MASTER_NAME],
                    )
                    .await?;
                    let p: Option<u16> = out.lines().nth(1).and_then(|p| p.trim().parse().ok());
                    match (p, named) {
                        (Some(p), _) if p == old_port => return Ok(false),
                        (Some(p), None) => named = Some(p),
                        (Some(p), Some(q)) if p == q => {}
                        _ => return Ok(false),
                    }
                }
                let Some(p) = named else { return Ok(false) };
                let role = redis_cli_auth(p, pw, &["info", "replication"]).await?;
                Ok(role.contains("role:master"))
            }
        })
        .await
        .with_context(|| self.logs())?;
        self.master_port().await
    }

    fn logs(&self) -> String {
        self.data
            .iter()
            .map(|s| &s.process)
            .chain(self.sentinels.iter())
            .map(|p| format!("{}:\n{}", p.what(), p.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
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
