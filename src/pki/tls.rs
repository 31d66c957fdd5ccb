//! TLS for the listeners: rustls server configurations built from the CA's material, swappable while the
//! listener runs, and the identity of a client taken from its verified certificate.
//!
//! Client certificates are checked by rustls' WebPKI verifier during the handshake: they must chain to the client
//! CA, be within their validity, carry the client-authentication usage and not be listed in the CRL. A refused
//! certificate never reaches the MQTT layer. Only TLS 1.2 and 1.3 are offered, with the `ring` provider.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use x509_parser::extensions::GeneralName;

use super::cert;
use super::error::PkiError;
use super::names::Serial;

/// Whether a listener asks clients for a certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ClientAuth {
    /// No client certificates; clients authenticate with user name and password.
    #[default]
    None,
    /// A client may present a certificate (which must then be valid); clients without one fall back to user
    /// name and password. For migrating a site device by device.
    Optional,
    /// Every client must present a valid certificate.
    Required,
}

/// PEM texts a listener's TLS configuration is built from. Borrowed, so the caller can read them from files or
/// the store without this module knowing which.
#[derive(Debug, Clone, Copy)]
pub struct TlsMaterial<'a> {
    /// The server certificate, optionally followed by intermediates.
    pub cert_chain_pem: &'a str,
    /// The server's private key (PKCS#8, SEC1 or PKCS#1).
    pub key_pem: &'a str,
    /// Trust anchors for client certificates: the issuing CA ([`super::CertificateAuthority::cert_pem`]) only,
    /// so that certificates from sibling CAs of an enterprise root are not accepted.
    pub client_ca_pem: &'a str,
    /// The current CRL of the client CA; `None` turns revocation checking off.
    pub crl_pem: Option<&'a str>,
}

/// Builds a listener's server configuration. Every input is checked here, so a listener that gets a
/// configuration will not fail its handshakes because of bad material.
pub fn server_config(
    material: &TlsMaterial<'_>,
    client_auth: ClientAuth,
) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = cert::cert_ders(material.cert_chain_pem)?;
    let key = PrivateKeyDer::from_pem_slice(material.key_pem.as_bytes())
        .map_err(|e| PkiError::InvalidKey(format!("no private key found in the PEM text: {e}")))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional | ClientAuth::Required => {
            builder.with_client_cert_verifier(client_verifier(material, client_auth, provider)?)
        }
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => PkiError::KeyMismatch,
        other => PkiError::Tls(other.to_string()),
    })?;
    Ok(Arc::new(config))
}

fn client_verifier(
    material: &TlsMaterial<'_>,
    client_auth: ClientAuth,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, PkiError> {
    let ca_ders = cert::cert_ders(material.client_ca_pem)?;
    let mut roots = rustls::RootCertStore::empty();
    for der in &ca_ders {
        roots.add(der.clone()).map_err(|e| PkiError::InvalidCertificate(format!("client CA: {e}")))?;
    }
    let crls = match material.crl_pem {
        None => Vec::new(),
        Some(pem) => {
            let crls = CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| PkiError::InvalidCrl(e.to_string()))?;
            if crls.is_empty() {
                return Err(PkiError::InvalidCrl("no X509 CRL block in the PEM text".into()));
            }
            for crl in &crls {
                check_crl_issuer(crl, &ca_ders)?;
            }
            crls
        }
    };
    // Only the client's own certificate is looked up in the CRL: the trust anchor is our CA itself, and we hold
    // no CRL for the CA's parents.
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .with_crls(crls)
        .only_check_end_entity_revocation();
    if client_auth == ClientAuth::Optional {
        builder = builder.allow_unauthenticated();
    }
    builder.build().map_err(|e| match e {
        rustls::server::VerifierBuilderError::InvalidCrl(e) => PkiError::InvalidCrl(format!("{e:?}")),
        other => PkiError::Tls(other.to_string()),
    })
}

