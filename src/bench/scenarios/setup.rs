//! What every scenario shares, set up once per run: the backend servers (`nats-server` with
//! JetStream, `redis-server`), the store the daemon nodes use, and the bench users.
//!
//! Users are written straight into the store (`NatsStore::create_user`) with one password hash
//! and log in with tokens, so that making thousands of them costs no Argon2 per user and no
//! login round trip through a node that is about to be measured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use async_nats::jetstream;
use futures_util::{StreamExt, TryStreamExt};

use super::progress;
use crate::backend::nats::{Nats, NatsSettings, NatsStore};
use crate::bench::procs::{DaemonNode, NodeEnv};
use crate::bench::stats;
use crate::bench::Sizes;
use crate::core::auth::Auth;
use crate::core::model::NewUser;
use crate::core::ports::Store;
use crate::harness::{NatsOptions, NatsServer, RedisOptions, RedisServer};

/// A bench user: created in the store, logs in with its token.
#[derive(Clone)]
pub struct BenchUser {
    pub id: u64,
    pub name: String,
    pub token: String,
}

/// What every scenario shares: the backend servers, the store, the users made so far.
pub struct Bench {
    pub sizes: Sizes,
    pub epoch: Instant,
    pub(super) dir: tempfile::TempDir,
    pub nats: NatsServer,
    _redis: RedisServer,
    pub env: NodeEnv,
    pub(super) store: Arc<NatsStore>,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    auth: Auth,
    password_hash: String,
    made: usize,
}

impl Bench {
    pub async fn start(sizes: Sizes) -> anyhow::Result<Bench> {
        let dir = tempfile::Builder::new().prefix("cz-bench-").tempdir()?;
        // Their logs (and the JetStream store) go in the bench's directory: `--keep-logs`
        // keeps them. `max_payload` and `maxclients` are what the bench has set since it was
        // written (its own process code did, before the shared harness).
        let nats = NatsServer::try_start_with(&NatsOptions {
            dir: Some(dir.path().to_path_buf()),
            extra_config: "max_payload: 8MB\n".into(),
        })
        .await?;
        let redis = RedisServer::try_start_with(&RedisOptions {
            dir: Some(dir.path().to_path_buf()),
            extra_args: vec!["--maxclients".into(), "1000".into()],
            tls: None,
        })
        .await?;
        let secret_file = dir.path().join("token_secret");
        let secret = Auth::load_or_create_secret(&secret_file)?;
        let auth = Auth::new(secret, Duration::from_secs(24 * 3600), 2);
        let settings = NatsSettings {
            url: nats.url(),
            stream: "CHAT_ZINX".into(),
            replicas: 1,
            max_age: Duration::ZERO,
            duplicate_window: Duration::from_secs(600),
            request_timeout: Duration::from_secs(10),
            reconnect_wait: Duration::from_millis(250),
            auth: Default::default(),
            tls: Default::default(),
        };
        let conn = Nats::connect(&settings)
            .await
            .map_err(|e| anyhow!("bench cannot use NATS: {e}"))?;
        let client = async_nats::ConnectOptions::new()
            .name("chat-zinx-bench")
            .subscription_capacity(1 << 20)
            .connect(nats.url())
            .await?;
        let js = jetstream::new(client.clone());
        let password_hash = auth.hash_password("bench-password".into()).await?;
        let exe = std::env::current_exe().context("cannot find this binary to start nodes")?;
        let env = NodeEnv {
            exe,
            dir: dir.path().to_path_buf(),
            secret_file,
            nats_url: nats.url(),
            redis_url: redis.url(),
        };
        Ok(Bench {
            sizes,
            epoch: Instant::now(),
            dir,
            nats,
            _redis: redis,
            env,
            store: Arc::new(NatsStore(conn)),
            client,
            js,
            auth,
            password_hash,
            made: 0,
        })
    }

    /// `n` new users with tokens (written straight into the store: no Argon2 per user).
    pub async fn users(&mut self, n: usize) -> anyhow::Result<Vec<BenchUser>> {
        let first = self.made;
        self.made += n;
        let pb = progress(n as u64, "creating users");
        let now_s = (crate::core::model::now_ms() / 1000) as i64;
        let users: Vec<BenchUser> = futures_util::stream::iter(first..first + n)
            .map(|k| {
                let store = self.store.clone();
                let hash = self.password_hash.clone();
                let pb = pb.clone();
                async move {
                    let user = store
                        .create_user(NewUser {
                            uuid: uuid::Uuid::new_v4().to_string(),
                            username: format!("bench{k}"),
                            email: format!("bench{k}@bench.invalid"),
                            password_hash: hash,
                            created_at: crate::core::model::now_ms(),
                        })
                        .await
                        .map_err(|e| anyhow!("create bench user {k}: {e}"))?;
                    pb.inc(1);
                    Ok::<_, anyhow::Error>(user)
                }
            })
            .buffered(8)
            .map_ok(|u| BenchUser {
                id: u.id,
                token: self.auth.issue_token(&u, now_s),
                name: u.username,
            })
            .try_collect()
            .await?;
        pb.finish_and_clear();
        Ok(users)
    }

    pub fn start_nodes(&self, n: usize, first: usize) -> anyhow::Result<Vec<DaemonNode>> {
        (first..first + n)
            .map(|i| tokio::task::block_in_place(|| DaemonNode::start(&self.env, i, &[])))
            .collect()
    }

    pub(super) fn node_pids(nodes: &[DaemonNode]) -> Vec<u32> {
        nodes.iter().map(DaemonNode::pid).collect()
    }

    pub(super) fn rss(nodes: &[DaemonNode]) -> u64 {
        nodes.iter().filter_map(|n| stats::rss_bytes(n.pid())).sum()
    }
}
