//! The protocol as a client sees it, against real daemons on the in-process backends (no
//! live backend server): one test binary for what were seven, so one link instead of seven.
//! Each module is one area; the tests that need nats-server, redis-server or consul live in
//! binaries of their own (they are skipped where those servers are missing, as in the Nix
//! build sandbox).

#[path = "../http_client/mod.rs"]
mod http_client;
#[path = "../support/mod.rs"]
mod support;

mod abuse;
mod compat_v1;
mod delivery;
mod drain;
mod errors;
mod groups;
mod http;
mod load;
mod memory;
mod proxy_protocol;
