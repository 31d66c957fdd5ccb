//! Certificates as the rest of Weir sees them: what was issued ([`IssuedCert`]), what a certificate says
//! ([`CertInfo`]), and the choices a request makes ([`Validity`], [`KeyType`]).
//!
//! Everything the CLI lists and the store records is read back from the signed DER with x509-parser rather than
//! copied from the request, so a record can never disagree with the certificate it describes.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{KeyPair, SignatureAlgorithm};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::error::PkiError;
use super::names::{Serial, SubjectAltName};

/// The kind of key Weir generates for a certificate.
///
/// RSA is not offered: the `ring` backend cannot generate RSA keys, and every MQTT client library in use on the
/// floor handles ECDSA. Devices with RSA keys can still send a CSR.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyType {
    /// ECDSA on NIST P-256 with SHA-256: small, fast on a Pi, understood by everything.
    #[default]
    EcdsaP256,
    /// ECDSA on NIST P-384 with SHA-384, for sites whose policy asks for it.
    EcdsaP384,
    /// Ed25519: smallest and fastest, but some older TLS stacks on devices do not support it.
    Ed25519,
}

impl KeyType {
    fn algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Self::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    pub(crate) fn generate(self) -> Result<KeyPair, PkiError> {
        Ok(KeyPair::generate_for(self.algorithm())?)
    }
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start of validity.
    pub not_before: SystemTime,
    /// How long from `not_before` the certificate stays valid. The end is cut to the CA's own expiry.
    pub lifetime: Duration,
}

impl Validity {
    /// How far [`Validity::from_now`] moves the start into the past, so that a device whose clock runs a little
    /// behind does not refuse a certificate it just received.
    pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

    /// Valid from (a little before) now for `lifetime`.
    pub fn from_now(lifetime: Duration) -> Self {
        let now = SystemTime::now();
        Self { not_before: now.checked_sub(Self::BACKDATE).unwrap_or(now), lifetime }
    }

    /// Valid from (a little before) now for `days` days.
    pub fn days(days: u64) -> Self {
        Self::from_now(Duration::from_secs(days.saturating_mul(86_400)))
    }

    /// Start and end in whole seconds, the end cut to `ca_not_after` when given.
    pub(crate) fn bounds(
        &self,
        ca_not_after: Option<SystemTime>,
    ) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
        let start = unix_seconds(self.not_before)?;
        let mut end = start.saturating_add(i64::try_from(self.lifetime.as_secs()).unwrap_or(i64::MAX));
        if let Some(ca_end) = ca_not_after {
            end = end.min(unix_seconds(ca_end)?);
        }
        // GeneralizedTime stops at year 9999; beyond that rcgen would write a date no one can parse.
        let end = end.min(253_402_300_799);
        if self.lifetime.as_secs() == 0 {
            return Err(PkiError::InvalidValidity("the lifetime must be at least one second"));
        }
        if end <= start {
            return Err(PkiError::InvalidValidity("the certificate would start after the CA expires"));
        }
        let to_time = |secs| {
            OffsetDateTime::from_unix_timestamp(secs)
                .map_err(|_| PkiError::InvalidValidity("the date is out of the range a certificate can hold"))
        };
        Ok((to_time(start)?, to_time(end)?))
    }
}

/// What a certificate says, read back from its DER: the fields of an issued-certificate record and of
/// `weir cert show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Serial number, the record's key.
    pub serial: Serial,
    /// Subject common name, if there is one.
    pub common_name: Option<String>,
    /// Subject distinguished name as text (`CN=..., O=...`), for display.
    pub subject: String,
    /// Issuer distinguished name as text, for display.
    pub issuer: String,
    /// Subject alternative names of the kinds Weir knows; other kinds are left out.
    pub sans: Vec<SubjectAltName>,
    /// Start of validity, to the second.
    pub not_before: SystemTime,
    /// End of validity, to the second.
    pub not_after: SystemTime,
    /// SHA-256 of the DER as uppercase hex pairs joined by colons, as `openssl x509 -fingerprint -sha256` prints
    /// it, so operators can compare the two.
    pub fingerprint_sha256: String,
    /// Whether the certificate may sign others (basicConstraints CA).
    pub is_ca: bool,
}

impl CertInfo {
    /// Reads the first certificate of a PEM text.
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        let der = first_cert_der(pem)?;
        Self::from_der(&der)
    }

    /// Reads a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let cert = parse_x509(der)?;
        Self::from_x509(&cert, der)
    }

    pub(crate) fn from_x509(cert: &X509Certificate<'_>, der: &[u8]) -> Result<Self, PkiError> {
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(n) => sans.push(SubjectAltName::Dns((*n).to_owned())),
                    GeneralName::RFC822Name(n) => sans.push(SubjectAltName::Email((*n).to_owned())),
                    GeneralName::URI(n) => sans.push(SubjectAltName::Uri((*n).to_owned())),
                    GeneralName::IPAddress(bytes) => {
                        if let Some(ip) = ip_from_bytes(bytes) {
                            sans.push(SubjectAltName::Ip(ip));
                        }
                    }
                    _ => {}
                }
            }
        }
        let validity = cert.validity();
        Ok(Self {
            serial: Serial::from_bytes(cert.raw_serial()),
            common_name: common_name(cert),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            sans,
            not_before: from_unix_seconds(validity.not_before.timestamp()),
            not_after: from_unix_seconds(validity.not_after.timestamp()),
            fingerprint_sha256: fingerprint_sha256(der),
            is_ca: cert.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca),
        })
    }

    /// Whether the certificate expires within `margin` of `now` (or already has): the signal to issue a new one
    /// while the old one still works.
    pub fn needs_renewal(&self, now: SystemTime, margin: Duration) -> bool {
        now.checked_add(margin).is_none_or(|deadline| deadline >= self.not_after)
    }

    /// Whether `now` lies within the validity period.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

