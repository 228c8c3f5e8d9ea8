//! The chat domain: its model, its ports and its use cases.
//!
//! The core reaches everything outside its own logic through the traits of [`ports`]: the
//! store, presence, the bus, the registry and this node's connections ([`LocalDelivery`]).
//! Adapters implement them (`crate::backend` for the first four, the wire adapter's hub
//! for the last). The core knows nothing about sockets, frames, NATS, Redis, Consul or the
//! configuration, and imports nothing else of this crate (a test checks it).

pub mod auth;
pub mod directory;
pub mod error;
pub mod inbound;
pub mod model;
pub mod names;
pub mod ports;
pub mod service;
pub mod throttle;

pub use error::{ChatError, ChatResult};
pub use ports::LocalDelivery;
pub use service::{ChatCore, Me};
