//! The TLS handshake to Kafka, for real. tansu 0.6 does not wire TLS, so a TLS terminator of the test suite's
//! own (rustls, which the crate already uses) stands in front of it, with a CA, a server and a client
//! certificate made here (rcgen); tansu advertises the terminator, so every connection a client makes is TLS.
//! librdkafka (OpenSSL) on the gateway's side and confluent-kafka as the reader speak TLS to it.
//!
//! SASL is not tested against a broker: tansu 0.6's SASL fails for any credentials. Its plumbing is tested in
//! src/forward/settings.rs and kafka.rs, and a wrong password's error in kafka.rs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};

use weir::forward::ops;
use weir::forward::status::RouteState;

use crate::kafka::{
    Tansu, check_exact, config_db, keys, publish_qos1, read_all_with, until_forwarded_all, until_status,
    uplink,
};
use crate::support::TestGateway;

/// A CA, and PEM files of certificates and keys it signed, in a directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca_pem = params.self_signed(&key).unwrap().pem();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        Pki { dir, ca: Issuer::new(params, key), ca_pem }
    }

    fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.path().join(file)
    }

    /// Issues a certificate for `names` as `<stem>.pem` and `<stem>.key`.
    fn issue(&self, stem: &str, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, stem);
        let cert = params.signed_by(&key, &self.ca).unwrap().pem();
        std::fs::write(self.path(&format!("{stem}.pem")), &cert).unwrap();
        std::fs::write(self.path(&format!("{stem}.key")), key.serialize_pem()).unwrap();
        (cert, key.serialize_pem())
    }
}

/// Terminates TLS on `listener` (requiring a client certificate signed by `pki`'s CA) and passes the bytes to
/// `to`.
fn tls_terminator(pki: &Pki, listener: TcpListener, to: SocketAddr) -> tokio::task::JoinHandle<()> {
    let (cert, key) = pki.issue("server", &["127.0.0.1", "localhost"]);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap()).unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A failed handshake (wrong CA on the client's side, no client certificate) just closes.
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut broker) = TcpStream::connect(to).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
            });
        }
    })
}

async fn set_upstream(db: &sqlx::SqlitePool, bootstrap: &str, ca: &Path, client: Option<(&Path, &Path)>) {
    let request = ops::SetUpstream {
        name: "main".into(),
        bootstrap: bootstrap.into(),
        tls: true,
        ca: Some(ca.to_owned()),
        client_cert: client.map(|c| c.0.to_owned()),
        client_key: client.map(|c| c.1.to_owned()),
        ..ops::SetUpstream::default()
    };
    ops::upstream_set(db, request, "test").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_over_tls_verifies_the_broker_and_presents_a_client_certificate() {
    let pki = Pki::new("Kafka test CA");
    pki.issue("gateway", &["gateway"]);
    let stranger = Pki::new("Some other CA");
    // tansu advertises the terminator: bound first, then tansu, then the terminator passes to tansu's proxy.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = listener.local_addr().unwrap();
    let tansu = Tansu::start_advertising(tls_addr).await;
    let _terminator = tls_terminator(&pki, listener, tansu.proxy.addr);
    tansu.create_topic("secure", 1).await;
    let bootstrap = tls_addr.to_string();
    let (cert, key) = (pki.path("gateway.pem"), pki.path("gateway.key"));

    let gw = TestGateway::start().await;
    let data = gw.data_dir().to_owned();
    let db = config_db(&data).await;
    set_upstream(&db, &bootstrap, &pki.path("ca.pem"), Some((&cert, &key))).await;
    ops::route_add(&db, uplink("secure", "secure/#", "secure"), "test").await.unwrap();
    let keys = keys(2);
    assert_eq!(publish_qos1(gw.tcp, "secure", &keys, 0..100, 50).await, 100);
    until_forwarded_all(&data, "secure").await;

    let before = until_status(&data, "secure", "100 forwarded", |s| s.forwarded == 100).await.forwarded;
    // A CA that did not sign the broker's certificate: a clear TLS error, nothing forwarded, nothing lost.
    set_upstream(&db, &bootstrap, &stranger.path("ca.pem"), Some((&cert, &key))).await;
    until_status(&data, "secure", "a TLS error", |s| {
        s.last_error.as_deref().is_some_and(|e| e.contains("SSL") && e.contains("certificate verify failed"))
    })
    .await;
    assert_eq!(publish_qos1(gw.tcp, "secure", &keys, 100..150, 50).await, 50);
    let s = until_status(&data, "secure", "stuck behind the TLS error", |s| {
        s.lag_messages >= 50 && matches!(s.state, RouteState::Stalled | RouteState::Error)
    })
    .await;
    assert_eq!(s.forwarded, before, "nothing forwarded since the CA changed");
    eprintln!("wrong CA: {:?} {:?}", s.state, s.last_error);
    // No client certificate, to a broker that requires one: refused too.
    let switched = weir::timefmt::now_ms();
    set_upstream(&db, &bootstrap, &pki.path("ca.pem"), None).await;
    let s = until_status(&data, "secure", "another error", |s| {
        s.last_error_ms.is_some_and(|t| t > switched + 1000)
            && s.last_error.as_deref().is_some_and(|e| !e.contains("certificate verify failed"))
    })
    .await;
    assert_eq!(s.forwarded, before, "nothing forwarded without a client certificate");
    assert!(s.lag_messages >= 50);
    eprintln!("no client certificate: {:?} {:?}", s.state, s.last_error);
    set_upstream(&db, &bootstrap, &pki.path("ca.pem"), Some((&cert, &key))).await;
    until_forwarded_all(&data, "secure").await;

    let ca = pki.path("ca.pem");
    let settings = [
        ("security.protocol", "ssl"),
        ("ssl.ca.location", ca.to_str().unwrap()),
        ("ssl.certificate.location", cert.to_str().unwrap()),
        ("ssl.key.location", key.to_str().unwrap()),
    ];
    let records = read_all_with(&bootstrap, "secure", &settings).await;
    let mut want: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for seq in 0..150u64 {
        want.entry(keys[(seq % 2) as usize].clone()).or_default().push(seq);
    }
    check_exact(&records, &want);
    gw.stop().await;
}
