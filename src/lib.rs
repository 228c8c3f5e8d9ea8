//! chat-zinx: a lean, distributed chat daemon speaking the chat-zinx (Zinx framing) protocol.
//!
//! The shape is ports and adapters (see `docs/architecture.md`); dependencies point inwards,
//! and `tests/architecture.rs` fails the build's tests when a module imports against them:
//!
//! * [`core`]: the chat domain (model, use cases, typed errors) and its **ports**: store,
//!   presence, bus, registry and this node's connections. Imports nothing else of the crate.
//! * [`protocol`]: framing, message ids and wire shapes. Imports nothing else of the crate.
//! * [`config`]: the layered configuration and the live settings. Imports nothing else.
//! * [`backend`]: adapters of the ports: in-process, NATS JetStream, Redis, Consul. Import
//!   the core only; each takes its own settings struct.
//! * [`telemetry`]: logs, metrics and the metrics around the ports.
//! * [`server`]: the wire adapter: listener, connections, the local hub, and the mapping of
//!   domain values and errors to frames. Imports the core, the protocol and telemetry.
//! * [`node`]: the composition root (configuration to adapters to a running node) and the
//!   node's operations side: health, the HTTP endpoint, systemd, reload and drain.
//!
//! Beside them: [`client`] (the terminal client, speaks the protocol only), [`bench`](mod@bench) (the
//! benchmark tool) and [`harness`] (real nats-server, redis-server and consul processes on
//! loopback for the tests and the bench, and a TCP proxy that cuts and heals).

pub mod backend;
pub mod bench;
pub mod client;
pub mod config;
pub mod core;
pub mod harness;
pub mod node;
pub mod protocol;
pub mod server;
pub mod telemetry;
