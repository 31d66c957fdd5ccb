//! The certificate authority: its certificate and key, created on first start or imported from an enterprise
//! PKI, kept as two PEM files in the data directory.
//!
//! The files are the whole state of the CA. Issued-certificate records and revocations live in the store; the
//! CA only signs. Writing goes through a temporary file and a rename, and the key file is created with mode 0600
//! before any key byte is written, so there is never a moment when the key is readable by others.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use rustls::pki_types::CertificateDer;

use super::cert::{self, CertInfo, KeyType, Validity};
use super::error::PkiError;
use super::names::{CommonName, Serial};
use crate::files;

/// File name of the CA certificate (PEM; the issuing CA first, then any parents it was imported with).
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the CA private key (PKCS#8 PEM, mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";

/// How a CA is created on first start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaOptions {
    /// Subject common name. Including the host name lets an operator with several gateways tell their CAs apart
    /// in a device's trust store.
    pub common_name: String,
    /// Subject organisation, if the site wants one.
    pub organization: Option<String>,
    /// Kind of CA key.
    pub key_type: KeyType,
    /// Lifetime of the CA certificate. Long, because replacing it means re-enrolling every device.
    pub validity: Duration,
}

impl Default for CaOptions {
    fn default() -> Self {
        Self {
            common_name: "Weir CA".to_owned(),
            organization: None,
            key_type: KeyType::EcdsaP256,
            validity: Duration::from_secs(10 * 365 * 86_400),
        }
    }
}

impl CaOptions {
    /// Defaults with the host name in the common name (`Weir CA gw-01`).
    pub fn for_host(hostname: &str) -> Self {
        Self { common_name: format!("Weir CA {hostname}"), ..Self::default() }
    }
}

/// What [`CertificateAuthority::import`] does when a CA already exists in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExisting {
    /// Refuse with [`PkiError::CaExists`]: the default for a CLI command, since replacing the CA invalidates
    /// every certificate issued so far.
    Refuse,
    /// Replace it; the operator confirmed.
    Replace,
}

/// A loaded CA: able to sign certificates and CRLs.
pub struct CertificateAuthority {
    /// rcgen's signer, holding the key and the subject and key identifier read from the certificate, so that
    /// what we sign names the issuer exactly as the CA certificate does.
    pub(crate) issuer: Issuer<'static, KeyPair>,
    /// The issuing CA certificate alone: the trust anchor for client certificates.
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    /// The issuing CA and its parents, for bundles handed to devices.
    chain_pem: String,
    info: CertInfo,
}

