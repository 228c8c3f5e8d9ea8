//! systemd integration: socket activation, readiness and status notifications (`sd_notify`),
//! and a watchdog that pings only while the node really serves.
//!
//! Everything here is a no-op outside systemd: without `NOTIFY_SOCKET` nothing is sent, without
//! `LISTEN_FDS` the configured addresses are bound, without `WATCHDOG_USEC` no pings are sent.
//!
//! * **Socket activation**: [`take_activated_sockets`] takes the listening sockets systemd
//!   passes (`LISTEN_FDS`, checked against `LISTEN_PID` by `sd-notify`), by their
//!   `LISTEN_FDNAMES` name: `chat`, `chat-tls` and `http` (`FileDescriptorName=` of the
//!   `.socket` units).
//!   A single unnamed socket is the chat listener.
//! * **Notifications**: [`Notifier`] sends `READY=1`, `STATUS=`, `RELOADING=1` with
//!   `MONOTONIC_USEC`, `STOPPING=1`, `EXTEND_TIMEOUT_USEC` and `WATCHDOG=1`. A filesystem
//!   `NOTIFY_SOCKET` goes through `sd-notify`; an abstract one (`@name`, which that crate does
//!   not support) is sent to directly.
//! * **Watchdog and status**: [`supervise`] checks the accept loop and the backends every
//!   half watchdog period (at least every [`STATUS_EVERY`]), updates `STATUS=` when the summary
//!   changes, and sends `WATCHDOG=1` only when the check passed (see `Health::alive`).

use std::io;
use std::net::TcpListener as StdTcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::health;
use super::NodeState;

/// `FileDescriptorName=` of the chat listener's socket unit.
pub const FD_NAME_CHAT: &str = "chat";
/// `FileDescriptorName=` of the TLS chat listener's socket unit.
pub const FD_NAME_TLS: &str = "chat-tls";
/// `FileDescriptorName=` of the HTTP listener's socket unit.
pub const FD_NAME_HTTP: &str = "http";

/// The status line is refreshed at least this often.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);
/// While draining, systemd's stop timeout is pushed this far ahead, renewed every third of it.
pub const EXTEND_BY: Duration = Duration::from_secs(15);

/// What went wrong with the sockets systemd passed.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("cannot read the sockets systemd passed (LISTEN_FDS, LISTEN_FDNAMES): {0}; check the .socket units")]
    ListenFds(#[source] io::Error),
    #[error(
        "systemd passed a socket named {name:?} (fd {fd}); chat-zinx takes sockets named \"chat\", \"chat-tls\" and \"http\": set FileDescriptorName=chat, FileDescriptorName=chat-tls or FileDescriptorName=http in its .socket units"
    )]
    UnknownName { name: String, fd: RawFd },
    #[error("systemd passed two sockets named {name:?}; give each .socket unit of chat-zinx one ListenStream= and its own FileDescriptorName=")]
    Duplicate { name: String },
    #[error("the {name:?} socket systemd passed (fd {fd}) is not a listening TCP socket: use ListenStream= with an IP address and port in its .socket unit")]
    NotTcpListener { name: String, fd: RawFd },
}

/// The listeners systemd passed (socket activation); `None` for those it did not pass.
#[derive(Debug, Default)]
pub struct ActivatedSockets {
    pub chat: Option<StdTcpListener>,
    /// The TLS chat listener (`chat-tls`).
    pub tls: Option<StdTcpListener>,
    pub http: Option<StdTcpListener>,
}

impl ActivatedSockets {
    pub fn is_empty(&self) -> bool {
        self.chat.is_none() && self.tls.is_none() && self.http.is_none()
    }
}

