//! A TCP proxy on a free loopback port that can cut and heal every connection through it, for
//! partition tests: put it between a daemon and its backend, `cut()`, watch the daemon notice,
//! `heal()`, watch it come back.
//!
//! What a cut does, and why:
//! * Every open connection through the proxy is **reset** on both sides (`SO_LINGER` 0, then
//!   close, so the kernel sends RST). A plain close would still deliver whatever the proxy had
//!   already written into its socket buffers, i.e. bytes would cross the cut after it; a reset
//!   discards them, and both peers see `ECONNRESET` (or EOF, if they read after the RST was
//!   handled) on their next read or write at once, which is what makes a client library
//!   report "connection lost" and start reconnecting.
//! * While cut, the proxy keeps accepting and resets each new connection at once. Not
//!   accepting would not refuse anything: the kernel completes the handshake into the listen
//!   backlog, so a reconnecting client would hang until its own timeout instead of failing
//!   promptly. Closing the listener would refuse, but `heal()` would then have to bind the same
//!   port again, which another process may have taken meanwhile.
//! * [`TcpProxy::cut`] returns once every connection through it is reset: after
//!   `proxy.cut().await` no byte passes until `heal()`.
//!
//! This is a cut the peers can see, not a silent black hole (packets dropped, no RST): that
//! one is found only by the peers' own timeouts and keepalives, and needs a firewall rather
//! than a proxy.
//!
//! Every task (the accept loop, one per connection) belongs to the proxy: they all end when it
//! is dropped, which also closes its listener and resets the connections through it.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ports::LOOPBACK;

/// A cut-and-heal TCP proxy to one upstream address; see the module documentation.
pub struct TcpProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    link: Arc<Mutex<Link>>,
    /// Cancelled on drop: ends the accept loop and, through the link tokens (its children),
    /// every connection.
    shutdown: CancellationToken,
}

/// The state `cut()` and `heal()` switch, shared with the accept loop.
struct Link {
    cut: bool,
    /// Cancelled by `cut()`: resets every connection forwarded since the last heal.
    token: CancellationToken,
    /// The connection tasks since the last heal, which `cut()` waits for.
    tasks: TaskTracker,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards each connection to `upstream`. Must be
    /// called within a Tokio runtime (it spawns its accept loop); panics when it cannot bind.
    pub fn start(upstream: SocketAddr) -> TcpProxy {
        Self::try_start(upstream).unwrap_or_else(|e| panic!("start a TCP proxy: {e}"))
    }

    /// [`TcpProxy::start`], returning the error of the bind.
    pub fn try_start(upstream: SocketAddr) -> io::Result<TcpProxy> {
        // Bound synchronously (std) so that `addr()` is known and accepting as soon as this
        // returns; connections before the accept loop first runs wait in the backlog.
        let std_listener = std::net::TcpListener::bind((LOOPBACK, 0))?;
        std_listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(std_listener)?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let link = Arc::new(Mutex::new(Link {
            cut: false,
            token: shutdown.child_token(),
            tasks: TaskTracker::new(),
        }));
        tokio::spawn(accept_loop(
            listener,
            upstream,
            link.clone(),
            shutdown.clone(),
        ));
        Ok(TcpProxy {
            addr,
            upstream,
            link,
            shutdown,
        })
    }

    /// Where clients connect instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Whether it is cut.
    pub fn is_cut(&self) -> bool {
        lock(&self.link).cut
    }

    /// Resets every connection through the proxy (both sides) and every new one until
    /// [`TcpProxy::heal`]; returns once all of them are closed.
    pub async fn cut(&self) {
        let tasks = {
            let mut link = lock(&self.link);
            link.cut = true;
            link.token.cancel();
            // No task joins a closed tracker: the accept loop spawns under the same lock.
            link.tasks.close();
            link.tasks.clone()
        };
        tasks.wait().await;
    }

    /// Accepts and forwards new connections again (the ones reset by the cut stay closed; the
    /// clients reconnect).
    pub fn heal(&self) {
        let mut link = lock(&self.link);
        if link.cut {
            *link = Link {
                cut: false,
                token: self.shutdown.child_token(),
                tasks: TaskTracker::new(),
            };
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn lock(link: &Mutex<Link>) -> MutexGuard<'_, Link> {
    // The lock is never held across a panic point that matters: take the state as it is.
    link.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    link: Arc<Mutex<Link>>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        // An accept error (e.g. the peer went away, out of descriptors) concerns that one
        // connection; the listener goes on.
        let Ok((client, _)) = accepted else { continue };
        let link = lock(&link);
        if link.cut {
            reset(client);
        } else {
            link.tasks
                .spawn(forward(client, upstream, link.token.clone()));
        }
    }
}

/// Forwards one connection both ways until both sides are done, or resets both when `cut`
/// fires.
async fn forward(mut client: TcpStream, upstream: SocketAddr, cut: CancellationToken) {
    let server = tokio::select! {
        _ = cut.cancelled() => None,
        server = TcpStream::connect(upstream) => server.ok(),
    };
    // The upstream does not answer: the client sees a reset, as if it were down.
    let Some(mut server) = server else {
        reset(client);
        return;
    };
    // No Nagle delay added by the proxy: the peers' own settings decide.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let done = tokio::select! {
        _ = cut.cancelled() => None,
        done = tokio::io::copy_bidirectional(&mut client, &mut server) => Some(done),
    };
    match done {
        // Both sides closed their writing half: a normal close, passed on as one.
        Some(Ok(_)) => {}
        // Cut, or one side failed (typically: reset): the other side is reset too.
        None | Some(Err(_)) => {
            reset(client);
            reset(server);
        }
    }
}

