//! `nats-server`: one node or a 3-node cluster, with JetStream on file storage.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::ports::loopback;
use super::probe::Probe;
use super::process::try_find_binary;
use super::server::{start_with_fresh_ports, ServerDir, ServerProcess};

/// How a single node is set up beyond the harness's defaults.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// Keep config, log (`nats.log`) and JetStream store (`jetstream/`) here instead of in a
    /// temporary directory removed on drop.
    pub dir: Option<PathBuf>,
    /// Lines appended to `nats.conf` (the bench raises `max_payload`).
    pub extra_config: String,
}

/// A `nats-server` with JetStream on file storage in its directory, on free loopback ports
/// (client and HTTP monitoring; a cluster member also has a route port). A restart keeps the
/// JetStream data.
pub struct NatsServer {
    // Declared before `dir`: the server stops before its directory is removed.
    process: ServerProcess,
    client_port: u16,
    monitor_port: u16,
    store_dir: PathBuf,
    dir: ServerDir,
}

impl NatsServer {
    /// A single node; panics with the end of its log when it does not start.
    pub async fn start() -> NatsServer {
        Self::try_start().await.unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// A single node.
    pub async fn try_start() -> anyhow::Result<NatsServer> {
        Self::try_start_with(&NatsOptions::default()).await
    }

    /// A single node set up with `options`.
    pub async fn try_start_with(options: &NatsOptions) -> anyhow::Result<NatsServer> {
        let program = try_find_binary("nats-server")?;
        start_with_fresh_ports(
            2,
            |ports| {
                let dir = ServerDir::new(options.dir.as_deref(), "cz-nats-")?;
                NatsServer::configure(
                    &program,
                    "cz-n1",
                    dir,
                    ports[0],
                    ports[1],
                    None,
                    &options.extra_config,
                )
            },
            |s| vec![&mut s.process],
        )
        .await
    }

    /// `cluster`: (this node's route port, every member's route port).
    fn configure(
        program: &Path,
        name: &str,
        dir: ServerDir,
        client_port: u16,
        monitor_port: u16,
        cluster: Option<(u16, &[u16])>,
        extra_config: &str,
    ) -> anyhow::Result<NatsServer> {
        let store_dir = dir.path().join("jetstream");
        let mut conf = format!(
            "server_name: \"{name}\"\n\
             listen: \"127.0.0.1:{client_port}\"\n\
             http: \"127.0.0.1:{monitor_port}\"\n\
             jetstream {{\n  store_dir: \"{}\"\n}}\n",
            store_dir.display()
        );
        if let Some((route_port, all)) = cluster {
            let routes: Vec<String> = all
                .iter()
                .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect();
            conf.push_str(&format!(
                "cluster {{\n  name: \"cz-test-{}\"\n  listen: \"127.0.0.1:{route_port}\"\n  routes: [{}]\n}}\n",
                all[0],
                routes.join(", ")
            ));
        }
        conf.push_str(extra_config);
        let conf_path = dir.path().join("nats.conf");
        std::fs::write(&conf_path, conf)
            .with_context(|| format!("write {}", conf_path.display()))?;
        let process = ServerProcess::new(
            format!("nats-server {name} on 127.0.0.1:{client_port}"),
            program.to_path_buf(),
            vec!["-c".into(), conf_path.into()],
            dir.path().join("nats.log"),
            Probe::Nats {
                client: client_port,
                monitor: monitor_port,
                js_only: cluster.is_none(),
            },
        );
        Ok(NatsServer {
            process,
            client_port,
            monitor_port,
            store_dir,
            dir,
        })
    }

    /// `nats://127.0.0.1:<client port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    pub fn addr(&self) -> SocketAddr {
        loopback(self.client_port)
    }

    /// The HTTP monitoring address (`/healthz`, `/jsz`, `/varz`, `/routez`).
    pub fn monitor_addr(&self) -> SocketAddr {
        loopback(self.monitor_port)
    }

    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The server's directory (config, log, JetStream store).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn process(&mut self) -> &mut ServerProcess {
        &mut self.process
    }
}

/// Three `nats-server`s routed into one JetStream cluster, ready once every node passes the
/// full `/healthz` (a meta leader is elected and known). The cluster and its servers are named after the first route port: tests run
/// clusters side by side, and two clusters of one name whose routes met (a port reused
/// between finding it free and binding it) would merge, peers of one name being one peer.
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

/// How long a fresh test cluster may take to place its first three-replica stream.
const PLACEMENT_WAIT: Duration = Duration::from_secs(45);

