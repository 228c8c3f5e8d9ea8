//! Real processes for tests and the bench: `nats-server` (one node, or a 3-node cluster, with
//! JetStream on file storage), `redis-server`, `consul agent -dev`, `haproxy` (the load
//! balancer, on a given configuration file), any child process, and a TCP proxy that can cut and heal the connections through it. Never mocks. The integration
//! tests (`use chat_zinx::harness::…`) and the bench ([`crate::bench::procs`]) share it, so a
//! server starts and stops the same way in both.
//!
//! The rules:
//! * Every server listens on loopback only, on free ports (a port is found by binding port 0;
//!   if the server then fails to start, e.g. because another process took the port in
//!   between, it is started again on new ports).
//! * `start()` returns once the server answers: NATS its client port and
//!   `/healthz?js-enabled-only=true` (a cluster: the full `/healthz`, i.e. a JetStream meta
//!   leader), Redis `PING`, Consul a non-empty `/v1/status/leader`, haproxy a TCP connection
//!   to its frontend.
//! * Each process runs in its own process group, a server with its output in a log file of its
//!   own directory (a temporary one unless the caller gives one, as the bench does to keep the
//!   logs).
//! * A process is always stopped: dropping it sends SIGTERM to its process group, then SIGKILL
//!   after [`STOP_GRACE`], and removes its temporary directory. `stop()` does the same
//!   mid-test, `kill()` is an abrupt SIGKILL (a crash), and `restart().await` starts it again on
//!   the same ports ("the backend died mid-request", "the backend came back").
//! * Errors: every `try_*` function returns an [`anyhow::Result`] (the bench reports it); the
//!   plain names (`start()`, `restart()`, [`find_binary`], [`free_ports`]) are for tests and
//!   panic with the same message, which for a server that did not start ends with its log.
//!
//! The binaries are found on `PATH` or in the sbin directories (Debian installs
//! `nats-server` in `/usr/sbin`); `scripts/install-test-deps` installs them.
//!
//! * [`process`]: a child process in its own process group, stopped on drop; [`find_binary`].
//! * [`ports`]: free loopback ports.
//! * [`probe`]: one-shot readiness probes (`http_get`, `redis_command`, `nats_info`).
//! * [`server`]: a server process that can be restarted on the same ports and is started on
//!   fresh ports until it answers.
//! * [`nats`], [`redis`], [`consul`], [`haproxy`]: each server ([`redis`] also a three-master
//!   Redis Cluster and a Sentinel set: master, replica, three Sentinels).
//! * [`proxy`]: the cut-and-heal TCP proxy for partition tests.

pub mod consul;
pub mod haproxy;
pub mod nats;
pub mod ports;
pub mod probe;
pub mod process;
pub mod proxy;
pub mod redis;
pub mod server;

use std::time::Duration;

pub use consul::{ConsulAgent, ConsulOptions, ConsulTls};
pub use haproxy::{Haproxy, ServerSlot};
pub use nats::{NatsCluster, NatsOptions, NatsServer};
pub use ports::{free_ports, loopback, try_free_ports};
pub use probe::{http_get, nats_info, redis_command};
pub use process::{find_binary, try_find_binary, ChildProcess};
pub use proxy::TcpProxy;
pub use redis::{
    redis_cli, redis_cli_auth, RedisCluster, RedisOptions, RedisSentinelSet, RedisServer, RedisTls,
    SENTINEL_MASTER_NAME,
};
pub use server::ServerProcess;

/// How long a server may take to answer after it was started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a process gets to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// A single probe (connect, request, answer) gives up after this long.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