/// Closes `stream` with a TCP RST instead of a FIN, dropping what is still unsent.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    /// An echo server on loopback, and how many connections it has open.
    async fn echo_server() -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let counter = open.clone();
        let task = tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let open = counter.clone();
                open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut rd, mut wr) = conn.split();
                    let _ = tokio::io::copy(&mut rd, &mut wr).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (addr, open, task)
    }

    async fn echoes(conn: &mut TcpStream, payload: &[u8]) -> bool {
        // Written and read at once: a payload larger than the socket buffers would otherwise
        // stall both ends.
        let (mut rd, mut wr) = conn.split();
        let mut back = vec![0u8; payload.len()];
        let exchange = async {
            tokio::try_join!(wr.write_all(payload), rd.read_exact(&mut back))?;
            io::Result::Ok(back == payload)
        };
        matches!(tokio::time::timeout(WAIT, exchange).await, Ok(Ok(true)))
    }

    /// The connection ends (EOF or error) without a byte of echo.
    async fn is_closed(conn: &mut TcpStream) -> bool {
        let _ = conn.write_all(b"anyone?").await;
        let mut buf = [0u8; 16];
        match tokio::time::timeout(WAIT, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) => false,
            Err(_) => panic!("the connection neither answered nor closed within {WAIT:?}"),
        }
    }

    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn forwards_both_ways_cuts_every_connection_and_heals() {
        let (upstream, open, _echo) = echo_server().await;
        let proxy = TcpProxy::start(upstream);
        assert_eq!(proxy.upstream(), upstream);

        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(echoes(&mut a, b"ping").await);
        // More than a socket buffer, so that both directions stream at once.
        let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        assert!(echoes(&mut b, &big).await);
        assert_eq!(open.load(Ordering::SeqCst), 2);

        proxy.cut().await;
        assert!(proxy.is_cut());
        assert!(
            is_closed(&mut a).await,
            "an open connection survived the cut"
        );
        assert!(
            is_closed(&mut b).await,
            "an open connection survived the cut"
        );
        eventually("the upstream side stayed open after the cut", || {
            open.load(Ordering::SeqCst) == 0
        })
        .await;

        // While cut, a new connection is accepted and reset at once: no echo, no upstream.
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(is_closed(&mut c).await, "a connection passed while cut");
        assert_eq!(open.load(Ordering::SeqCst), 0);

        proxy.heal();
        assert!(!proxy.is_cut());
        let mut d = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(echoes(&mut d, b"back").await);
        assert!(is_closed(&mut a).await, "a cut connection came back");

        // A second cut works the same.
        proxy.cut().await;
        assert!(is_closed(&mut d).await);
        proxy.heal();
        let mut e = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(echoes(&mut e, b"again").await);
    }

    #[tokio::test]
    async fn a_close_passes_as_a_close_and_a_dead_upstream_as_a_reset() {
        let (upstream, open, _echo) = echo_server().await;
        let proxy = TcpProxy::start(upstream);
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(echoes(&mut a, b"x").await);
        // The client closes its writing half: the echo server sees EOF and closes, and the
        // client reads EOF (not a reset).
        a.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(WAIT, a.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
        eventually("the upstream connection stayed open", || {
            open.load(Ordering::SeqCst) == 0
        })
        .await;

        // Nothing listens upstream.
        let gone = std::net::TcpListener::bind((LOOPBACK, 0)).unwrap();
        let gone_addr = gone.local_addr().unwrap();
        drop(gone);
        let to_nowhere = TcpProxy::start(gone_addr);
        let mut b = TcpStream::connect(to_nowhere.addr()).await.unwrap();
        assert!(is_closed(&mut b).await);
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_its_listener_and_connections() {
        let (upstream, open, _echo) = echo_server().await;
        let proxy = TcpProxy::start(upstream);
        let addr = proxy.addr();
        let mut a = TcpStream::connect(addr).await.unwrap();
        assert!(echoes(&mut a, b"ping").await);
        let link = proxy.link.clone();

        drop(proxy);
        assert!(is_closed(&mut a).await);
        eventually("the upstream side stayed open after the drop", || {
            open.load(Ordering::SeqCst) == 0
        })
        .await;
        // Its connection task has ended.
        let tasks = lock(&link).tasks.clone();
        tasks.close();
        tokio::time::timeout(WAIT, tasks.wait())
            .await
            .expect("a connection task outlived the proxy");
        // And so has the accept loop: its listener is closed.
        let deadline = tokio::time::Instant::now() + WAIT;
        while TcpStream::connect(addr).await.is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the proxy still accepts after drop"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
