//! The gateway's own TLS material: its CA (created on first start) and a server certificate issued by it for the
//! TLS listeners, renewed when it nears expiry or the names it should carry change. Files live in `<data>/pki`,
//! keys with mode 0600.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::SystemTime;

use crate::config::ListenerConfig;
use crate::pki::{CaOptions, CertificateAuthority, PkiError, ServerCertRequest};

pub const SERVER_CERT_FILE: &str = "server.crt";
pub const SERVER_KEY_FILE: &str = "server.key";

/// Server certificate, key and the CA that client certificates must chain to, as PEM.
#[derive(Debug, Clone)]
pub struct ServerMaterial {
    pub cert_chain_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
}

/// The names the server certificate carries beyond the defaults (the host name, `<host>.local`, `localhost`,
/// the listeners' bind addresses and 127.0.0.1): what devices type to reach the gateway.
#[derive(Debug, Clone)]
pub struct ServerNames {
    /// Instead of the system host name.
    pub hostname: Option<String>,
    pub dns: Vec<String>,
    pub addresses: Vec<IpAddr>,
    /// When a TLS listener binds `0.0.0.0` or `::`, also the host's interface addresses (default): devices
    /// on the plant network reach the gateway by its LAN address, which DHCP may change.
    pub interface_addresses: bool,
}

impl Default for ServerNames {
    fn default() -> ServerNames {
        ServerNames { hostname: None, dns: Vec::new(), addresses: Vec::new(), interface_addresses: true }
    }
}

