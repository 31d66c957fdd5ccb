//! Real TLS handshakes (tokio-rustls over an in-memory duplex, and openssl s_client over TCP) against
//! configurations built by [`super::server_config`]. The server's accept result decides: with TLS 1.3 the client
//! finishes its side before the server has judged the client certificate.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::pki::testutil;
use crate::pki::{
    CaOptions, CertificateAuthority, IssuedCert, KeyType, RevocationList, RevocationReason, RevokedCert,
    ServerCertRequest, SubjectAltName, Validity,
};

struct Site {
    ca: CertificateAuthority,
    server: IssuedCert,
}

impl Site {
    fn new() -> Self {
        let ca = CertificateAuthority::generate(&CaOptions::for_host("gw-test")).unwrap();
        let mut req = ServerCertRequest::new("gw-test", vec!["127.0.0.1".parse().unwrap()]);
        req.extra_dns = vec!["localhost".into()];
        let server = ca.issue_server(&req).unwrap();
        Self { ca, server }
    }

    fn material<'a>(&'a self, crl_pem: Option<&'a str>) -> TlsMaterial<'a> {
        TlsMaterial {
            cert_chain_pem: &self.server.cert_pem,
            key_pem: self.server.key_pem.as_deref().unwrap(),
            client_ca_pem: self.ca.cert_pem(),
            crl_pem,
        }
    }

    fn config(&self, crl_pem: Option<&str>, auth: ClientAuth) -> Arc<rustls::ServerConfig> {
        server_config(&self.material(crl_pem), auth).unwrap()
    }

    fn client(&self, cn: &str) -> IssuedCert {
        self.ca.issue_client(&testutil::client_request(cn)).unwrap()
    }
}

/// Runs one handshake and a one-byte exchange; `Ok` carries the identity the server saw, if any.
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    ca_pem: &str,
    client_cert: Option<&IssuedCert>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Option<PeerIdentity>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(der.unwrap()).unwrap();
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
    let client_config = match client_cert {
        None => builder.with_no_client_auth(),
        Some(issued) => {
            let chain =
                CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes()).map(Result::unwrap).collect();
            let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_deref().unwrap().as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(server);
    let connector = TlsConnector::from(Arc::new(client_config));

    let server_side = async move {
        let mut stream = acceptor.accept(server_io).await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        stream.write_all(&byte).await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        let (_, conn) = stream.get_ref();
        match conn.peer_certificates().and_then(|c| c.first()) {
            None => Ok(None),
            Some(leaf) => {
                peer_identity(leaf, IdentitySource::CommonName).map(Some).map_err(|e| e.to_string())
            }
        }
    };
    let client_side = async move {
        let name = ServerName::try_from("localhost").unwrap();
        let Ok(mut stream) = connector.connect(name, client_io).await else { return };
        let _ = stream.write_all(b"x").await;
        let _ = stream.flush().await;
        let mut byte = [0u8; 1];
        let _ = stream.read_exact(&mut byte).await;
    };
    let (result, ()) =
        tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(server_side, client_side) })
            .await
            .expect("handshake timed out");
    result
}

const BOTH: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

#[tokio::test]
async fn required_policy_accepts_a_valid_client_and_names_it() {
    let site = Site::new();
    let client = site.client("press-1");
    for versions in [BOTH, &[&rustls::version::TLS12][..], &[&rustls::version::TLS13][..]] {
        let seen =
            handshake(site.config(None, ClientAuth::Required), site.ca.cert_pem(), Some(&client), versions)
                .await
                .unwrap()
                .unwrap();
        assert_eq!(seen.name, "press-1");
        assert_eq!(seen.serial, client.info.serial);
        assert_eq!(seen.not_after, client.info.not_after);
    }
}

#[tokio::test]
async fn every_key_type_handshakes_for_ca_server_and_client() {
    for key_type in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Ed25519] {
        let ca = CertificateAuthority::generate(&CaOptions { key_type, ..CaOptions::default() }).unwrap();
        let mut server_req = ServerCertRequest::new("gw", vec![]);
        server_req.extra_dns = vec!["localhost".into()];
        server_req.key_type = key_type;
        let server = ca.issue_server(&server_req).unwrap();
        let mut client_req = testutil::client_request("dev");
        client_req.key_type = key_type;
        let client = ca.issue_client(&client_req).unwrap();
        let material = TlsMaterial {
            cert_chain_pem: &server.cert_pem,
            key_pem: server.key_pem.as_deref().unwrap(),
            client_ca_pem: ca.cert_pem(),
            crl_pem: None,
        };
        let config = server_config(&material, ClientAuth::Required).unwrap();
        let seen = handshake(config, ca.cert_pem(), Some(&client), BOTH).await;
        assert_eq!(seen.unwrap().unwrap().name, "dev", "{key_type:?}");
    }
}

