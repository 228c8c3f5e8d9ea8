//! chat-zinx: a lean, distributed chat daemon speaking the chat-zinx (Zinx framing) protocol.
//!
//! Layers, outermost first (see `docs/architecture.md`):
//! * [`server`]: TCP listener, one task per connection plus its writer task, the local hub of
//!   connections; turns frames into calls of the core and results into frames.
//! * [`protocol`]: framing, message ids, payload shapes. Knows nothing of backends.
//! * [`core`]: the chat domain (accounts, messages, groups, delivery), talking to the small
//!   traits of [`backend`].
//! * [`backend`]: store, presence, bus and registry traits with their in-process
//!   implementations (and, in the cluster, NATS / Redis / Consul ones).
//!
//! Around them: [`systemd`] (socket activation, sd_notify, watchdog), [`http`] (health,
//! readiness and Prometheus metrics) and [`telemetry`] (journald or text logs); for the tests
//! and the [`bench`], [`harness`] starts real backend servers and child processes.

pub mod backend;
pub mod bench;
pub mod client;
pub mod config;
pub mod core;
pub mod harness;
pub mod http;
pub mod protocol;
pub mod server;
pub mod systemd;
pub mod telemetry;
