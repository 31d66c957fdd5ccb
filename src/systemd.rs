//! systemd integration without libsystemd: the `sd_notify(3)` messages a `Type=notify` unit with a watchdog
//! expects. Outside systemd (no `$NOTIFY_SOCKET`) every function here does nothing.
//!
//! - [`notify_ready`] once the listeners are bound and the gateway is serving: `systemctl start` returns then,
//!   and units ordered after `weir.service` start against a listening gateway.
//! - [`notify_stopping`] when shutdown begins.
//! - [`notify_watchdog`] from the broker router's one-second tick (`WatchdogSec=` in the unit): if the router
//!   hangs, the pings stop and systemd restarts the gateway.
//!
//! The protocol is one datagram per message to the `AF_UNIX` socket named by `$NOTIFY_SOCKET`: a path, or an
//! abstract address written with a leading `@` (systemd uses abstract sockets in containers and for some
//! managers). The standard library sends to both (`SocketAddrExt::from_abstract_name`), so no unsafe code and no
//! new dependency are needed. This module depends on nothing else in the crate.

use std::ffi::OsStr;
use std::io;
#[cfg(any(target_os = "linux", target_os = "android"))]
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;
use std::time::Duration;

/// Tells the service manager that the gateway is up (`READY=1`). Returns whether a manager was told.
pub fn notify_ready() -> bool {
    send_process("READY=1")
}

/// Tells the service manager that the gateway is shutting down (`STOPPING=1`).
pub fn notify_stopping() -> bool {
    send_process("STOPPING=1")
}

/// Pings the watchdog (`WATCHDOG=1`), if the service manager asked for pings for this process; else nothing.
/// Cheap enough to call every second: one non-blocking datagram, or one atomic load when there is no watchdog.
pub fn notify_watchdog() -> bool {
    watchdog_interval().is_some() && send_process("WATCHDOG=1")
}

/// How often the service manager expects [`notify_watchdog`] at the latest (`$WATCHDOG_USEC`), when it watches
/// this process (`$WATCHDOG_PID` unset or ours). Callers should ping at least twice per interval.
pub fn watchdog_interval() -> Option<Duration> {
    static INTERVAL: OnceLock<Option<Duration>> = OnceLock::new();
    *INTERVAL.get_or_init(|| {
        let usec = std::env::var_os("WATCHDOG_USEC");
        let pid = std::env::var_os("WATCHDOG_PID");
        watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
    })
}

/// [`watchdog_interval`] from the two variables' values, for a process with id `own_pid`.
pub fn watchdog_interval_from(usec: Option<&OsStr>, pid: Option<&OsStr>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.to_str()?.parse().ok()?;
    if usec == 0 {
        return None;
    }
    match pid {
        None => {}
        Some(pid) if pid.to_str().and_then(|p| p.parse::<u32>().ok()) == Some(own_pid) => {}
        Some(_) => return None,
    }
    Some(Duration::from_micros(usec))
}

/// A connection to a service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
}

impl Notifier {
    /// The notifier for `$NOTIFY_SOCKET`, if it is set and usable.
    pub fn from_env() -> Option<Notifier> {
        let address = std::env::var_os("NOTIFY_SOCKET")?;
        match Notifier::new(&address) {
            Ok(notifier) => Some(notifier),
            Err(e) => {
                tracing::warn!(
                    "NOTIFY_SOCKET={}: {e}; systemd will not be notified",
                    address.to_string_lossy()
                );
                None
            }
        }
    }

    /// A notifier for a socket path, or an abstract address written `@name`.
    pub fn new(address: &OsStr) -> io::Result<Notifier> {
        let bytes = address.as_bytes();
        let address = match bytes.strip_prefix(b"@") {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Some(name) => SocketAddr::from_abstract_name(name)?,
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            Some(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "abstract sockets exist on Linux only",
                ));
            }
            None if bytes.starts_with(b"/") => SocketAddr::from_pathname(address)?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "neither an absolute path nor an abstract address (@name)",
                ));
            }
        };
        let socket = UnixDatagram::unbound()?;
        // The watchdog ping comes from the router task: a full socket buffer must drop a ping (the next one
        // follows a second later), never stall the router.
        socket.set_nonblocking(true)?;
        Ok(Notifier { socket, address })
    }

    /// Sends one notification, e.g. `READY=1` (several may be joined with newlines).
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let sent = self.socket.send_to_addr(state.as_bytes(), &self.address)?;
        if sent == state.len() {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::WriteZero, "notification truncated"))
        }
    }
}

/// Sends to this process's service manager, if it has one. Failures are logged at debug level only: a missed
/// notification is systemd's to notice (a start timeout, a watchdog restart), not a reason to stop serving.
fn send_process(state: &str) -> bool {
    static NOTIFIER: OnceLock<Option<Notifier>> = OnceLock::new();
    let Some(notifier) = NOTIFIER.get_or_init(Notifier::from_env) else {
        return false;
    };
    match notifier.notify(state) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!("systemd notification {state:?} not sent: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn notifies_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let manager = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::new(path.as_os_str()).unwrap();
        notifier.notify("READY=1").unwrap();
        notifier.notify("WATCHDOG=1").unwrap();
        notifier.notify("STOPPING=1").unwrap();
        assert_eq!(receive(&manager), "READY=1");
        assert_eq!(receive(&manager), "WATCHDOG=1");
        assert_eq!(receive(&manager), "STOPPING=1");
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn notifies_an_abstract_socket() {
        let name = format!("weir-test-notify-{}-{:?}", std::process::id(), std::time::Instant::now());
        let manager =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        let notifier = Notifier::new(OsStr::new(&format!("@{name}"))).unwrap();
        notifier.notify("READY=1").unwrap();
        assert_eq!(receive(&manager), "READY=1");
    }

    #[test]
    fn a_vanished_manager_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone");
        let notifier = Notifier::new(path.as_os_str()).unwrap();
        assert!(notifier.notify("WATCHDOG=1").is_err());
    }

    #[test]
    fn refuses_relative_addresses() {
        assert!(Notifier::new(OsStr::new("notify")).is_err());
        assert!(Notifier::new(OsStr::new("")).is_err());
    }

    #[test]
    fn watchdog_interval_is_for_this_process_only() {
        let s = |v: &'static str| Some(OsStr::new(v));
        assert_eq!(watchdog_interval_from(s("30000000"), None, 7), Some(Duration::from_secs(30)));
        assert_eq!(watchdog_interval_from(s("30000000"), s("7"), 7), Some(Duration::from_secs(30)));
        assert_eq!(watchdog_interval_from(s("30000000"), s("8"), 7), None);
        assert_eq!(watchdog_interval_from(s("30000000"), s("x"), 7), None);
        assert_eq!(watchdog_interval_from(s("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(s("soon"), None, 7), None);
        assert_eq!(watchdog_interval_from(None, s("7"), 7), None);
    }
}