#[tokio::test]
async fn required_policy_refuses_no_revoked_expired_and_foreign_certificates() {
    let site = Site::new();
    let good = site.client("good");
    let revoked = site.client("revoked");
    let mut list = RevocationList::new();
    list.revoke(RevokedCert {
        serial: revoked.info.serial.clone(),
        revoked_at: SystemTime::now(),
        reason: RevocationReason::KeyCompromise,
    })
    .unwrap();
    let crl = site.ca.crl(&list, 1, SystemTime::now(), Duration::from_secs(3600)).unwrap();
    let config = site.config(Some(&crl), ClientAuth::Required);
    let ca_pem = site.ca.cert_pem();

    assert!(handshake(config.clone(), ca_pem, Some(&good), BOTH).await.is_ok(), "a valid client must pass");
    let err = handshake(config.clone(), ca_pem, None, BOTH).await.unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let err = handshake(config.clone(), ca_pem, Some(&revoked), BOTH).await.unwrap_err();
    assert!(err.to_lowercase().contains("revoked"), "{err}");

    let mut expired_req = testutil::client_request("expired");
    expired_req.validity = Validity {
        not_before: SystemTime::now() - Duration::from_secs(10 * 86_400),
        lifetime: Duration::from_secs(86_400),
    };
    let expired = site.ca.issue_client(&expired_req).unwrap();
    let err = handshake(config.clone(), ca_pem, Some(&expired), BOTH).await.unwrap_err();
    assert!(err.to_lowercase().contains("expired"), "{err}");

    let foreign_ca = CertificateAuthority::generate(&CaOptions::default()).unwrap();
    let foreign = foreign_ca.issue_client(&testutil::client_request("intruder")).unwrap();
    let err = handshake(config.clone(), ca_pem, Some(&foreign), BOTH).await.unwrap_err();
    assert!(err.to_lowercase().contains("issuer"), "{err}");

    // A server certificate of our own CA lacks the client-authentication usage.
    let err = handshake(config, ca_pem, Some(&site.server), BOTH).await.unwrap_err();
    assert!(err.to_lowercase().contains("purpose") || err.to_lowercase().contains("usage"), "{err}");
}

#[tokio::test]
async fn optional_policy_lets_anonymous_clients_in_but_checks_presented_certificates() {
    let site = Site::new();
    let config = site.config(None, ClientAuth::Optional);
    let ca_pem = site.ca.cert_pem();
    assert_eq!(handshake(config.clone(), ca_pem, None, BOTH).await.unwrap(), None);
    let client = site.client("press-2");
    assert_eq!(
        handshake(config.clone(), ca_pem, Some(&client), BOTH).await.unwrap().unwrap().name,
        "press-2"
    );
    let foreign_ca = CertificateAuthority::generate(&CaOptions::default()).unwrap();
    let foreign = foreign_ca.issue_client(&testutil::client_request("intruder")).unwrap();
    assert!(handshake(config, ca_pem, Some(&foreign), BOTH).await.is_err());
}

#[tokio::test]
async fn no_client_auth_policy_does_not_ask_for_certificates() {
    let site = Site::new();
    let config = site.config(None, ClientAuth::None);
    let client = site.client("press-3");
    assert_eq!(handshake(config.clone(), site.ca.cert_pem(), Some(&client), BOTH).await.unwrap(), None);
    assert_eq!(handshake(config, site.ca.cert_pem(), None, BOTH).await.unwrap(), None);
}

#[tokio::test]
async fn reload_swaps_the_configuration_and_keeps_it_on_bad_material() {
    let site = Site::new();
    let client = site.client("press-4");
    let reloadable = ReloadableServerConfig::new(&site.material(None), ClientAuth::Required).unwrap();
    assert_eq!(reloadable.client_auth(), ClientAuth::Required);
    assert!(handshake(reloadable.current(), site.ca.cert_pem(), Some(&client), BOTH).await.is_ok());

    let list = RevocationList::from_entries([RevokedCert {
        serial: client.info.serial.clone(),
        revoked_at: SystemTime::now(),
        reason: RevocationReason::Superseded,
    }])
    .unwrap();
    let crl = site.ca.crl(&list, 2, SystemTime::now(), Duration::from_secs(3600)).unwrap();
    let before = reloadable.current();
    reloadable.reload(&site.material(Some(&crl))).unwrap();
    assert!(!Arc::ptr_eq(&before, &reloadable.current()));
    assert!(handshake(reloadable.current(), site.ca.cert_pem(), Some(&client), BOTH).await.is_err());
    // A connection accepted with the old configuration would have kept it; new ones get the new one.
    assert!(handshake(before, site.ca.cert_pem(), Some(&client), BOTH).await.is_ok());

    let current = reloadable.current();
    let mut bad = site.material(Some("not a crl"));
    assert!(matches!(reloadable.reload(&bad), Err(PkiError::InvalidCrl(_))));
    bad.crl_pem = None;
    bad.key_pem = client.key_pem.as_deref().unwrap();
    assert!(matches!(reloadable.reload(&bad), Err(PkiError::KeyMismatch)));
    assert!(Arc::ptr_eq(&current, &reloadable.current()), "a failed reload must keep the configuration");
}

