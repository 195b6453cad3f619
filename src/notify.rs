//! systemd's service notification protocol (sd_notify(3)) without
//! libsystemd: one datagram per message to the socket in `$NOTIFY_SOCKET`
//! (a path, or an abstract name written with a leading `@`).
//!
//! The supervisor sends `READY=1` once every child is ready (models loaded,
//! frontend listening), `STOPPING=1` when it starts draining, and, when
//! systemd set `WATCHDOG_USEC`, `WATCHDOG=1` every half of that period while
//! its children are healthy (see `Supervisor::healthy`). Without
//! `$NOTIFY_SOCKET` every call is a no-op.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`; `None`
    /// when not started by a service manager that listens.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = path.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name),
            None => SocketAddr::from_pathname(&path),
        };
        let addr = match addr {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("NOTIFY_SOCKET={path:?} is not a usable socket address ({e}); not notifying systemd");
                return None;
            }
        };
        let socket = UnixDatagram::unbound().ok()?;
        // WATCHDOG_PID, when set, names the process that must ping.
        let ours = std::env::var("WATCHDOG_PID").map_or(true, |p| p.trim() == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&us| us > 0 && ours)
            .map(Duration::from_micros);
        Some(Notifier { socket, addr, watchdog })
    }

    /// The watchdog period systemd asked for, if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one message (newline-separated `KEY=value` assignments).
    pub fn send(&self, msg: &str) {
        if let Err(e) = self.socket.send_to_addr(msg.as_bytes(), &self.addr) {
            tracing::warn!("cannot notify systemd ({msg:?}): {e}");
        }
    }
}