/// Refuses a CRL that no client CA signed. rustls would silently ignore it, then find no revocation status for
/// any client and refuse them all: a wrong file would lock every device out instead of failing here.
fn check_crl_issuer(crl: &[u8], ca_ders: &[rustls::pki_types::CertificateDer<'_>]) -> Result<(), PkiError> {
    let (_, crl) = x509_parser::parse_x509_crl(crl).map_err(|e| PkiError::InvalidCrl(e.to_string()))?;
    let signed_by_a_ca = ca_ders.iter().filter_map(|der| cert::parse_x509(der).ok()).any(|ca| {
        ca.subject().as_raw() == crl.issuer().as_raw() && crl.verify_signature(ca.public_key()).is_ok()
    });
    if signed_by_a_ca {
        Ok(())
    } else {
        Err(PkiError::InvalidCrl("it is not signed by the client CA".into()))
    }
}

/// A listener's current server configuration, replaced in place when the server certificate is renewed or a
/// new CRL is signed. Each accepted connection takes [`ReloadableServerConfig::current`] once and keeps that
/// configuration; connections already open are not affected (the broker drops revoked ones itself).
pub struct ReloadableServerConfig {
    client_auth: ClientAuth,
    /// A read lock is held only to clone the `Arc`, a write lock only to swap it: never across I/O or `.await`.
    current: RwLock<Arc<ServerConfig>>,
}

impl ReloadableServerConfig {
    /// Builds the first configuration for a listener with `client_auth`.
    pub fn new(material: &TlsMaterial<'_>, client_auth: ClientAuth) -> Result<Self, PkiError> {
        Ok(Self { client_auth, current: RwLock::new(server_config(material, client_auth)?) })
    }

    /// The configuration to accept the next connection with.
    pub fn current(&self) -> Arc<ServerConfig> {
        // A writer cannot panic while holding the lock (it only assigns an Arc), so poisoning cannot leave a
        // half-written value; use what is there.
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Rebuilds from new material (renewed certificate, new CRL). On error the current configuration stays.
    pub fn reload(&self, material: &TlsMaterial<'_>) -> Result<(), PkiError> {
        let next = server_config(material, self.client_auth)?;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        Ok(())
    }

    /// The listener's client-certificate policy.
    pub fn client_auth(&self) -> ClientAuth {
        self.client_auth
    }
}

impl fmt::Debug for ReloadableServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadableServerConfig")
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

/// Which part of a client certificate becomes the MQTT user name (Mosquitto's `use_identity_as_username` takes
/// the common name).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IdentitySource {
    /// The subject common name.
    #[default]
    CommonName,
    /// The first DNS subject alternative name.
    DnsSan,
    /// The first email subject alternative name.
    EmailSan,
    /// The first URI subject alternative name (SPIFFE-style identities).
    UriSan,
}

impl fmt::Display for IdentitySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CommonName => "common name",
            Self::DnsSan => "DNS subject alternative name",
            Self::EmailSan => "email subject alternative name",
            Self::UriSan => "URI subject alternative name",
        })
    }
}

/// Who a verified client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The name from the listener's [`IdentitySource`]: the MQTT user name for ACLs.
    pub name: String,
    /// The certificate's serial, so the broker can drop the connection when the serial is revoked.
    pub serial: Serial,
    /// The certificate's end of validity, so the broker can drop the connection when it expires.
    pub not_after: SystemTime,
}

/// The identity in a client certificate that rustls has already verified (the first of
/// `ServerConnection::peer_certificates()`). This does no verification of its own.
pub fn peer_identity(cert_der: &[u8], source: IdentitySource) -> Result<PeerIdentity, PkiError> {
    let cert = cert::parse_x509(cert_der)?;
    let name = match source {
        IdentitySource::CommonName => cert::common_name(&cert),
        IdentitySource::DnsSan | IdentitySource::EmailSan | IdentitySource::UriSan => {
            cert.subject_alternative_name().ok().flatten().and_then(|ext| {
                ext.value.general_names.iter().find_map(|name| match (source, name) {
                    (IdentitySource::DnsSan, GeneralName::DNSName(n))
                    | (IdentitySource::EmailSan, GeneralName::RFC822Name(n))
                    | (IdentitySource::UriSan, GeneralName::URI(n)) => Some((*n).to_owned()),
                    _ => None,
                })
            })
        }
    };
    let name = name.filter(|n| !n.is_empty()).ok_or(PkiError::NoIdentity(source))?;
    Ok(PeerIdentity {
        name,
        serial: Serial::from_bytes(cert.raw_serial()),
        not_after: cert::from_unix_seconds(cert.validity().not_after.timestamp()),
    })
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
