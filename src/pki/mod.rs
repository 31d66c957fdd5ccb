//! Weir's certificate authority and TLS configuration (issue 4, "Security held centrally").
//!
//! The gateway runs its own CA: created on first start in the data directory ([`CertificateAuthority::load_or_create`])
//! or imported from the site's PKI ([`CertificateAuthority::import`]). It issues the gateway's own server
//! certificate ([`CertificateAuthority::issue_server`]), client certificates with a key it generates
//! ([`CertificateAuthority::issue_client`]) or for a device's CSR ([`CertificateAuthority::sign_csr`]), exports them
//! ([`pem_bundle`], [`pkcs12`]) and revokes them through a CRL ([`CertificateAuthority::crl`]). Listeners get rustls
//! configurations ([`server_config`], [`ReloadableServerConfig`]) that check client certificates against the CA and
//! the CRL during the handshake, and the broker reads who a client is from its certificate ([`peer_identity`]).
//!
//! This module keeps no records: which certificates were issued, the revocations and the CRL number live in the
//! store, which calls in here with them. Its only files are the CA's own two, `ca.crt` and `ca.key`.
//!
//! Crypto is rcgen and rustls on the `ring` backend (no C toolchain beyond what ring needs, quick to build on the
//! gateway's 2 cores); x509-parser reads certificates back; p12-keystore writes PKCS#12 with modern algorithms.

mod ca;
mod cert;
mod crl;
mod error;
mod export;
mod issue;
mod names;
mod tls;

#[cfg(test)]
mod testutil;

pub use ca::{CA_CERT_FILE, CA_KEY_FILE, CaOptions, CertificateAuthority, OnExisting};
pub use cert::{CertInfo, IssuedCert, KeyType, Validity};
pub use crl::{RevocationList, RevocationReason, RevokedCert};
pub use error::PkiError;
pub use export::{pem_bundle, pkcs12};
pub use issue::{ClientCertRequest, CsrInfo, CsrOptions, ServerCertRequest};
pub use names::{CommonName, Serial, SubjectAltName, check_unique};
pub use tls::{
    ClientAuth, IdentitySource, PeerIdentity, ReloadableServerConfig, TlsMaterial, peer_identity,
    server_config,
};