/// A certificate that the CA has just signed, ready to record and to hand out.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// What the certificate says, for the issued-certificate record.
    pub info: CertInfo,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8 PEM) when Weir generated it; `None` for a signed CSR, whose key never left the
    /// device. Weir does not keep client keys: the caller hands this out once and drops it.
    pub key_pem: Option<String>,
}

impl IssuedCert {
    /// Whether the certificate expires within `margin` of `now`.
    pub fn needs_renewal(&self, now: SystemTime, margin: Duration) -> bool {
        self.info.needs_renewal(now, margin)
    }
}

impl fmt::Debug for IssuedCert {
    /// Leaves the private key out, so that logging a certificate cannot leak it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("info", &self.info)
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// All certificates of a PEM text, in order.
pub(crate) fn cert_ders(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::InvalidCertificate(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(PkiError::InvalidCertificate("no CERTIFICATE block in the PEM text".into()));
    }
    Ok(certs)
}

pub(crate) fn first_cert_der(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    cert_ders(pem)?
        .into_iter()
        .next()
        .ok_or_else(|| PkiError::InvalidCertificate("no CERTIFICATE block in the PEM text".into()))
}

pub(crate) fn parse_x509(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::InvalidCertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PkiError::InvalidCertificate("trailing bytes after the certificate".into()));
    }
    Ok(cert)
}

/// Parses an unencrypted PKCS#8 private key, the only form the `ring` backend signs with. Other forms get an
/// error that says how to convert them, because an enterprise CA key often comes as SEC1 or PKCS#1.
pub(crate) fn parse_key(pem: &str) -> Result<KeyPair, PkiError> {
    if pem.contains("BEGIN ENCRYPTED PRIVATE KEY") {
        return Err(PkiError::InvalidKey(
            "the key is encrypted; decrypt it with `openssl pkcs8 -topk8 -nocrypt -in key.pem`".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::InvalidKey(format!("no private key found in the PEM text: {e}")))?;
    let PrivateKeyDer::Pkcs8(pkcs8) = key else {
        return Err(PkiError::InvalidKey(
            "expected a PKCS#8 key (BEGIN PRIVATE KEY); convert it with `openssl pkcs8 -topk8 -nocrypt -in key.pem`"
                .into(),
        ));
    };
    KeyPair::try_from(pkcs8.secret_pkcs8_der())
        .map_err(|e| PkiError::InvalidKey(format!("unsupported key (P-256, P-384, Ed25519, RSA are): {e}")))
}

/// Refuses a key that does not belong to the certificate, by comparing public keys.
pub(crate) fn check_key_matches(cert: &X509Certificate<'_>, key: &KeyPair) -> Result<(), PkiError> {
    if cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw() {
        Ok(())
    } else {
        Err(PkiError::KeyMismatch)
    }
}

pub(crate) fn common_name(cert: &X509Certificate<'_>) -> Option<String> {
    cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned)
}

pub(crate) fn fingerprint_sha256(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

pub(crate) fn unix_seconds(t: SystemTime) -> Result<i64, PkiError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| PkiError::InvalidValidity("dates before 1970 are not supported"))?
        .as_secs();
    i64::try_from(secs).map_err(|_| PkiError::InvalidValidity("the date is too far in the future"))
}

pub(crate) fn from_unix_seconds(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(magnitude).unwrap_or(UNIX_EPOCH)
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<std::net::IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        Some(v4.into())
    } else {
        <[u8; 16]>::try_from(bytes).ok().map(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_is_cut_to_the_ca() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let v = Validity { not_before: start, lifetime: Duration::from_secs(100) };
        let (b, a) = v.bounds(None).unwrap();
        assert_eq!((b.unix_timestamp(), a.unix_timestamp()), (1_000_000, 1_000_100));
        let (_, a) = v.bounds(Some(start + Duration::from_secs(50))).unwrap();
        assert_eq!(a.unix_timestamp(), 1_000_050);
        assert!(matches!(v.bounds(Some(start)), Err(PkiError::InvalidValidity(_))));
        let empty = Validity { not_before: start, lifetime: Duration::ZERO };
        assert!(matches!(empty.bounds(None), Err(PkiError::InvalidValidity(_))));
        let huge = Validity { not_before: start, lifetime: Duration::MAX };
        assert!(huge.bounds(None).is_ok());
    }

    #[test]
    fn non_pkcs8_keys_get_a_conversion_hint() {
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIA==\n-----END EC PRIVATE KEY-----\n";
        match parse_key(sec1) {
            Err(PkiError::InvalidKey(msg)) => assert!(msg.contains("pkcs8"), "{msg}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_key("not pem"), Err(PkiError::InvalidKey(_))));
    }
}
