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
#[derive(Debug, Clone, Default)]
pub struct ServerNames {
    /// Instead of the system host name.
    pub hostname: Option<String>,
    pub dns: Vec<String>,
    pub addresses: Vec<IpAddr>,
}

/// Loads (or creates) the CA in `<data>/pki` and a current server certificate for the given listeners.
pub fn server_material(
    data_dir: &Path,
    listeners: &[ListenerConfig],
    names: &ServerNames,
) -> Result<ServerMaterial, TlsSetupError> {
    let dir = data_dir.join("pki");
    let hostname = names.hostname.clone().unwrap_or_else(hostname);
    let ca = load_or_create_ca(&dir)?;
    let mut addresses: Vec<IpAddr> =
        listeners.iter().map(|l| l.bind.ip()).filter(|ip| !ip.is_unspecified()).collect();
    addresses.push(IpAddr::from([127, 0, 0, 1]));
    addresses.extend(&names.addresses);
    addresses.sort();
    addresses.dedup();
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
