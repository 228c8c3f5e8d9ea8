//! Adapters of the core's ports ([`crate::core::ports`]): where accounts, messages, presence,
//! cross-node delivery and the node registry really live.
//!
//! * [`memory`]: everything in this process (the single-node default, and unit tests).
//! * [`nats`]: the message log, accounts and groups on NATS JetStream; the bus on core NATS.
//! * [`redis`]: presence on Redis.
//! * [`consul`]: the node registry (and the source of live settings) on Consul.
//! * [`link`]: a client's connection state from its own events, and the fail-fast guard of
//!   the calls made through it.
//! * [`secret`]: the backends' secrets, read from files that only their owner may read.
//!
//! Each adapter takes its own small settings struct; the node's composition root
//! (`crate::node::wiring`) builds them from the configuration. Adapters depend on the core,
//! never the other way round.

pub mod consul;
pub mod link;
pub mod memory;
pub mod nats;
pub mod redis;
pub mod secret;