/// Takes the listening sockets systemd passed to this process, if any.
///
/// Call it once, early: the sockets are owned by the result from then on.
pub fn take_activated_sockets() -> Result<ActivatedSockets, ActivationError> {
    let passed: Vec<(RawFd, String)> = sd_notify::listen_fds_with_names()
        .map_err(ActivationError::ListenFds)?
        .collect();
    // Own every descriptor first, so that each is closed if we refuse the set.
    let owned: Vec<(OwnedFd, String)> = passed
        .into_iter()
        .map(|(fd, name)| {
            // SAFETY: sd-notify checked LISTEN_PID: these descriptors were passed to this
            // process by the service manager, are open, and nothing else in the process owns
            // them (this function takes them once, at start-up).
            (unsafe { OwnedFd::from_raw_fd(fd) }, name)
        })
        .collect();
    let single = owned.len() == 1;
    let mut sockets = ActivatedSockets::default();
    for (fd, name) in owned {
        let raw = fd.as_raw_fd();
        let slot = match name.as_str() {
            FD_NAME_CHAT => &mut sockets.chat,
            FD_NAME_TLS => &mut sockets.tls,
            FD_NAME_HTTP => &mut sockets.http,
            // `systemd-socket-activate` without `--fdname`, or an unnamed socket unit.
            "unknown" | "" if single => &mut sockets.chat,
            _ => return Err(ActivationError::UnknownName { name, fd: raw }),
        };
        if slot.is_some() {
            return Err(ActivationError::Duplicate { name });
        }
        if !is_listening_tcp(&fd) {
            return Err(ActivationError::NotTcpListener { name, fd: raw });
        }
        *slot = Some(StdTcpListener::from(fd));
    }
    Ok(sockets)
}