impl CertificateAuthority {
    /// Loads the CA from `dir`, or creates one there if neither file exists.
    pub fn load_or_create(dir: &Path, options: &CaOptions) -> Result<Self, PkiError> {
        let (cert_path, key_path) = paths(dir);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Self::load(dir),
            (false, false) => {
                let (ca, key_pem) = Self::generate_with_key(options)?;
                write_files(dir, ca.chain_pem(), &key_pem)?;
                tracing::info!(dir = %dir.display(), subject = %ca.info.subject, "created a new certificate authority");
                Ok(ca)
            }
            (true, false) => Err(PkiError::CaIncomplete {
                dir: dir.to_owned(),
                present: CA_CERT_FILE,
                missing: CA_KEY_FILE,
            }),
            (false, true) => Err(PkiError::CaIncomplete {
                dir: dir.to_owned(),
                present: CA_KEY_FILE,
                missing: CA_CERT_FILE,
            }),
        }
    }

    /// Loads an existing CA from `dir`, checking it as an import would.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let (cert_path, key_path) = paths(dir);
        let cert_pem = fs::read_to_string(&cert_path).map_err(PkiError::io(&cert_path))?;
        let key_pem = fs::read_to_string(&key_path).map_err(PkiError::io(&key_path))?;
        warn_if_key_readable_by_others(&key_path);
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// Checks an operator-supplied CA (certificate PEM, optionally followed by its parents, and unencrypted
    /// PKCS#8 key PEM) and installs it in `dir`. Nothing is written unless every check passes.
    pub fn import(
        dir: &Path,
        cert_pem: &str,
        key_pem: &str,
        on_existing: OnExisting,
    ) -> Result<Self, PkiError> {
        let ca = Self::from_pem(cert_pem, key_pem)?;
        let (cert_path, key_path) = paths(dir);
        if on_existing == OnExisting::Refuse && (cert_path.exists() || key_path.exists()) {
            return Err(PkiError::CaExists(dir.to_owned()));
        }
        write_files(dir, ca.chain_pem(), key_pem)?;
        tracing::info!(dir = %dir.display(), subject = %ca.info.subject, "imported a certificate authority");
        Ok(ca)
    }

    /// A new CA in memory only, for tests and for callers that store the files themselves.
    pub fn generate(options: &CaOptions) -> Result<Self, PkiError> {
        Self::generate_with_key(options).map(|(ca, _)| ca)
    }

    /// Builds a CA from PEM texts after checking that the certificate is a currently valid CA allowed to sign
    /// certificates and CRLs, and that the key is its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let chain = cert::cert_ders(cert_pem)?;
        let cert_der = chain
            .first()
            .cloned()
            .ok_or_else(|| PkiError::InvalidCertificate("no CERTIFICATE block in the PEM text".into()))?;
        let x509 = cert::parse_x509(&cert_der)?;
        let constraints =
            x509.basic_constraints().map_err(|e| PkiError::InvalidCertificate(e.to_string()))?;
        if !constraints.is_some_and(|bc| bc.value.ca) {
            return Err(PkiError::NotCa("its basic constraints do not mark it as a CA"));
        }
        if let Some(usage) = x509.key_usage().map_err(|e| PkiError::InvalidCertificate(e.to_string()))? {
            if !usage.value.key_cert_sign() {
                return Err(PkiError::NotCa("its key usage does not allow signing certificates"));
            }
            if !usage.value.crl_sign() {
                return Err(PkiError::NotCa("its key usage does not allow signing CRLs"));
            }
        }
        let info = CertInfo::from_x509(&x509, &cert_der)?;
        if !info.is_valid_at(SystemTime::now()) {
            let validity = x509.validity();
            return Err(PkiError::CaNotValid {
                not_before: validity.not_before.timestamp(),
                not_after: validity.not_after.timestamp(),
            });
        }
        let key = cert::parse_key(key_pem)?;
        cert::check_key_matches(&x509, &key)?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        let chain_pem = chain.iter().map(|der| pem_encode("CERTIFICATE", der)).collect::<String>();
        Ok(Self { issuer, cert_pem: pem_encode("CERTIFICATE", &cert_der), cert_der, chain_pem, info })
    }

    /// The issuing CA certificate, PEM: what devices put in their trust store, and the client CA of listeners.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The issuing CA certificate followed by its parents (the same as [`Self::cert_pem`] for a CA Weir created):
    /// the chain to include in bundles.
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// The issuing CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// What the CA certificate says.
    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    /// Whether `cert_der` was signed by this CA's key: tells a server certificate left over from a replaced CA.
    pub fn signed(&self, cert_der: &[u8]) -> bool {
        let (Ok(cert), Ok(ca)) = (cert::parse_x509(cert_der), cert::parse_x509(&self.cert_der)) else {
            return false;
        };
        cert.verify_signature(Some(ca.public_key())).is_ok()
    }

    fn generate_with_key(options: &CaOptions) -> Result<(Self, String), PkiError> {
        let common_name = CommonName::new(&options.common_name)?;
        let key = options.key_type.generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name.as_str());
        if let Some(org) = &options.organization {
            dn.push(DnType::OrganizationName, org.as_str());
        }
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(SerialNumber::from_slice(&Serial::random()?.to_bytes()));
        let (not_before, not_after) = Validity::from_now(options.validity).bounds(None)?;
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        let ca = Self::from_pem(&cert.pem(), &key_pem)?;
        Ok((ca, key_pem))
    }
}

impl fmt::Debug for CertificateAuthority {
    /// Shows the certificate, never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority").field("info", &self.info).finish_non_exhaustive()
    }
}

fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE))
}

/// Writes both files atomically ([`crate::files::write_atomic`]: temporary, sync, rename, directory sync), key
/// first, mode 0600: a crash leaves either the old pair, or a new key beside the old certificate, which
/// [`CertificateAuthority::load`] reports as a mismatch instead of using.
fn write_files(dir: &Path, cert_pem: &str, key_pem: &str) -> Result<(), PkiError> {
    let failed = |e: files::FileError| PkiError::io(e.path)(e.source);
    files::create_private_dir(dir).map_err(failed)?;
    let (cert_path, key_path) = paths(dir);
    files::write_atomic(&key_path, key_pem.as_bytes(), files::PRIVATE_FILE).map_err(failed)?;
    files::write_atomic(&cert_path, cert_pem.as_bytes(), files::PRIVATE_FILE).map_err(failed)
}

