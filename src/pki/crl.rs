//! Revocation: the list of revoked serials and the CRL the CA signs from it.
//!
//! The store persists revocations; [`RevocationList`] is the in-memory set it rebuilds from them and the one
//! place that refuses revoking twice. A new CRL is signed after every revocation and handed to the listeners'
//! [`super::tls::ReloadableServerConfig`], which is how a revoked device is refused at its next handshake.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use time::OffsetDateTime;

use super::ca::CertificateAuthority;
use super::cert;
use super::error::PkiError;
use super::names::Serial;

/// Why a certificate was revoked (RFC 5280 reason codes that make sense for a gateway; "certificate hold" is
/// left out because a revocation here is final).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RevocationReason {
    /// No reason given.
    #[default]
    Unspecified,
    /// The device's key leaked or the device was stolen.
    KeyCompromise,
    /// The device moved to another owner or site.
    AffiliationChanged,
    /// A new certificate replaces this one.
    Superseded,
    /// The device was taken out of service.
    CessationOfOperation,
    /// The device lost its right to connect.
    PrivilegeWithdrawn,
}

impl RevocationReason {
    /// Every reason, in the order a form offers them.
    pub const ALL: [RevocationReason; 6] = [
        Self::Unspecified,
        Self::KeyCompromise,
        Self::AffiliationChanged,
        Self::Superseded,
        Self::CessationOfOperation,
        Self::PrivilegeWithdrawn,
    ];

    /// The name used on the command line, in the console and in config.sqlite (RFC 5280's, in kebab case).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::KeyCompromise => "key-compromise",
            Self::AffiliationChanged => "affiliation-changed",
            Self::Superseded => "superseded",
            Self::CessationOfOperation => "cessation-of-operation",
            Self::PrivilegeWithdrawn => "privilege-withdrawn",
        }
    }

    /// The reason named `name` (see [`RevocationReason::as_str`]).
    pub fn parse(name: &str) -> Result<RevocationReason, PkiError> {
        Self::ALL.into_iter().find(|r| r.as_str() == name).ok_or_else(|| PkiError::InvalidName {
            kind: "revocation reason",
            value: name.to_owned(),
            reason: "use unspecified, key-compromise, affiliation-changed, superseded, cessation-of-operation or privilege-withdrawn",
        })
    }

    fn to_rcgen(self) -> rcgen::RevocationReason {
        match self {
            Self::Unspecified => rcgen::RevocationReason::Unspecified,
            Self::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
            Self::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
            Self::Superseded => rcgen::RevocationReason::Superseded,
            Self::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
            Self::PrivilegeWithdrawn => rcgen::RevocationReason::PrivilegeWithdrawn,
        }
    }
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCert {
    /// Serial of the revoked certificate.
    pub serial: Serial,
    /// When the revocation was decided.
    pub revoked_at: SystemTime,
    /// Why.
    pub reason: RevocationReason,
}

/// The revoked serials of one CA.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationList {
    entries: BTreeMap<Serial, RevokedCert>,
}

