//! Handing a certificate to a device: a PEM bundle, or a password-protected PKCS#12 file for tools and
//! operating systems that import only that.
//!
//! The PKCS#12 file uses PBES2 (PBKDF2 with HMAC-SHA-256, AES-256-CBC) for the key and the certificates and an
//! HMAC-SHA-256 MAC: what OpenSSL 3 writes by default and reads without `-legacy`. The p12-keystore crate is used
//! with its legacy (RC2/3DES) feature turned off, so no weak cipher can be chosen by mistake.

use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

use super::cert;
use super::error::PkiError;

/// A PEM bundle for a device: its certificate, then the CA chain, then (when given) its private key. Mosquitto,
/// paho and most MQTT clients read certificate and key from one file in this order.
pub fn pem_bundle(cert_pem: &str, key_pem: Option<&str>, ca_chain_pem: &str) -> String {
    let mut out = String::new();
    for part in [Some(cert_pem), Some(ca_chain_pem), key_pem].into_iter().flatten() {
        let part = part.trim();
        if !part.is_empty() {
            out.push_str(part);
            out.push('\n');
        }
    }
    out
}

/// A PKCS#12 file holding the certificate, its key and the CA chain, protected by `password`, with
/// `friendly_name` as the label that import dialogs show.
///
/// The key must belong to the certificate; a mismatch is refused before anything is encoded.
pub fn pkcs12(
    cert_pem: &str,
    key_pem: &str,
    ca_chain_pem: &str,
    password: &str,
    friendly_name: &str,
) -> Result<Vec<u8>, PkiError> {
    if password.is_empty() {
        return Err(PkiError::EmptyPassword);
    }
    let leaf_der = cert::first_cert_der(cert_pem)?;
    let leaf_x509 = cert::parse_x509(&leaf_der)?;
    cert::check_key_matches(&leaf_x509, &cert::parse_key(key_pem)?)?;
    let PrivateKeyDer::Pkcs8(pkcs8) =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| PkiError::InvalidKey(e.to_string()))?
    else {
        return Err(PkiError::InvalidKey("expected a PKCS#8 key".into()));
    };
    let key =
        PrivateKey::from_der(pkcs8.secret_pkcs8_der()).map_err(|e| PkiError::InvalidKey(e.to_string()))?;

    let mut chain = vec![p12_cert(&leaf_der)?];
    if !ca_chain_pem.trim().is_empty() {
        for der in cert::cert_ders(ca_chain_pem)? {
            chain.push(p12_cert(&der)?);
        }
    }
    // The local key id ties the key bag to its certificate bag; the certificate's digest is what OpenSSL uses.
    let local_key_id =
        ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &leaf_der).as_ref().to_vec();
    let mut store = KeyStore::new();
    store.add_entry(
        friendly_name,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, key, chain)),
    );
    store.writer(password).write().map_err(|e| PkiError::Pkcs12(e.to_string()))
}

fn p12_cert(der: &[u8]) -> Result<Certificate, PkiError> {
    Certificate::from_der(der).map_err(|e| PkiError::InvalidCertificate(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::ca::{CaOptions, CertificateAuthority};
    use crate::pki::cert::KeyType;
    use crate::pki::testutil;

    #[test]
    fn pem_bundle_puts_certificate_chain_then_key() {
        let bundle = pem_bundle("CERT\n\n", Some("KEY"), "CA\n");
        assert_eq!(bundle, "CERT\nCA\nKEY\n");
        assert_eq!(pem_bundle("CERT", None, ""), "CERT\n");
    }

    #[test]
    fn openssl_and_python_read_the_pkcs12_with_the_password_only() {
        let ca = CertificateAuthority::generate(&CaOptions::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for key_type in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Ed25519] {
            let mut req = testutil::client_request("press-1");
            req.key_type = key_type;
            let issued = ca.issue_client(&req).unwrap();
            let p12 = pkcs12(
                &issued.cert_pem,
                issued.key_pem.as_deref().unwrap(),
                ca.chain_pem(),
                "s3cret",
                "press-1",
            )
            .unwrap();
            let file = dir.path().join("press-1.p12");
            std::fs::write(&file, &p12).unwrap();
            let path = file.to_str().unwrap();

            let (ok, out) = testutil::try_tool(
                "openssl",
                &["pkcs12", "-info", "-in", path, "-passin", "pass:s3cret", "-noout"],
            );
            assert!(ok, "openssl refused the PKCS#12 file ({key_type:?}): {out}");
            assert!(out.contains("AES-256-CBC") && !out.to_ascii_lowercase().contains("rc2"), "{out}");
            let (ok, out) = testutil::try_tool(
                "openssl",
                &["pkcs12", "-info", "-in", path, "-passin", "pass:wrong", "-noout"],
            );
            assert!(!ok, "openssl accepted a wrong password: {out}");

            let script = "import sys\n\
                from cryptography.hazmat.primitives.serialization import pkcs12\n\
                key, cert, extra = pkcs12.load_key_and_certificates(open(sys.argv[1], 'rb').read(), sys.argv[2].encode())\n\
                assert key is not None and cert is not None, 'key or certificate missing'\n\
                print(cert.subject.rfc4514_string(), len(extra))\n";
            let out = testutil::run_python(script, &[path, "s3cret"]);
            assert_eq!(out.trim(), "CN=press-1 1", "{key_type:?}");
            let (ok, _) = testutil::try_python(script, &[path, "wrong"]);
            assert!(!ok, "python loaded the file with a wrong password");
        }
    }

    #[test]
    fn pkcs12_refuses_empty_password_and_foreign_key() {
        let ca = CertificateAuthority::generate(&CaOptions::default()).unwrap();
        let a = ca.issue_client(&testutil::client_request("a")).unwrap();
        let b = ca.issue_client(&testutil::client_request("b")).unwrap();
        let key_a = a.key_pem.as_deref().unwrap();
        assert!(matches!(pkcs12(&a.cert_pem, key_a, ca.chain_pem(), "", "a"), Err(PkiError::EmptyPassword)));
        let key_b = b.key_pem.as_deref().unwrap();
        assert!(matches!(pkcs12(&a.cert_pem, key_b, ca.chain_pem(), "pw", "a"), Err(PkiError::KeyMismatch)));
    }
}