fn warn_if_key_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), "the CA key is readable by other users; chmod 600 it");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// PEM text of one DER object, 64 characters a line.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let symbol = |index: u32| char::from(ALPHABET.get((index & 63) as usize).copied().unwrap_or(b'='));
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        out.push(symbol(n >> 18));
        out.push(symbol(n >> 12));
        out.push(if chunk.len() > 1 { symbol(n >> 6) } else { '=' });
        out.push(if chunk.len() > 2 { symbol(n) } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::testutil;

    #[test]
    fn create_writes_private_key_and_reload_gives_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path(), &CaOptions::for_host("gw-01")).unwrap();
        assert!(dir.path().join(CA_CERT_FILE).is_file());
        assert!(dir.path().join(CA_KEY_FILE).is_file());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(CA_KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(ca.info().common_name.as_deref(), Some("Weir CA gw-01"));
        assert!(ca.info().is_ca);
        let again = CertificateAuthority::load_or_create(dir.path(), &CaOptions::default()).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        assert_eq!(again.info(), ca.info());
        assert!(!format!("{again:?}").contains("PRIVATE"));
    }

    #[test]
    fn half_a_ca_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(dir.path(), &CaOptions::default()).unwrap();
        fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        let before = fs::read_to_string(dir.path().join(CA_CERT_FILE)).unwrap();
        let err = CertificateAuthority::load_or_create(dir.path(), &CaOptions::default()).unwrap_err();
        assert!(matches!(err, PkiError::CaIncomplete { missing: CA_KEY_FILE, .. }), "{err}");
        assert_eq!(fs::read_to_string(dir.path().join(CA_CERT_FILE)).unwrap(), before);
    }

    #[test]
    fn every_key_type_makes_a_ca() {
        for key_type in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Ed25519] {
            let ca = CertificateAuthority::generate(&CaOptions { key_type, ..CaOptions::default() }).unwrap();
            assert!(ca.signed(ca.cert_der()), "{key_type:?}");
        }
    }

    #[test]
    fn import_of_a_matching_pair_is_installed() {
        let (cert_pem, key_pem) = testutil::foreign_ca_pem("Plant Issuing CA");
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::import(dir.path(), &cert_pem, &key_pem, OnExisting::Refuse).unwrap();
        assert_eq!(ca.info().common_name.as_deref(), Some("Plant Issuing CA"));
        let loaded = CertificateAuthority::load(dir.path()).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        let err =
            CertificateAuthority::import(dir.path(), &cert_pem, &key_pem, OnExisting::Refuse).unwrap_err();
        assert!(matches!(err, PkiError::CaExists(_)), "{err}");
        let (other_cert, other_key) = testutil::foreign_ca_pem("Other CA");
        CertificateAuthority::import(dir.path(), &other_cert, &other_key, OnExisting::Replace).unwrap();
        assert_eq!(
            CertificateAuthority::load(dir.path()).unwrap().info().common_name.as_deref(),
            Some("Other CA")
        );
    }

    #[test]
    fn bad_imports_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let existing = CertificateAuthority::load_or_create(dir.path(), &CaOptions::default()).unwrap();
        let (cert_a, _) = testutil::foreign_ca_pem("A");
        let (_, key_b) = testutil::foreign_ca_pem("B");
        let err = CertificateAuthority::import(dir.path(), &cert_a, &key_b, OnExisting::Replace).unwrap_err();
        assert!(matches!(err, PkiError::KeyMismatch), "{err}");

        let (leaf_cert, leaf_key) = testutil::self_signed_leaf_pem("not-a-ca");
        let err =
            CertificateAuthority::import(dir.path(), &leaf_cert, &leaf_key, OnExisting::Replace).unwrap_err();
        assert!(matches!(err, PkiError::NotCa(_)), "{err}");

        let err =
            CertificateAuthority::import(dir.path(), "garbage", &key_b, OnExisting::Replace).unwrap_err();
        assert!(matches!(err, PkiError::InvalidCertificate(_)), "{err}");
        let err =
            CertificateAuthority::import(dir.path(), &cert_a, "garbage", OnExisting::Replace).unwrap_err();
        assert!(matches!(err, PkiError::InvalidKey(_)), "{err}");

        assert_eq!(CertificateAuthority::load(dir.path()).unwrap().cert_pem(), existing.cert_pem());
    }

    #[test]
    fn openssl_made_ca_can_be_imported_and_signs_verifiable_certificates() {
        // An enterprise CA as openssl makes it: PrintableString country, EC or RSA key in PKCS#8.
        for key_spec in
            [&["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"][..], &["-newkey", "rsa:2048"][..]]
        {
            let dir = tempfile::tempdir().unwrap();
            let key = dir.path().join("ent.key");
            let crt = dir.path().join("ent.crt");
            let mut args =
                vec!["req", "-x509", "-nodes", "-days", "30", "-subj", "/C=DE/O=Plant/CN=Enterprise CA"];
            args.extend_from_slice(key_spec);
            args.extend_from_slice(&["-keyout", path_str(&key), "-out", path_str(&crt)]);
            args.extend_from_slice(&["-addext", "basicConstraints=critical,CA:TRUE"]);
            args.extend_from_slice(&["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
            testutil::run_tool("openssl", &args);
            let ca = CertificateAuthority::import(
                &dir.path().join("ca"),
                &fs::read_to_string(&crt).unwrap(),
                &fs::read_to_string(&key).unwrap(),
                OnExisting::Refuse,
            )
            .unwrap();
            let issued = ca.issue_client(&testutil::client_request("press-1")).unwrap();
            let leaf = dir.path().join("leaf.crt");
            fs::write(&leaf, &issued.cert_pem).unwrap();
            let out = testutil::run_tool("openssl", &["verify", "-CAfile", path_str(&crt), path_str(&leaf)]);
            assert!(out.contains("OK"), "{key_spec:?}: {out}");
            testutil::assert_chains_to(&ca, &issued.cert_pem, testutil::Usage::Client);
        }
    }

    fn path_str(p: &Path) -> &str {
        p.to_str().unwrap()
    }

    #[test]
    fn pem_encoding_matches_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }
}
