//! Free loopback ports.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};

/// Everything the harness starts listens here only.
pub const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// `127.0.0.1:<port>`
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((LOOPBACK, port))
}

/// `n` distinct loopback ports that were free a moment ago.
pub fn try_free_ports(n: usize) -> io::Result<Vec<u16>> {
    // Hold every listener until all are bound so that the ports are distinct.
    let listeners = (0..n)
        .map(|_| StdTcpListener::bind((LOOPBACK, 0)))
        .collect::<io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// [`try_free_ports`] for tests: panics when no port can be bound.
pub fn free_ports(n: usize) -> Vec<u16> {
    try_free_ports(n).unwrap_or_else(|e| panic!("bind a free loopback port: {e}"))
}
