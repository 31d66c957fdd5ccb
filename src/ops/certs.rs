//! Device certificates and the CA.

use std::path::{Path, PathBuf};

use super::{Actor, Ops, OpsError};
use crate::files::{self, PRIVATE_FILE};
use crate::pki::{self, CertificateAuthority, KeyType, OnExisting, RevocationReason};
use crate::security::CertRecord;
use crate::security::server::SERVER_CERT_FILE;
use crate::store;

/// What to issue.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// The common name: the device's user name when its listener takes the identity from the CN.
    pub name: String,
    /// `DNS:host`, `IP:addr`, `email:x@y`, `URI:spiffe://...`
    pub sans: Vec<String>,
    pub days: u64,
    pub key_type: KeyType,
    /// Also a PKCS#12 file, protected by this password.
    pub p12_password: Option<String>,
}

/// A file an operation produced, for the CLI to write or the console to offer as a download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    pub name: String,
    pub contents: Vec<u8>,
    /// Holds a private key: written with mode 0600.
    pub private: bool,
}

/// A certificate just issued or signed, with its files. The key (if Weir made it) is in the files and nowhere
/// else: Weir does not keep it.
#[derive(Debug, Clone)]
pub struct Issued {
    pub name: String,
    pub serial: String,
    pub files: Vec<OutputFile>,
}

/// `p256` (the default), `p384` or `ed25519`.
pub fn parse_key_type(text: &str) -> Result<KeyType, OpsError> {
    match text {
        "p256" => Ok(KeyType::EcdsaP256),
        "p384" => Ok(KeyType::EcdsaP384),
        "ed25519" => Ok(KeyType::Ed25519),
        other => Err(OpsError::Invalid(format!("key type {other:?}: use p256, p384 or ed25519"))),
    }
}

/// The revocation reason named `text` (`key-compromise`, `superseded`, ...).
pub fn parse_reason(text: &str) -> Result<RevocationReason, OpsError> {
    RevocationReason::parse(text).map_err(|e| OpsError::Invalid(e.to_string()))
}

/// Writes `files` into `dir`, creating it (mode 0700) if it does not exist; each file is written atomically,
/// keys with mode 0600. Returns the paths written.
pub fn write_files(dir: &Path, files: &[OutputFile]) -> Result<Vec<PathBuf>, OpsError> {
    files::create_private_dir(dir)?;
    let mut written = Vec::with_capacity(files.len());
    for file in files {
        let path = dir.join(&file.name);
        files::write_atomic(&path, &file.contents, if file.private { PRIVATE_FILE } else { 0o644 })?;
        written.push(path);
    }
    Ok(written)
}

impl Ops {
    /// Issues a certificate with a key made here: `NAME.crt`, `NAME.key`, `NAME-bundle.pem` (certificate, CA
    /// chain, key) and, with a password, `NAME.p12`.
    pub async fn issue_cert(&self, request: &IssueRequest, actor: &Actor) -> Result<Issued, OpsError> {
        let certs = self.security.certificates();
        let issued =
            certs.issue(&request.name, &request.sans, request.days, request.key_type, actor.as_str()).await?;
        let ca = certs.ca()?;
        let key = issued.key_pem.clone().unwrap_or_default();
        let name = &request.name;
        let mut files = vec![
            OutputFile {
                name: format!("{name}.crt"),
                contents: issued.cert_pem.clone().into_bytes(),
                private: false,
            },
            OutputFile { name: format!("{name}.key"), contents: key.clone().into_bytes(), private: true },
            OutputFile {
                name: format!("{name}-bundle.pem"),
                contents: pki::pem_bundle(&issued.cert_pem, Some(&key), ca.chain_pem()).into_bytes(),
                private: true,
            },
        ];
        if let Some(password) = &request.p12_password {
            let p12 = pki::pkcs12(&issued.cert_pem, &key, ca.chain_pem(), password, name)?;
            files.push(OutputFile { name: format!("{name}.p12"), contents: p12, private: true });
        }
        Ok(Issued { name: name.clone(), serial: issued.info.serial.as_str().to_owned(), files })
    }

    /// Signs a device's certificate request (PEM): its key never leaves the device. One file, `NAME.crt`.
    pub async fn sign_csr(&self, csr_pem: &str, days: u64, actor: &Actor) -> Result<Issued, OpsError> {
        let issued = self.security.certificates().sign_csr(csr_pem, days, actor.as_str()).await?;
        let serial = issued.info.serial.as_str().to_owned();
        let name = issued.info.common_name.clone().unwrap_or_else(|| serial.clone());
        let file = OutputFile {
            name: format!("{name}.crt"),
            contents: issued.cert_pem.into_bytes(),
            private: false,
        };
        Ok(Issued { name, serial, files: vec![file] })
    }

    pub async fn list_certs(&self) -> Result<Vec<CertRecord>, OpsError> {
        Ok(self.security.certificates().list().await?)
    }

    /// One certificate, by serial or by name.
    pub async fn find_cert(&self, name_or_serial: &str) -> Result<CertRecord, OpsError> {
        Ok(self.security.certificates().find(name_or_serial).await?)
    }

    /// A certificate with the CA chain, as a PEM bundle (Weir never keeps keys).
    pub async fn export_cert(&self, name_or_serial: &str) -> Result<String, OpsError> {
        let record = self.find_cert(name_or_serial).await?;
        Ok(pki::pem_bundle(&record.cert_pem, None, self.security.certificates().ca()?.chain_pem()))
    }

    /// Revokes a certificate: refused at the next handshake, live connections closed by a running gateway.
    pub async fn revoke_cert(
        &self,
        name_or_serial: &str,
        reason: RevocationReason,
        actor: &Actor,
    ) -> Result<CertRecord, OpsError> {
        Ok(self.security.certificates().revoke(name_or_serial, reason, actor.as_str()).await?)
    }

    /// The CA certificate (PEM), for devices' trust stores; created if there is none yet.
    pub fn ca_pem(&self) -> Result<String, OpsError> {
        Ok(self.security.certificates().ca()?.cert_pem().to_owned())
    }

    /// Installs an existing CA (an enterprise PKI's issuing CA): its certificate and unencrypted PKCS#8 key
    /// (PEM). Refused if Weir already has a CA unless `replace`. The server certificate, issued by the previous
    /// CA, is removed, so the next start issues a new one. Returns the CA's subject.
    pub async fn import_ca(
        &self,
        cert_pem: &str,
        key_pem: &str,
        replace: bool,
        actor: &Actor,
    ) -> Result<String, OpsError> {
        let dir = self.data_dir.join("pki");
        let on_existing = if replace { OnExisting::Replace } else { OnExisting::Refuse };
        let ca = CertificateAuthority::import(&dir, cert_pem, key_pem, on_existing)?;
        match std::fs::remove_file(dir.join(SERVER_CERT_FILE)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(files::FileError { path: dir.join(SERVER_CERT_FILE), source }.into()),
        }
        let subject = ca.info().subject.clone();
        store::audit(self.security.pool(), actor.as_str(), "ca.import", &subject).await?;
        Ok(subject)
    }
}
