//! What can go wrong in the certificate authority.
//!
//! Every variant is something an operator or a device can cause (a bad CSR, a mismatched key, a name that cannot
//! go in a certificate) or a file-system failure; the messages are meant to be shown to them as they are, by the
//! CLI and the web console. An error always means nothing was written or changed.

use std::path::PathBuf;

use super::names::Serial;
use super::tls::IdentitySource;

/// Why a certificate-authority operation was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// Reading or writing a file of the CA failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// One of the two CA files exists without the other. Creating a new CA would orphan every certificate issued
    /// so far, so this is left to the operator.
    #[error("incomplete CA in {}: {present} exists but {missing} does not; restore it, or remove both", dir.display())]
    CaIncomplete {
        /// The CA directory.
        dir: PathBuf,
        /// The file that exists.
        present: &'static str,
        /// The file that does not.
        missing: &'static str,
    },
    /// An import would replace a CA that already exists, and the caller did not ask for that.
    #[error("a CA already exists in {}", .0.display())]
    CaExists(PathBuf),
    /// The PEM text does not hold a parseable X.509 certificate.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    /// The PEM text does not hold a private key that we can use.
    #[error("invalid private key: {0}")]
    InvalidKey(String),
    /// The private key given with a certificate is not the one its public key belongs to.
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    /// A certificate offered as a CA cannot sign certificates or CRLs.
    #[error("not a usable CA certificate: {0}")]
    NotCa(&'static str),
    /// The CA certificate is expired or not yet valid: anything it signed would be refused.
    #[error("the CA certificate is not valid now (valid from {not_before} to {not_after}, unix seconds)")]
    CaNotValid {
        /// Start of the CA's validity, seconds since the Unix epoch.
        not_before: i64,
        /// End of the CA's validity, seconds since the Unix epoch.
        not_after: i64,
    },
    /// The CSR is not PEM, not a certification request, or not well-formed DER.
    #[error("malformed certificate signing request: {0}")]
    MalformedCsr(String),
    /// The CSR parses but its self-signature does not verify: it was altered, or the sender does not hold the key.
    #[error("the certificate signing request's signature does not verify")]
    CsrSignature,
    /// The CSR is well-formed but asks for something we do not sign (an unknown extension, an unsupported key).
    #[error("certificate signing request refused: {0}")]
    CsrRefused(String),
    /// A name cannot go into a certificate.
    #[error("invalid {kind} {value:?}: {reason}")]
    InvalidName {
        /// Which kind of name: "common name", "DNS name", "email address", "URI".
        kind: &'static str,
        /// The name as given.
        value: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// The same subject alternative name is listed twice (compared case-insensitively where the name is).
    #[error("subject alternative name {0} is listed twice")]
    DuplicateName(String),
    /// The requested validity period is empty or lies outside the CA's own.
    #[error("invalid validity: {0}")]
    InvalidValidity(&'static str),
    /// A serial number is not 1 to 20 bytes of hexadecimal.
    #[error("invalid serial number {0:?}")]
    InvalidSerial(String),
    /// The certificate is already on the revocation list.
    #[error("certificate {0} is already revoked")]
    AlreadyRevoked(Serial),
    /// A CRL given to the TLS configuration does not parse or is not signed by the client CA.
    #[error("invalid CRL: {0}")]
    InvalidCrl(String),
    /// A PKCS#12 file without a password would carry the private key in the clear.
    #[error("a PKCS#12 export needs a non-empty password")]
    EmptyPassword,
    /// The PKCS#12 encoder failed.
    #[error("PKCS#12 encoding failed: {0}")]
    Pkcs12(String),
    /// rustls refused the certificate, key or client-verifier configuration.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// A verified peer certificate does not carry the name the listener uses as identity.
    #[error("the client certificate has no {0}")]
    NoIdentity(IdentitySource),
    /// Generating or signing with rcgen failed: a key type the platform cannot generate, an encoding limit.
    #[error("certificate generation failed: {0}")]
    Generation(#[from] rcgen::Error),
    /// The operating system's random number generator failed; no serial number or key can be made without it.
    #[error("the system random number generator failed")]
    Random,
}

impl PkiError {
    /// Wraps an I/O error with the path it concerns, for `map_err`.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