/// An IPv4 or IPv6 stream socket in the listening state.
fn is_listening_tcp(fd: &OwnedFd) -> bool {
    let opt = |level: libc::c_int, name: libc::c_int| -> Option<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`, an int of that size.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                level,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (r == 0).then_some(value)
    };
    opt(libc::SOL_SOCKET, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        && opt(libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(1)
        && matches!(
            opt(libc::SOL_SOCKET, libc::SO_DOMAIN),
            Some(libc::AF_INET) | Some(libc::AF_INET6)
        )
}

/// Sends state changes to the service manager (no-op without `NOTIFY_SOCKET`).
#[derive(Clone, Default)]
pub struct Notifier {
    warned: Arc<AtomicBool>,
}

impl Notifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a service manager listens (`NOTIFY_SOCKET` is set).
    pub fn enabled(&self) -> bool {
        std::env::var_os("NOTIFY_SOCKET").is_some_and(|v| !v.is_empty())
    }

    /// Sends `states` in one datagram. A failure is logged once and otherwise ignored: the
    /// daemon serves on whether or not systemd hears it.
    pub fn send(&self, states: &[NotifyState<'_>]) {
        if states.is_empty() || !self.enabled() {
            return;
        }
        if let Err(e) = notify(states) {
            if !self.warned.swap(true, Ordering::Relaxed) {
                warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET); check NotifyAccess= in the unit");
            }
        }
    }

    /// `READY=1` with the status line.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `RELOADING=1` with the `MONOTONIC_USEC` systemd wants alongside it.
    pub fn reloading(&self) {
        let mut states = vec![NotifyState::Reloading];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        states.push(NotifyState::Status("reloading the configuration"));
        self.send(&states);
    }

    /// `STOPPING=1` with the status line, and `EXTEND_TIMEOUT_USEC` = `drain` (the time the
    /// shutdown may take), so that a drain longer than the unit's `TimeoutStopSec` is not cut.
    pub fn stopping(&self, status: &str, drain: Duration) {
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status(status),
            NotifyState::ExtendTimeoutUsec(usec(drain)),
        ]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }
}

fn notify(states: &[NotifyState<'_>]) -> io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let bytes = path.as_encoded_bytes();
    match bytes.strip_prefix(b"@") {
        None => sd_notify::notify(states),
        Some(name) => notify_abstract(name, states),
    }
}

/// Sends `states` to the abstract socket `name` (without its leading `@`).
fn notify_abstract(name: &[u8], states: &[NotifyState<'_>]) -> io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let mut msg = String::new();
    for s in states {
        msg.push_str(&s.to_string());
        msg.push('\n');
    }
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(msg.as_bytes(), &addr)?;
    Ok(())
}

/// The watchdog period systemd asks for (`WATCHDOG_USEC`, for this process), if any.
pub fn watchdog() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// How often [`supervise`] checks: half the watchdog period, at most [`STATUS_EVERY`].
pub fn check_period(watchdog: Option<Duration>) -> Duration {
    watchdog
        .map(|w| (w / 2).min(STATUS_EVERY))
        .unwrap_or(STATUS_EVERY)
        .max(Duration::from_millis(10))
}

/// Keeps `STATUS=` current and pings the watchdog while the node really serves, until
/// `shutdown`. `last_status` is the status line already sent (with `READY=1`).
pub async fn supervise(
    state: Arc<NodeState>,
    notifier: Notifier,
    mut last_status: String,
    shutdown: CancellationToken,
) {
    let watchdog = watchdog();
    let mut tick = tokio::time::interval(check_period(watchdog));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_ready = true;
    let mut was_alive = true;
    let mut seen_links = state.health.links_version();
    loop {
        // A link that changed during the last check is checked again at once.
        if state.health.links_version() == seen_links {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                // A backend connection was lost or is back: report it now, not at the next tick.
                _ = state.health.links_changed() => {}
            }
        }
        seen_links = state.health.links_version();
        let h = health::check(&state).await;
        if shutdown.is_cancelled() {
            break;
        }
        let line = health::status_line(&state, &h);
        let mut states = Vec::new();
        if line != last_status {
            states.push(NotifyState::Status(&line));
        }
        let alive = h.alive();
        if watchdog.is_some() && alive {
            states.push(NotifyState::Watchdog);
        }
        notifier.send(&states);

        let ready = h.ready();
        if ready != was_ready && !h.stopping {
            if ready {
                info!("ready again: {line}");
            } else {
                warn!("not ready: {}", h.problems());
            }
        }
        if alive != was_alive {
            if alive {
                info!("serving again; watchdog pings resumed");
            } else if watchdog.is_some() {
                warn!(
                    "not serving ({}); watchdog pings stop, and systemd restarts chat-zinx if this lasts past WatchdogSec",
                    h.problems()
                );
            }
        }
        was_ready = ready;
        was_alive = alive;
        last_status = line;
    }
}

fn usec(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// While a shutdown drains (after [`Notifier::stopping`]): keeps pushing systemd's stop
/// timeout ahead (`EXTEND_TIMEOUT_USEC`) and the watchdog fed. Never returns: race it against
/// the shutdown, which is bounded.
pub async fn extend_while_stopping(notifier: Notifier) {
    let watchdog = watchdog();
    let every = (EXTEND_BY / 3).min(check_period(watchdog));
    let extend = usec(EXTEND_BY);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        let mut states = vec![NotifyState::ExtendTimeoutUsec(extend)];
        if watchdog.is_some() {
            states.push(NotifyState::Watchdog);
        }
        notifier.send(&states);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_period_is_half_the_watchdog_and_at_most_the_status_period() {
        assert_eq!(check_period(None), STATUS_EVERY);
        assert_eq!(
            check_period(Some(Duration::from_secs(2))),
            Duration::from_secs(1)
        );
        assert_eq!(check_period(Some(Duration::from_secs(60))), STATUS_EVERY);
    }

    #[test]
    fn only_listening_tcp_sockets_are_taken() {
        let l = StdTcpListener::bind("127.0.0.1:0").unwrap();
        assert!(is_listening_tcp(&OwnedFd::from(l)));
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(!is_listening_tcp(&OwnedFd::from(s)));
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(!is_listening_tcp(&OwnedFd::from(a)));
    }

    #[test]
    fn abstract_notify_sockets_get_the_message() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("chat-zinx-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        notify_abstract(
            name.as_bytes(),
            &[NotifyState::Ready, NotifyState::Status("x")],
        )
        .unwrap();
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=x\n");
    }
}
