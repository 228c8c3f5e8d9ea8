//! Loopback source addresses of the bench's client sockets, `127.0.<block>.<n>`: each group of
//! connections gets addresses no other group used. A client socket bound to an address before
//! it connects needs a local port that is free for *every* destination, so ports still in
//! TIME_WAIT from an earlier group would make the kernel search (and fail) for free ports:
//! the storm after `idle` took 5 – 6.5 s for both chat-zinx and the substrate that way.

/// `idle`, chat-zinx: 127.0.1.2, .3, …
pub const IDLE_CHAT: u8 = 1;
/// `idle`, the raw server: 127.0.2.2, .3, …
pub const IDLE_RAW: u8 = 2;
/// `login-storm`: chat-zinx from 127.0.3.2, the raw server from 127.0.3.3.
pub const STORM: u8 = 3;