impl RevocationList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the list from stored revocations; a serial stored twice means the store is corrupt, and is
    /// reported rather than merged.
    pub fn from_entries(entries: impl IntoIterator<Item = RevokedCert>) -> Result<Self, PkiError> {
        let mut list = Self::new();
        for entry in entries {
            list.revoke(entry)?;
        }
        Ok(list)
    }

    /// Adds a revocation; a serial already on the list is an error and leaves the list unchanged.
    pub fn revoke(&mut self, entry: RevokedCert) -> Result<(), PkiError> {
        if self.entries.contains_key(&entry.serial) {
            return Err(PkiError::AlreadyRevoked(entry.serial));
        }
        self.entries.insert(entry.serial.clone(), entry);
        Ok(())
    }

    /// Whether `serial` is revoked: the broker asks this to drop live connections after a revocation.
    pub fn is_revoked(&self, serial: &Serial) -> bool {
        self.entries.contains_key(serial)
    }

    /// The revocations, ordered by serial.
    pub fn entries(&self) -> impl Iterator<Item = &RevokedCert> {
        self.entries.values()
    }

    /// How many serials are revoked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl CertificateAuthority {
    /// Signs a CRL (PEM) listing `revoked`, valid from `this_update` until `this_update + next_update_in`.
    ///
    /// `number` must grow with every CRL the CA issues (RFC 5280 §5.2.3); the store keeps the counter. Weir's
    /// verifier does not refuse a CRL past its next update (a gateway whose clock jumps must not lock every
    /// device out), but other consumers of an exported CRL may, so the caller re-signs well before it.
    pub fn crl(
        &self,
        revoked: &RevocationList,
        number: u64,
        this_update: SystemTime,
        next_update_in: Duration,
    ) -> Result<String, PkiError> {
        let this = to_time(this_update)?;
        let next = to_time(
            this_update
                .checked_add(next_update_in)
                .ok_or(PkiError::InvalidValidity("the next update is too far in the future"))?,
        )?;
        if next <= this {
            return Err(PkiError::InvalidValidity("the next update must be later than this update"));
        }
        let revoked_certs = revoked
            .entries()
            .map(|entry| {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&entry.serial.to_bytes()),
                    revocation_time: to_time(entry.revoked_at)?,
                    reason_code: Some(entry.reason.to_rcgen()),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        let params = CertificateRevocationListParams {
            this_update: this,
            next_update: next,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

fn to_time(t: SystemTime) -> Result<OffsetDateTime, PkiError> {
    OffsetDateTime::from_unix_timestamp(cert::unix_seconds(t)?)
        .map_err(|_| PkiError::InvalidValidity("the date is out of the range a CRL can hold"))
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::CertificateRevocationListDer;
    use rustls::pki_types::pem::PemObject;

    use super::*;
    use crate::pki::ca::CaOptions;
    use crate::pki::testutil;

    fn revoked(serial: &Serial) -> RevokedCert {
        RevokedCert {
            serial: serial.clone(),
            revoked_at: SystemTime::now(),
            reason: RevocationReason::KeyCompromise,
        }
    }

    #[test]
    fn revoking_twice_is_an_error_and_changes_nothing() {
        let serial = Serial::random().unwrap();
        let mut list = RevocationList::new();
        list.revoke(revoked(&serial)).unwrap();
        let before = list.clone();
        assert!(matches!(list.revoke(revoked(&serial)), Err(PkiError::AlreadyRevoked(s)) if s == serial));
        assert_eq!(list, before);
        assert!(list.is_revoked(&serial));
        assert!(!list.is_revoked(&Serial::random().unwrap()));
        assert!(RevocationList::from_entries([revoked(&serial), revoked(&serial)]).is_err());
    }

    #[test]
    fn crl_lists_the_revoked_serials_and_is_signed_by_the_ca() {
        let ca = CertificateAuthority::generate(&CaOptions::default()).unwrap();
        let a = ca.issue_client(&testutil::client_request("a")).unwrap();
        let b = ca.issue_client(&testutil::client_request("b")).unwrap();
        let list = RevocationList::from_entries([revoked(&a.info.serial), revoked(&b.info.serial)]).unwrap();
        let now = SystemTime::now();
        let pem = ca.crl(&list, 7, now, Duration::from_secs(86_400)).unwrap();
        assert!(pem.starts_with("-----BEGIN X509 CRL-----"));

        let der = CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
        let (_, ca_x509) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        crl.verify_signature(ca_x509.public_key()).unwrap();
        assert_eq!(crl.issuer(), ca_x509.subject());
        let mut serials: Vec<Serial> =
            crl.iter_revoked_certificates().map(|r| Serial::from_bytes(r.raw_serial())).collect();
        serials.sort();
        let mut expected = vec![a.info.serial.clone(), b.info.serial.clone()];
        expected.sort();
        assert_eq!(serials, expected);
        let next = crl.next_update().unwrap().timestamp();
        assert_eq!(next - crl.last_update().timestamp(), 86_400);
        assert_eq!(crl.crl_number().map(|n| n.to_string()), Some("7".to_owned()));

        let empty = ca.crl(&RevocationList::new(), 8, now, Duration::from_secs(60)).unwrap();
        assert!(empty.contains("X509 CRL"));
        assert!(matches!(ca.crl(&list, 9, now, Duration::ZERO), Err(PkiError::InvalidValidity(_))));
    }

    #[test]
    fn openssl_accepts_the_crl() {
        let ca = CertificateAuthority::generate(&CaOptions::default()).unwrap();
        let a = ca.issue_client(&testutil::client_request("a")).unwrap();
        let list = RevocationList::from_entries([revoked(&a.info.serial)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let crl = dir.path().join("ca.crl");
        let ca_file = dir.path().join("ca.crt");
        let leaf = dir.path().join("a.crt");
        std::fs::write(&crl, ca.crl(&list, 1, SystemTime::now(), Duration::from_secs(3600)).unwrap())
            .unwrap();
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        std::fs::write(&leaf, &a.cert_pem).unwrap();
        let p = |p: &std::path::Path| p.to_str().unwrap().to_owned();
        let out = testutil::run_tool(
            "openssl",
            &["crl", "-in", &p(&crl), "-CAfile", &p(&ca_file), "-noout", "-text"],
        );
        assert!(out.to_ascii_uppercase().contains(&a.info.serial.as_str().to_ascii_uppercase()), "{out}");
        let (ok, out) = testutil::try_tool(
            "openssl",
            &["verify", "-crl_check", "-CAfile", &p(&ca_file), "-CRLfile", &p(&crl), &p(&leaf)],
        );
        assert!(!ok && out.contains("revoked"), "{out}");
    }
}