/// Loads (or creates) the CA in `<data>/pki` and a current server certificate for the given listeners.
///
/// Called at start-up and by the hourly check: the interface addresses are listed afresh each time, so a
/// changed address (a new DHCP lease, a second network) gets a certificate that names it within the hour.
pub fn server_material(
    data_dir: &Path,
    listeners: &[ListenerConfig],
    names: &ServerNames,
) -> Result<ServerMaterial, TlsSetupError> {
    let interfaces = if names.interface_addresses && wildcard_binds(listeners) != (false, false) {
        match crate::interfaces::addresses() {
            Ok(found) => found.into_iter().filter(|a| a.up).map(|a| a.address).collect(),
            Err(e) => {
                tracing::warn!("cannot list the network interfaces for the server certificate: {e}");
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    server_material_for(data_dir, listeners, names, &interfaces)
}

/// [`server_material`] with the host's interface addresses given rather than listed (tests give their own).
pub fn server_material_for(
    data_dir: &Path,
    listeners: &[ListenerConfig],
    names: &ServerNames,
    interfaces: &[IpAddr],
) -> Result<ServerMaterial, TlsSetupError> {
    let dir = data_dir.join("pki");
    let hostname = names.hostname.clone().unwrap_or_else(hostname);
    let ca = load_or_create_ca(&dir)?;
    let addresses = certificate_addresses(listeners, names, interfaces);
    let mut request = ServerCertRequest::new(&hostname, addresses);
    request.extra_dns.push("localhost".into());
    request.extra_dns.extend(names.dns.iter().cloned());
    let cert_path = dir.join(SERVER_CERT_FILE);
    let key_path = dir.join(SERVER_KEY_FILE);
    let current = std::fs::read_to_string(&cert_path).ok();
    let key = std::fs::read_to_string(&key_path).ok();
    if let (Some(cert), Some(key)) = (&current, &key)
        && !request.needs_new_certificate(cert, &ca, SystemTime::now(), ServerCertRequest::RENEWAL_MARGIN)
    {
        return Ok(ServerMaterial {
            cert_chain_pem: chain(cert, &ca),
            key_pem: key.clone(),
            ca_pem: ca.cert_pem().to_owned(),
        });
    }
    let issued = ca.issue_server(&request)?;
    let key_pem = issued.key_pem.clone().unwrap_or_default();
    write_private(&key_path, &key_pem)?;
    std::fs::write(&cert_path, &issued.cert_pem)
        .map_err(|source| TlsSetupError::Io { path: cert_path.clone(), source })?;
    tracing::info!(
        path = %cert_path.display(),
        names = ?issued.info.sans,
        "issued a server certificate for the TLS listeners"
    );
    Ok(ServerMaterial {
        cert_chain_pem: chain(&issued.cert_pem, &ca),
        key_pem,
        ca_pem: ca.cert_pem().to_owned(),
    })
}

/// The IP addresses the server certificate names: the listeners' bind addresses (unless unspecified),
/// 127.0.0.1, `[tls] addresses`, and the interface addresses a TLS listener on `0.0.0.0` (IPv4 ones) or `::`
/// (all: Linux binds `::` dual-stack) can be reached by, in a stable order so that the same set never causes a
/// reissue.
///
/// Left out: loopback addresses other than 127.0.0.1 (no device reaches them), multicast and unspecified
/// ones, and IPv6 link-local addresses (`fe80::/10`). Those exist on every IPv6 interface whether or not the
/// network uses IPv6, are only usable with a zone (`fe80::1%eth0`) that certificate checks do not know, and
/// embed the MAC address on many systems: devices reach the gateway by a routable address, its name or its
/// `.local` name instead. IPv4 link-local addresses (169.254/16) are kept: on a plant network without DHCP
/// they can be how devices reach the gateway.
fn certificate_addresses(
    listeners: &[ListenerConfig],
    names: &ServerNames,
    interfaces: &[IpAddr],
) -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> =
        listeners.iter().map(|l| l.bind.ip()).filter(|ip| !ip.is_unspecified()).collect();
    addresses.push(IpAddr::from([127, 0, 0, 1]));
    addresses.extend(&names.addresses);
    let (v4, v6) = wildcard_binds(listeners);
    if names.interface_addresses {
        addresses.extend(interfaces.iter().filter(|ip| match ip {
            IpAddr::V4(a) => {
                (v4 || v6)
                    && !a.is_loopback()
                    && !a.is_unspecified()
                    && !a.is_multicast()
                    && !a.is_broadcast()
            }
            IpAddr::V6(a) => {
                v6 && !a.is_loopback()
                    && !a.is_unspecified()
                    && !a.is_multicast()
                    && !a.is_unicast_link_local()
            }
        }));
    }
    addresses.sort();
    addresses.dedup();
    addresses
}

/// Whether a TLS listener binds `0.0.0.0`, and whether one binds `::`.
fn wildcard_binds(listeners: &[ListenerConfig]) -> (bool, bool) {
    let tls_binds = || listeners.iter().filter(|l| l.protocol.is_tls()).map(|l| l.bind.ip());
    (
        tls_binds().any(|ip| ip == IpAddr::from([0, 0, 0, 0])),
        tls_binds().any(|ip| ip == IpAddr::from([0u16; 8])),
    )
}

/// The CA in `dir`, created (named after this host) if there is none yet.
pub fn load_or_create_ca(dir: &Path) -> Result<CertificateAuthority, PkiError> {
    CertificateAuthority::load_or_create(dir, &CaOptions::for_host(&hostname()))
}

fn chain(cert_pem: &str, ca: &CertificateAuthority) -> String {
    format!("{}\n{}", cert_pem.trim_end(), ca.chain_pem())
}

fn write_private(path: &Path, text: &str) -> Result<(), TlsSetupError> {
    let io = |source| TlsSetupError::Io { path: path.to_owned(), source };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)
}

/// The machine's host name, for certificate names (`weir` if it cannot be read).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "weir".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::net::Protocol;
    use crate::pki::{CertInfo, ClientAuth, IdentitySource, SubjectAltName};

    fn tls_on(bind: &str) -> ListenerConfig {
        ListenerConfig {
            name: "tls".into(),
            protocol: Protocol::Tls,
            bind: bind.parse().unwrap(),
            ws_path: String::new(),
            allow_anonymous: false,
            client_certificates: ClientAuth::None,
            identity: IdentitySource::CommonName,
            certificate_password: false,
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn certificate_ips(material: &ServerMaterial) -> Vec<IpAddr> {
        let info = CertInfo::from_pem(&material.cert_chain_pem).unwrap();
        let mut found: Vec<IpAddr> = info
            .sans
            .iter()
            .filter_map(|san| match san {
                SubjectAltName::Ip(ip) => Some(*ip),
                _ => None,
            })
            .collect();
        found.sort();
        found
    }

    #[test]
    fn a_changed_interface_address_reissues_the_certificate_and_the_same_set_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let listeners = [tls_on("0.0.0.0:8883")];
        let names = ServerNames { hostname: Some("gw".into()), ..ServerNames::default() };
        let lease = ips(&["192.168.1.10", "10.4.0.2", "127.0.0.1", "fe80::1", "fd00::7"]);
        let first = server_material_for(dir.path(), &listeners, &names, &lease).unwrap();
        assert_eq!(
            certificate_ips(&first),
            ips(&["10.4.0.2", "127.0.0.1", "192.168.1.10"]),
            "IPv4 only on 0.0.0.0"
        );

        let reordered = ips(&["fd00::7", "10.4.0.2", "192.168.1.10"]);
        let same = server_material_for(dir.path(), &listeners, &names, &reordered).unwrap();
        assert_eq!(same.cert_chain_pem, first.cert_chain_pem, "the same addresses keep the certificate");

        // A new DHCP lease: the next check reissues for the new address, without the old one.
        let new_lease = ips(&["192.168.1.23", "10.4.0.2"]);
        let renewed = server_material_for(dir.path(), &listeners, &names, &new_lease).unwrap();
        assert_ne!(renewed.cert_chain_pem, first.cert_chain_pem);
        assert_eq!(certificate_ips(&renewed), ips(&["10.4.0.2", "127.0.0.1", "192.168.1.23"]));
        let on_disk = std::fs::read_to_string(dir.path().join("pki").join(SERVER_CERT_FILE)).unwrap();
        assert!(renewed.cert_chain_pem.starts_with(on_disk.trim()), "and it is the one on disk");
    }

    #[test]
    fn which_interface_addresses_a_listener_is_reached_by() {
        let lease =
            ips(&["192.168.1.10", "127.0.0.2", "169.254.3.4", "fe80::1", "fd00::7", "::1", "ff02::1"]);
        let names = ServerNames::default();
        let on = |binds: &[&str], names: &ServerNames| {
            let listeners: Vec<ListenerConfig> = binds.iter().map(|b| tls_on(b)).collect();
            certificate_addresses(&listeners, names, &lease)
        };
        assert_eq!(on(&["0.0.0.0:8883"], &names), ips(&["127.0.0.1", "169.254.3.4", "192.168.1.10"]));
        assert_eq!(
            on(&["[::]:8883"], &names),
            ips(&["127.0.0.1", "169.254.3.4", "192.168.1.10", "fd00::7"]),
            "dual stack; no link-local IPv6, loopback or multicast"
        );
        assert_eq!(
            on(&["192.168.1.10:8883"], &names),
            ips(&["127.0.0.1", "192.168.1.10"]),
            "a bound address only"
        );
        let mut tcp = tls_on("0.0.0.0:1883");
        tcp.protocol = Protocol::Tcp;
        assert_eq!(
            certificate_addresses(&[tcp], &names, &lease),
            ips(&["127.0.0.1"]),
            "only TLS listeners count"
        );
        let off = ServerNames {
            interface_addresses: false,
            addresses: ips(&["192.0.2.9"]),
            ..ServerNames::default()
        };
        assert_eq!(
            on(&["0.0.0.0:8883"], &off),
            ips(&["127.0.0.1", "192.0.2.9"]),
            "turned off: configured ones only"
        );
    }
}
