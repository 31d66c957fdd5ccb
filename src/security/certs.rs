//! Certificate lifecycle for devices: issue (key made here, or a device's CSR signed), list, show, revoke, and
//! the CRL the TLS listeners enforce. Records live in `config.sqlite` (never the private keys); the CA lives in
//! `<data>/pki` (see [`super::server`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::SqlitePool;

use crate::pki::{
    CertificateAuthority, ClientCertRequest, CommonName, CsrOptions, IssuedCert, KeyType, PkiError,
    RevocationList, RevocationReason, RevokedCert, Serial, SubjectAltName, Validity,
};
use crate::store::StoreError;
use crate::store::config_db::{self, Audited, CertRecord, NewCert};
use crate::timefmt::{now_ms, unix_millis};

/// How long a CRL stays current; it is re-signed at every start and every revocation, well before this.
const CRL_VALIDITY: Duration = Duration::from_secs(30 * 86_400);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("a valid certificate for {0:?} exists already (revoke it first, or choose another name)")]
    DuplicateName(String),
    #[error("no certificate {0:?}")]
    Unknown(String),
    #[error("certificate {0} is already revoked")]
    AlreadyRevoked(String),
    #[error("{0:?} matches several certificates; give the serial")]
    Ambiguous(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone)]
pub struct Certificates {
    pool: SqlitePool,
    pki_dir: PathBuf,
}

impl Certificates {
    pub fn new(pool: SqlitePool, data_dir: &Path) -> Certificates {
        Certificates { pool, pki_dir: data_dir.join("pki") }
    }

    /// The CA, created on first use like the TLS listeners do.
    pub fn ca(&self) -> Result<CertificateAuthority, CertError> {
        Ok(super::server::load_or_create_ca(&self.pki_dir)?)
    }

    /// Issues a certificate with a key made here; the key is in the result and nowhere else.
    pub async fn issue(
        &self,
        name: &str,
        sans: &[String],
        days: u64,
        key_type: KeyType,
        actor: &str,
    ) -> Result<IssuedCert, CertError> {
        let mut request = ClientCertRequest::new(CommonName::new(name)?);
        request.key_type = key_type;
        request.sans = sans.iter().map(|s| SubjectAltName::parse(s)).collect::<Result<_, _>>()?;
        crate::pki::check_unique(&request.sans)?;
        request.validity = Validity::days(days);
        self.check_name_free(name).await?;
        let issued = self.ca()?.issue_client(&request)?;
        self.record(&issued, actor, "cert.issue").await?;
        Ok(issued)
    }

    /// Signs a device's CSR: its key never leaves the device.
    pub async fn sign_csr(&self, csr_pem: &str, days: u64, actor: &str) -> Result<IssuedCert, CertError> {
        let info = crate::pki::CsrInfo::from_pem(csr_pem)?;
        if let Some(name) = &info.common_name {
            self.check_name_free(name.as_str()).await?;
        }
        let issued = self.ca()?.sign_csr(csr_pem, &CsrOptions::new(Validity::days(days)))?;
        self.record(&issued, actor, "cert.sign_csr").await?;
        Ok(issued)
    }

    async fn check_name_free(&self, name: &str) -> Result<(), CertError> {
        if config_db::live_cert_named(&self.pool, &CommonName::new(name)?.canonical()).await? {
            return Err(CertError::DuplicateName(name.to_owned()));
        }
        Ok(())
    }

    async fn record(&self, issued: &IssuedCert, actor: &str, action: &str) -> Result<(), CertError> {
        let info = &issued.info;
        let name = info.common_name.clone().unwrap_or_default();
        let canonical = CommonName::new(&name).map(|n| n.canonical()).unwrap_or_else(|_| name.to_lowercase());
        let sans: Vec<String> = info.sans.iter().map(ToString::to_string).collect();
        let cert = NewCert {
            serial: info.serial.as_str(),
            common_name: &name,
            canonical_name: &canonical,
            sans: &sans,
            not_before: unix_millis(info.not_before),
            not_after: unix_millis(info.not_after),
            fingerprint: &info.fingerprint_sha256,
            cert_pem: &issued.cert_pem,
        };
        let detail = format!("{name} serial {}", info.serial.as_str());
        config_db::insert_cert(&self.pool, cert, Audited { actor, action, detail: &detail }).await?;
        Ok(())
    }

    pub async fn list(&self) -> Result<Vec<CertRecord>, CertError> {
        Ok(config_db::list_certs(&self.pool).await?)
    }

    /// The certificate with this serial, or the one valid (else newest) certificate with this common name.
    pub async fn find(&self, name_or_serial: &str) -> Result<CertRecord, CertError> {
        if let Some(record) = config_db::cert_by_serial(&self.pool, name_or_serial).await? {
            return Ok(record);
        }
        let canonical = CommonName::new(name_or_serial).map(|n| n.canonical()).unwrap_or_default();
        let records = config_db::certs_named(&self.pool, &canonical).await?;
        if records.iter().filter(|r| r.revoked_at.is_none()).count() > 1 {
            return Err(CertError::Ambiguous(name_or_serial.to_owned()));
        }
        records.into_iter().next().ok_or_else(|| CertError::Unknown(name_or_serial.to_owned()))
    }

    /// Revokes a certificate: the CRL changes, TLS listeners refuse it from their next handshake on, and the
    /// running gateway drops connections made with it (see `app`). Revoking twice is an error.
    pub async fn revoke(
        &self,
        name_or_serial: &str,
        reason: RevocationReason,
        actor: &str,
    ) -> Result<CertRecord, CertError> {
        let record = self.find(name_or_serial).await?;
        let detail = format!("{} serial {} reason {}", record.common_name, record.serial, reason.as_str());
        let audited = Audited { actor, action: "cert.revoke", detail: &detail };
        if record.revoked_at.is_some()
            || !config_db::revoke_cert(&self.pool, &record.serial, reason.as_str(), audited).await?
        {
            return Err(CertError::AlreadyRevoked(record.serial));
        }
        self.find(&record.serial).await
    }

    /// Serials of revoked certificates.
    pub async fn revoked(&self) -> Result<Vec<String>, CertError> {
        Ok(config_db::revocations(&self.pool).await?.into_iter().map(|r| r.serial).collect())
    }

    /// A freshly signed CRL listing every revoked certificate.
    pub async fn crl_pem(&self) -> Result<String, CertError> {
        let mut entries = Vec::new();
        for revocation in config_db::revocations(&self.pool).await? {
            entries.push(RevokedCert {
                serial: Serial::from_hex(&revocation.serial)?,
                revoked_at: UNIX_EPOCH + Duration::from_millis(u64::try_from(revocation.at).unwrap_or(0)),
                // Revocations recorded before reasons were kept have none.
                reason: revocation
                    .reason
                    .as_deref()
                    .and_then(|name| RevocationReason::parse(name).ok())
                    .unwrap_or_default(),
            });
        }
        let list = RevocationList::from_entries(entries)?;
        let number = u64::try_from(now_ms()).unwrap_or(0);
        Ok(self.ca()?.crl(&list, number, SystemTime::now(), CRL_VALIDITY)?)
    }
}
