//! Certificate lifecycle for devices: issue (key made here, or a device's CSR signed), list, show, revoke, and
//! the CRL the TLS listeners enforce. Records live in `config.sqlite` (never the private keys); the CA lives in
//! `<data>/pki` (see [`crate::tls`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::{Row, SqlitePool};

use crate::pki::{
    CertificateAuthority, ClientCertRequest, CommonName, CsrOptions, IssuedCert, KeyType, PkiError,
    RevocationList, RevocationReason, RevokedCert, Serial, SubjectAltName, Validity,
};
use crate::store::{self, StoreError, unix_millis};

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
    #[error("configuration database: {0}")]
    Database(#[from] sqlx::Error),
}

/// A certificate as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertRecord {
    pub serial: String,
    pub common_name: String,
    pub sans: Vec<String>,
    /// Unix ms.
    pub not_before: i64,
    pub not_after: i64,
    pub fingerprint: String,
    #[serde(skip)]
    pub cert_pem: String,
    pub revoked_at: Option<i64>,
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
        Ok(crate::tls::load_or_create_ca(&self.pki_dir)?)
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
        let canonical = CommonName::new(name)?.canonical();
        let now = unix_millis(SystemTime::now());
        let taken: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM certificates WHERE canonical_name = ? AND revoked_at IS NULL AND not_after > ?",
        )
        .bind(&canonical)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        if taken > 0 {
            return Err(CertError::DuplicateName(name.to_owned()));
        }
        Ok(())
    }

    async fn record(&self, issued: &IssuedCert, actor: &str, action: &str) -> Result<(), CertError> {
        let info = &issued.info;
        let name = info.common_name.clone().unwrap_or_default();
        let canonical = CommonName::new(&name).map(|n| n.canonical()).unwrap_or_else(|_| name.to_lowercase());
        let sans: Vec<String> = info.sans.iter().map(ToString::to_string).collect();
        sqlx::query(
            "INSERT INTO certificates (serial, common_name, canonical_name, sans, not_before, not_after, fingerprint, \
             cert_pem, issued) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(info.serial.as_str())
        .bind(&name)
        .bind(canonical)
        .bind(serde_json::to_string(&sans).unwrap_or_else(|_| "[]".into()))
        .bind(millis(info.not_before))
        .bind(millis(info.not_after))
        .bind(&info.fingerprint_sha256)
        .bind(&issued.cert_pem)
        .bind(unix_millis(SystemTime::now()))
        .execute(&self.pool)
        .await?;
        store::audit(&self.pool, actor, action, &format!("{name} serial {}", info.serial.as_str())).await?;
        bump(&self.pool).await
    }

    pub async fn list(&self) -> Result<Vec<CertRecord>, CertError> {
        let rows = sqlx::query("SELECT * FROM certificates ORDER BY issued").fetch_all(&self.pool).await?;
        rows.iter().map(record_from_row).collect()
    }

    /// The certificate with this serial, or the one valid (else newest) certificate with this common name.
    pub async fn find(&self, name_or_serial: &str) -> Result<CertRecord, CertError> {
        let by_serial = sqlx::query("SELECT * FROM certificates WHERE serial = ?")
            .bind(name_or_serial.to_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = by_serial {
            return record_from_row(&row);
        }
        let canonical = CommonName::new(name_or_serial).map(|n| n.canonical()).unwrap_or_default();
        let rows = sqlx::query(
            "SELECT * FROM certificates WHERE canonical_name = ? ORDER BY revoked_at IS NOT NULL, issued DESC",
        )
        .bind(canonical)
        .fetch_all(&self.pool)
        .await?;
        let live = rows
            .iter()
            .filter(|r| r.try_get::<Option<i64>, _>("revoked_at").ok().flatten().is_none())
            .count();
        if live > 1 {
            return Err(CertError::Ambiguous(name_or_serial.to_owned()));
        }
        match rows.first() {
            Some(row) => record_from_row(row),
            None => Err(CertError::Unknown(name_or_serial.to_owned())),
        }
    }

    /// Revokes a certificate: the CRL changes, TLS listeners refuse it from their next handshake on, and the
    /// running gateway drops connections made with it (see `app`). Revoking twice is an error.
    pub async fn revoke(&self, name_or_serial: &str, actor: &str) -> Result<CertRecord, CertError> {
        let record = self.find(name_or_serial).await?;
        if record.revoked_at.is_some() {
            return Err(CertError::AlreadyRevoked(record.serial));
        }
        sqlx::query("UPDATE certificates SET revoked_at = ? WHERE serial = ? AND revoked_at IS NULL")
            .bind(unix_millis(SystemTime::now()))
            .bind(&record.serial)
            .execute(&self.pool)
            .await?;
        store::audit(
            &self.pool,
            actor,
            "cert.revoke",
            &format!("{} serial {}", record.common_name, record.serial),
        )
        .await?;
        bump(&self.pool).await?;
        self.find(&record.serial).await
    }

    /// Serials of revoked certificates.
    pub async fn revoked(&self) -> Result<Vec<String>, CertError> {
        Ok(sqlx::query_scalar("SELECT serial FROM certificates WHERE revoked_at IS NOT NULL")
            .fetch_all(&self.pool)
            .await?)
    }

    /// A freshly signed CRL listing every revoked certificate.
    pub async fn crl_pem(&self) -> Result<String, CertError> {
        let rows = sqlx::query("SELECT serial, revoked_at FROM certificates WHERE revoked_at IS NOT NULL")
            .fetch_all(&self.pool)
            .await?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            let at: i64 = row.try_get("revoked_at")?;
            entries.push(RevokedCert {
                serial: Serial::from_hex(&row.try_get::<String, _>("serial")?)?,
                revoked_at: UNIX_EPOCH + Duration::from_millis(u64::try_from(at).unwrap_or(0)),
                reason: RevocationReason::Unspecified,
            });
        }
        let list = RevocationList::from_entries(entries)?;
        let number = u64::try_from(unix_millis(SystemTime::now())).unwrap_or(0);
        Ok(self.ca()?.crl(&list, number, SystemTime::now(), CRL_VALIDITY)?)
    }
}

fn record_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<CertRecord, CertError> {
    let sans: String = row.try_get("sans")?;
    Ok(CertRecord {
        serial: row.try_get("serial")?,
        common_name: row.try_get("common_name")?,
        sans: serde_json::from_str(&sans).unwrap_or_default(),
        not_before: row.try_get("not_before")?,
        not_after: row.try_get("not_after")?,
        fingerprint: row.try_get("fingerprint")?,
        cert_pem: row.try_get("cert_pem")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

fn millis(t: SystemTime) -> i64 {
    unix_millis(t)
}

/// Every configuration change moves `config_version`, which the running gateway watches.
async fn bump(pool: &SqlitePool) -> Result<(), CertError> {
    sqlx::query("UPDATE config_version SET version = version + 1").execute(pool).await?;
    Ok(())
}
