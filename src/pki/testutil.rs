//! Helpers shared by the unit tests of this module: fixtures made with rcgen at test time, a certificate-chain
//! check through rustls' own verifiers, and running external tools (openssl, python3) with clear failures when
//! they are missing.

use std::process::Command;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{ServerName, UnixTime};

use super::ca::CertificateAuthority;
use super::cert::{self, CertInfo};
use super::issue::ClientCertRequest;
use super::names::{CommonName, SubjectAltName};

pub(crate) fn client_request(cn: &str) -> ClientCertRequest {
    ClientCertRequest::new(CommonName::new(cn).unwrap())
}

/// A CA made outside Weir (as an enterprise PKI would hand it over): certificate and PKCS#8 key PEM.
pub(crate) fn foreign_ca_pem(cn: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, "Plant");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365);
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

/// A self-signed end-entity certificate: valid, but not a CA.
pub(crate) fn self_signed_leaf_pem(cn: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![format!("{cn}.example")]).unwrap();
    params.is_ca = IsCa::ExplicitNoCa;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365);
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Usage {
    Client,
    Server,
}

/// Verifies `cert_pem` against `ca` with the same WebPKI code the listeners use (chain, validity, usage).
pub(crate) fn assert_chains_to(ca: &CertificateAuthority, cert_pem: &str, usage: Usage) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let roots = Arc::new(roots);
    let leaf = cert::first_cert_der(cert_pem).unwrap();
    match usage {
        Usage::Client => {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider).build().unwrap();
            verifier.verify_client_cert(&leaf, &[], UnixTime::now()).unwrap();
        }
        Usage::Server => {
            let info = CertInfo::from_pem(cert_pem).unwrap();
            let verifier =
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider).build().unwrap();
            for san in &info.sans {
                let name = match san {
                    SubjectAltName::Dns(n) => ServerName::try_from(n.clone()).unwrap(),
                    SubjectAltName::Ip(ip) => ServerName::IpAddress((*ip).into()),
                    _ => continue,
                };
                verifier.verify_server_cert(&leaf, &[], &name, &[], UnixTime::now()).unwrap();
            }
        }
    }
}

/// Runs a tool that the test needs; a missing tool fails the test with how to install it.
pub(crate) fn try_tool(program: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!(
            "this test needs `{program}` on the PATH ({e}); install it: apt-get install -y openssl / python3"
        )
    });
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// Like [`try_tool`], and the tool must succeed.
pub(crate) fn run_tool(program: &str, args: &[&str]) -> String {
    let (ok, text) = try_tool(program, args);
    assert!(ok, "`{program} {}` failed:\n{text}", args.join(" "));
    text
}

/// Runs a python3 script; python3 or its `cryptography` package missing fails the test with how to install it.
pub(crate) fn try_python(script: &str, args: &[&str]) -> (bool, String) {
    let (ok, text) = try_tool("python3", &["-c", "import cryptography"]);
    assert!(ok, "this test needs Python's cryptography package: python3 -m pip install cryptography\n{text}");
    let mut all = vec!["-c", script];
    all.extend_from_slice(args);
    try_tool("python3", &all)
}

pub(crate) fn run_python(script: &str, args: &[&str]) -> String {
    let (ok, text) = try_python(script, args);
    assert!(ok, "python3 script failed:\n{text}");
    text
}
