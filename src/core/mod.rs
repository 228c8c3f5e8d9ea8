//! The chat domain. It talks to the traits of [`crate::backend`] and to this node's
//! connections through [`service::LocalDelivery`]; it knows nothing about sockets, frames,
//! NATS, Redis or Consul.

pub mod auth;
pub mod directory;
pub mod error;
pub mod model;
pub mod service;

pub use error::{ChatError, ChatResult};
pub use service::{ChatCore, LocalDelivery, Me};