impl NatsCluster {
    pub const SIZE: usize = 3;

    /// Panics with the end of a node's log when the cluster does not start.
    pub async fn start() -> NatsCluster {
        Self::try_start().await.unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// A cluster that can place a stream on all three servers. A fresh cluster whose
    /// servers pass `/healthz` has been seen answering "no suitable peers for placement" to
    /// every three-replica stream for longer than 30 s (nats-server 2.10, a loaded machine):
    /// the harness places a probe stream first, and starts a new cluster on new ports when
    /// that does not succeed within [`PLACEMENT_WAIT`].
    pub async fn try_start() -> anyhow::Result<NatsCluster> {
        let mut last = None;
        for attempt in 1..=2 {
            let cluster = Self::try_start_processes().await?;
            match cluster.probe_placement().await {
                Ok(()) => return Ok(cluster),
                Err(e) => {
                    let why = format!(
                        "attempt {attempt}: no three-replica stream could be placed within {} s: {e:#}\n{}",
                        PLACEMENT_WAIT.as_secs(),
                        cluster.diagnostics().await
                    );
                    eprintln!("{why}");
                    last = Some(why);
                    // Dropping the cluster stops its servers and removes their directories.
                }
            }
        }
        anyhow::bail!("{}", last.unwrap_or_default())
    }

    /// Creates and deletes a three-replica stream, retrying until [`PLACEMENT_WAIT`].
    async fn probe_placement(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + PLACEMENT_WAIT;
        let mut last: anyhow::Error = anyhow::anyhow!("not tried");
        while tokio::time::Instant::now() < deadline {
            match self.place_probe_stream().await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(last)
    }

    async fn place_probe_stream(&self) -> anyhow::Result<()> {
        let client = tokio::time::timeout(
            Duration::from_secs(5),
            async_nats::connect(self.nodes[0].url()),
        )
        .await
        .context("connect timed out")??;
        let js = async_nats::jetstream::new(client);
        let name = "CZ_HARNESS_PLACEMENT_PROBE";
        tokio::time::timeout(Duration::from_secs(10), async {
            js.create_stream(async_nats::jetstream::stream::Config {
                name: name.into(),
                subjects: vec!["cz.harness.probe".into()],
                num_replicas: Self::SIZE,
                // File storage, as the chat log: placement weighs the servers' file store.
                storage: async_nats::jetstream::stream::StorageType::File,
                max_bytes: 1 << 20,
                ..Default::default()
            })
            .await?;
            js.delete_stream(name).await?;
            anyhow::Ok(())
        })
        .await
        .context("stream placement timed out")?
    }

    async fn try_start_processes() -> anyhow::Result<NatsCluster> {
        let program = try_find_binary("nats-server")?;
        let n = Self::SIZE;
        start_with_fresh_ports(
            3 * n,
            |ports| {
                let routes = &ports[2 * n..];
                let nodes = (0..n)
                    .map(|i| {
                        NatsServer::configure(
                            &program,
                            &format!("cz-{}-n{}", routes[0], i + 1),
                            ServerDir::new(None, "cz-nats-")?,
                            ports[2 * i],
                            ports[2 * i + 1],
                            Some((routes[i], routes)),
                            "",
                        )
                    })
                    .collect::<anyhow::Result<_>>()?;
                Ok(NatsCluster { nodes })
            },
            |c| c.nodes.iter_mut().map(|n| &mut n.process).collect(),
        )
        .await
    }

    /// Every node's client URL, comma separated (the form `nats.url` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// Each node's `/jsz` meta group and the end of its log, for a test's failure message.
    pub async fn diagnostics(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let jsz = match super::http_get(node.monitor_addr(), "/jsz").await {
                Ok((_, body)) => serde_json::from_str::<serde_json::Value>(&body)
                    .map(|v| v["meta_cluster"].to_string())
                    .unwrap_or(body),
                Err(e) => format!("no /jsz: {e}"),
            };
            out.push_str(&format!(
                "--- {}\n/jsz meta_cluster: {jsz}\n{}\n",
                node.url(),
                node.log_tail()
            ));
        }
        out
    }

    /// One node, e.g. to stop and restart it.
    pub fn node(&mut self, i: usize) -> &mut NatsServer {
        &mut self.nodes[i]
    }
}

/// Stop, kill, restart (on the same ports, then ready again), `is_running`, `pid` and
/// `log_tail` are the process's own: see [`ServerProcess`].
impl std::ops::Deref for NatsServer {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        &self.process
    }
}

impl std::ops::DerefMut for NatsServer {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.process
    }
}
