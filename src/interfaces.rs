//! The host's interface addresses, for the names of the server certificate: devices on the plant network reach a
//! gateway listening on `0.0.0.0` or `::` by one of these.
//!
//! Also the free space of the file system holding the data directory, for the console ([`free_bytes`]).
//!
//! One of the two places in Weir with `unsafe` (the other is `mqtt/net/stamped.rs`): `getifaddrs(3)` and
//! `statvfs(3)` from the C library (through `libc`, which the tree already has through tokio and others), wrapped
//! so that the list is walked only while it is alive and always freed. Nothing from the list outlives
//! [`addresses`].

#![allow(unsafe_code)]

use std::collections::HashSet;
use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Bytes available to unprivileged users on the file system holding `path`.
pub fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` points to writable memory of the right type;
    // statvfs fills it completely when it returns 0, and it is read only then.
    let stat = unsafe {
        if libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stat.assume_init()
    };
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets (u32 on armv7, u64 elsewhere)
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// An address configured on one of the host's network interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    /// `eth0`, `wlan0`, `lo`.
    pub interface: String,
    pub address: IpAddr,
    /// The interface is administratively up (`IFF_UP`); a down interface's addresses cannot be reached.
    pub up: bool,
    pub loopback: bool,
}

/// Every IPv4 and IPv6 address on the host's interfaces, in the order the system lists them, except IPv6
/// temporary ("privacy") addresses: those are for outgoing connections only and change every day or so.
pub fn addresses() -> std::io::Result<Vec<InterfaceAddress>> {
    let list = IfAddrs::new()?;
    let temporary = temporary_ipv6();
    let mut out = Vec::new();
    let mut node = list.0;
    while !node.is_null() {
        // SAFETY: `node` is the head or a successor in the list that getifaddrs made, and `list` frees it only
        // when dropped, at the end of this function. Nothing is written through it.
        let entry = unsafe { &*node };
        node = entry.ifa_next;
        // SAFETY: `ifa_addr` is null or points to a socket address whose `sa_family` says its real type, in
        // storage sized and aligned for that type (getifaddrs(3)); it lives as long as the list.
        let Some(address) = (unsafe { ip_address(entry.ifa_addr) }) else { continue };
        if temporary.contains(&address) {
            continue;
        }
        let interface = if entry.ifa_name.is_null() {
            String::new()
        } else {
            // SAFETY: a non-null `ifa_name` is a NUL-terminated string owned by the list.
            unsafe { CStr::from_ptr(entry.ifa_name) }.to_string_lossy().into_owned()
        };
        let flags = entry.ifa_flags;
        out.push(InterfaceAddress {
            interface,
            address,
            up: flags & libc::IFF_UP as libc::c_uint != 0,
            loopback: flags & libc::IFF_LOOPBACK as libc::c_uint != 0,
        });
    }
    Ok(out)
}

/// The list getifaddrs allocates, freed on drop.
struct IfAddrs(*mut libc::ifaddrs);

impl IfAddrs {
    fn new() -> std::io::Result<IfAddrs> {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs writes the head of a list it allocated into `head` and returns 0, or returns -1 and
        // sets errno. `head` is a valid place for that pointer.
        if unsafe { libc::getifaddrs(&mut head) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(IfAddrs(head))
    }
}

impl Drop for IfAddrs {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from a successful getifaddrs and is freed exactly once, here.
            unsafe { libc::freeifaddrs(self.0) };
        }
    }
}

/// The IP address in a socket address, if it is IPv4 or IPv6.
///
/// # Safety
/// `addr` is null or points to a valid socket address of the type its `sa_family` names.
unsafe fn ip_address(addr: *const libc::sockaddr) -> Option<IpAddr> {
    if addr.is_null() {
        return None;
    }
    // SAFETY: non-null and valid per this function's contract.
    let family = libc::c_int::from(unsafe { (*addr).sa_family });
    match family {
        libc::AF_INET => {
            // SAFETY: the family says the storage is a `sockaddr_in`.
            let v4 = unsafe { &*addr.cast::<libc::sockaddr_in>() };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage is a `sockaddr_in6`.
            let v6 = unsafe { &*addr.cast::<libc::sockaddr_in6>() };
            Some(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// IPv6 addresses the kernel marks temporary (`IFA_F_TEMPORARY`), from `/proc/net/if_inet6`, whose lines are
/// `<32 hex digits> <ifindex> <prefix length> <scope> <flags> <name>`. getifaddrs does not report the flag.
/// Empty where the file does not exist (no IPv6, not Linux).
fn temporary_ipv6() -> HashSet<IpAddr> {
    const IFA_F_TEMPORARY: u32 = 0x01;
    let Ok(text) = std::fs::read_to_string("/proc/net/if_inet6") else { return HashSet::new() };
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let hex = fields.next()?;
            let flags = u32::from_str_radix(fields.nth(3)?, 16).ok()?;
            if flags & IFA_F_TEMPORARY == 0 {
                return None;
            }
            let bits = u128::from_str_radix(hex, 16).ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(bits)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loopback_interface_is_listed() {
        let all = addresses().unwrap();
        let lo = all.iter().find(|a| a.address == IpAddr::from([127, 0, 0, 1])).unwrap();
        assert!(lo.up && lo.loopback, "{lo:?}");
        assert!(!lo.interface.is_empty());
    }
}
