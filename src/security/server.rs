//! The gateway's own TLS material: its CA (created on first start) and a server certificate issued by it for the
//! TLS listeners, renewed when it nears expiry or the names it should carry change. Files live in `<data>/pki`,
//! keys with mode 0600.
//!
//! [`ServerTls`] is what the TLS listeners are configured with, and how it is brought up to date: renewal of
//! the server certificate and a fresh CRL after each revocation, without a restart.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use super::certs::{CertError, Certificates};
use crate::config::{ListenerConfig, ServerNames};
use crate::files::{self, PRIVATE_FILE};
use crate::pki::{
    CaOptions, CertificateAuthority, PkiError, ReloadableServerConfig, ServerCertRequest, TlsMaterial,
};

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
    #[error(transparent)]
    File(#[from] files::FileError),
    #[error(transparent)]
    Certificates(#[from] CertError),
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
    // Key first: a power cut between the two leaves a new key beside the old certificate, which the next start
    // sees as a mismatch and reissues, never a torn file.
    files::write_atomic(&key_path, key_pem.as_bytes(), PRIVATE_FILE)?;
    files::write_atomic(&cert_path, issued.cert_pem.as_bytes(), PRIVATE_FILE)?;
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

/// The machine's host name, for certificate names (`weir` if it cannot be read).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "weir".into())
}

/// The TLS listeners' certificate, key and CRL, and how to bring them up to date.
#[derive(Debug)]
pub struct ServerTls {
    data_dir: PathBuf,
    listeners: Vec<ListenerConfig>,
    names: ServerNames,
    certificates: Certificates,
    material: Mutex<ServerMaterial>,
    configs: Vec<Arc<ReloadableServerConfig>>,
}

impl ServerTls {
    /// The current server certificate (issued or renewed if due) and CRL, and one rustls configuration per TLS
    /// listener, in the order of `listeners` (`None` for the others).
    pub async fn new(
        data_dir: &Path,
        listeners: &[ListenerConfig],
        names: &ServerNames,
        certificates: &Certificates,
    ) -> Result<(ServerTls, Vec<Option<Arc<ReloadableServerConfig>>>), TlsSetupError> {
        let material = server_material(data_dir, listeners, names)?;
        let crl = certificates.crl_pem().await?;
        let mut configs = Vec::new();
        let mut per_listener = Vec::with_capacity(listeners.len());
        for l in listeners {
            if !l.protocol.is_tls() {
                per_listener.push(None);
                continue;
            }
            let config =
                Arc::new(ReloadableServerConfig::new(&tls_material(&material, &crl), l.client_certificates)?);
            configs.push(config.clone());
            per_listener.push(Some(config));
        }
        let tls = ServerTls {
            data_dir: data_dir.to_owned(),
            listeners: listeners.to_vec(),
            names: names.clone(),
            certificates: certificates.clone(),
            material: Mutex::new(material),
            configs,
        };
        Ok((tls, per_listener))
    }

    /// Renews the server certificate if due and reloads every TLS listener with it and a fresh CRL; returns
    /// whether the certificate changed.
    pub async fn refresh(&self) -> Result<bool, TlsSetupError> {
        let current = server_material(&self.data_dir, &self.listeners, &self.names)?;
        let renewed = {
            let mut material = self.material.lock().unwrap_or_else(PoisonError::into_inner);
            let renewed = material.cert_chain_pem != current.cert_chain_pem;
            *material = current.clone();
            renewed
        };
        let crl = self.certificates.crl_pem().await?;
        for config in &self.configs {
            config.reload(&tls_material(&current, &crl))?;
        }
        if renewed {
            tracing::info!("TLS listeners now use the renewed server certificate");
        }
        Ok(renewed)
    }
}

fn tls_material<'a>(material: &'a ServerMaterial, crl: &'a str) -> TlsMaterial<'a> {
    TlsMaterial {
        cert_chain_pem: &material.cert_chain_pem,
        key_pem: &material.key_pem,
        client_ca_pem: &material.ca_pem,
        crl_pem: Some(crl),
    }
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

    /// A renewal replaces the key and certificate files whole (a power cut leaves the old or the new one, never
    /// a truncated one), with mode 0600.
    #[test]
    fn a_renewed_server_key_replaces_the_old_file_instead_of_rewriting_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let listeners = [tls_on("0.0.0.0:8883")];
        let names = ServerNames { hostname: Some("gw".into()), ..ServerNames::default() };
        let first = server_material_for(dir.path(), &listeners, &names, &ips(&["192.168.1.10"])).unwrap();
        let key_path = dir.path().join("pki").join(SERVER_KEY_FILE);
        // Someone holding the old key file: an in-place rewrite (truncate, write) would change what they see.
        let held = dir.path().join("held.key");
        std::fs::hard_link(&key_path, &held).unwrap();
        let renewed = server_material_for(dir.path(), &listeners, &names, &ips(&["192.168.1.23"])).unwrap();
        assert_ne!(renewed.key_pem, first.key_pem);
        assert_eq!(std::fs::read_to_string(&held).unwrap(), first.key_pem, "the old file was not rewritten");
        assert_eq!(std::fs::read_to_string(&key_path).unwrap(), renewed.key_pem);
        for file in [SERVER_KEY_FILE, SERVER_CERT_FILE] {
            let mode = std::fs::metadata(dir.path().join("pki").join(file)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
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