#[test]
fn bad_material_is_refused_when_building() {
    let site = Site::new();
    let mut m = site.material(None);
    m.cert_chain_pem = "nothing";
    assert!(matches!(server_config(&m, ClientAuth::None), Err(PkiError::InvalidCertificate(_))));
    let mut m = site.material(None);
    m.key_pem = "nothing";
    assert!(matches!(server_config(&m, ClientAuth::None), Err(PkiError::InvalidKey(_))));
    let mut m = site.material(None);
    m.client_ca_pem = "";
    assert!(matches!(server_config(&m, ClientAuth::Required), Err(PkiError::InvalidCertificate(_))));
    let other = CertificateAuthority::generate(&CaOptions::default()).unwrap();
    let crl = other.crl(&RevocationList::new(), 1, SystemTime::now(), Duration::from_secs(60)).unwrap();
    let err = server_config(&site.material(Some(&crl)), ClientAuth::Required).unwrap_err();
    assert!(matches!(err, PkiError::InvalidCrl(_)), "{err}");
    let own = site.ca.crl(&RevocationList::new(), 1, SystemTime::now(), Duration::from_secs(60)).unwrap();
    assert!(server_config(&site.material(Some(&own)), ClientAuth::Required).is_ok());
}

#[test]
fn identity_comes_from_the_configured_name() {
    let site = Site::new();
    let mut req = testutil::client_request("press-5");
    req.sans = vec![
        SubjectAltName::email("press-5@plant.example").unwrap(),
        SubjectAltName::dns("press-5.plant.example").unwrap(),
        SubjectAltName::uri("spiffe://plant/press-5").unwrap(),
    ];
    let issued = site.ca.issue_client(&req).unwrap();
    let der = crate::pki::cert::first_cert_der(&issued.cert_pem).unwrap();
    let id = |source| peer_identity(&der, source).unwrap().name;
    assert_eq!(id(IdentitySource::CommonName), "press-5");
    assert_eq!(id(IdentitySource::DnsSan), "press-5.plant.example");
    assert_eq!(id(IdentitySource::EmailSan), "press-5@plant.example");
    assert_eq!(id(IdentitySource::UriSan), "spiffe://plant/press-5");
    assert_eq!(peer_identity(&der, IdentitySource::CommonName).unwrap().serial, issued.info.serial);

    let bare = site.client("bare");
    let der = crate::pki::cert::first_cert_der(&bare.cert_pem).unwrap();
    assert!(matches!(
        peer_identity(&der, IdentitySource::EmailSan),
        Err(PkiError::NoIdentity(IdentitySource::EmailSan))
    ));
    assert!(matches!(
        peer_identity(b"junk", IdentitySource::CommonName),
        Err(PkiError::InvalidCertificate(_))
    ));
}

#[tokio::test]
async fn openssl_s_client_connects_with_a_client_certificate() {
    let site = Site::new();
    let client = site.client("press-6");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let ca_file = write("ca.crt", site.ca.cert_pem());
    let cert_file = write("c.crt", &client.cert_pem);
    let key_file = write("c.key", client.key_pem.as_deref().unwrap());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = TlsAcceptor::from(site.config(None, ClientAuth::Required));
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut stream = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        stream.write_all(b"hello from weir\n").await.map_err(|e| e.to_string())?;
        stream.shutdown().await.map_err(|e| e.to_string())?;
        let (_, conn) = stream.get_ref();
        let leaf =
            conn.peer_certificates().and_then(|c| c.first()).cloned().ok_or("no client certificate")?;
        peer_identity(&leaf, IdentitySource::CommonName).map_err(|e| e.to_string())
    });

    let connect = format!("127.0.0.1:{port}");
    let output = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect", &connect, "-CAfile", &ca_file, "-cert", &cert_file, "-key", &key_file])
        .args(["-verify_return_error", "-verify_ip", "127.0.0.1", "-ign_eof"])
        .stdin(std::process::Stdio::null())
        .output();
    let output = tokio::time::timeout(Duration::from_secs(20), output)
        .await
        .expect("openssl s_client timed out")
        .unwrap_or_else(|e| panic!("this test needs the openssl CLI (apt-get install -y openssl): {e}"));
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "s_client failed:\n{text}");
    assert!(text.contains("hello from weir"), "{text}");
    assert!(text.contains("Verify return code: 0"), "{text}");
    let seen = server.await.unwrap().unwrap();
    assert_eq!(seen.name, "press-6");
}
