//! TLS listeners with Weir's own CA: server authentication checked by independent tools (openssl s_client,
//! mosquitto_pub), passwords over TLS, and client certificates whose common name is the user name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::process::Command;

use crate::support::{TestGateway, WAIT};
use weir::config::ListenerConfig;
use weir::mqtt::net::Protocol;
use weir::pki::{CaOptions, CertificateAuthority, ClientAuth, ClientCertRequest, CommonName, Validity};

fn tls_listener(name: &str, client_certificates: ClientAuth) -> ListenerConfig {
    ListenerConfig {
        name: name.into(),
        protocol: Protocol::Tls,
        bind: "127.0.0.1:0".parse().unwrap(),
        ws_path: String::new(),
        allow_anonymous: false,
        client_certificates,
        identity: weir::pki::IdentitySource::CommonName,
        certificate_password: false,
    }
}

async fn gateway() -> (TestGateway, SocketAddr, SocketAddr) {
    let gw = TestGateway::start_with(|c| {
        c.listeners.push(tls_listener("tls", ClientAuth::None));
        c.listeners.push(tls_listener("mtls", ClientAuth::Required));
    })
    .await;
    gw.gateway()
        .security()
        .add_user("alice", "correct horse battery", &["admin".into()], "test")
        .await
        .unwrap();
    let tls = gw.gateway().local_addr("tls").unwrap();
    let mtls = gw.gateway().local_addr("mtls").unwrap();
    (gw, tls, mtls)
}

/// Writes a client certificate and key issued by `ca` into `dir`; returns their paths.
fn client_cert(ca: &CertificateAuthority, dir: &Path, name: &str, validity: Validity) -> (PathBuf, PathBuf) {
    let mut request = ClientCertRequest::new(CommonName::new(name).unwrap());
    request.validity = validity;
    let issued = ca.issue_client(&request).unwrap();
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, issued.key_pem.unwrap()).unwrap();
    (cert, key)
}

async fn mosquitto_pub(addr: SocketAddr, ca: &Path, extra: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "localhost", "-p", &addr.port().to_string(), "--cafile"]).arg(ca);
    cmd.args(["-t", "tls/test", "-m", "over tls", "-q", "1"]).args(extra);
    tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("mosquitto_pub hung")
        .expect("mosquitto_pub (run .ci/setup)")
}

#[tokio::test]
async fn the_server_certificate_chains_to_weirs_ca_and_passwords_work_over_tls() {
    let (gw, tls, _) = gateway().await;
    let ca = gw.data_dir().join("pki/ca.crt");
    let out = tokio::time::timeout(
        WAIT,
        Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &tls.to_string(),
                "-servername",
                "localhost",
                "-verify_return_error",
                "-CAfile",
            ])
            .arg(&ca)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");

    let ok = mosquitto_pub(tls, &ca, &["-u", "alice", "-P", "correct horse battery"]).await;
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let bad = mosquitto_pub(tls, &ca, &["-u", "alice", "-P", "wrong"]).await;
    assert!(!bad.status.success());
    // A client that does not trust Weir's CA refuses the server.
    let foreign = CertificateAuthority::generate(&CaOptions::default()).unwrap();
    let foreign_ca = gw.data_dir().join("foreign-ca.crt");
    std::fs::write(&foreign_ca, foreign.cert_pem()).unwrap();
    let untrusted = mosquitto_pub(tls, &foreign_ca, &["-u", "alice", "-P", "correct horse battery"]).await;
    assert!(!untrusted.status.success());
    gw.stop().await;
}

#[tokio::test]
async fn client_certificates_identify_devices_and_bad_ones_are_refused() {
    let (gw, _, mtls) = gateway().await;
    let pki = gw.data_dir().join("pki");
    let ca_file = pki.join("ca.crt");
    let ca = CertificateAuthority::load(&pki).unwrap();
    let dir = gw.data_dir();
    let rule = weir::auth::acl::Rule::new(
        weir::auth::acl::Subject::User("press-7".into()),
        weir::auth::acl::Effect::Allow,
        weir::auth::acl::Action::Both,
        "tls/#",
    );
    gw.gateway().security().add_rule(&rule, "test").await.unwrap();
    let (cert, key) = client_cert(&ca, dir, "press-7", Validity::days(30));
    let ok =
        mosquitto_pub(mtls, &ca_file, &["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()])
            .await;
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // The certificate's common name is the user name: the journal records it.
    let journal = gw.gateway().journal().unwrap();
    journal.flush().await;
    let page =
        weir::store::history::query(journal.pool(), &weir::store::history::HistoryQuery::new("tls/test"))
            .await
            .unwrap();
    assert_eq!(page.messages[0].username.as_deref(), Some("press-7"));

    let no_cert = mosquitto_pub(mtls, &ca_file, &[]).await;
    assert!(!no_cert.status.success(), "a certificate is required");
    let foreign = CertificateAuthority::generate(&CaOptions::default()).unwrap();
    let (fcert, fkey) = client_cert(&foreign, dir, "intruder", Validity::days(30));
    let refused =
        mosquitto_pub(mtls, &ca_file, &["--cert", fcert.to_str().unwrap(), "--key", fkey.to_str().unwrap()])
            .await;
    assert!(!refused.status.success(), "a certificate from another CA is refused");
    let past = Validity {
        not_before: SystemTime::now() - Duration::from_secs(10 * 86_400),
        lifetime: Duration::from_secs(86_400),
    };
    let (ecert, ekey) = client_cert(&ca, dir, "expired", past);
    let expired =
        mosquitto_pub(mtls, &ca_file, &["--cert", ecert.to_str().unwrap(), "--key", ekey.to_str().unwrap()])
            .await;
    assert!(!expired.status.success(), "an expired certificate is refused");
    gw.stop().await;
}

#[tokio::test]
async fn the_ca_and_server_certificate_persist_across_restarts() {
    let (gw, _, _) = gateway().await;
    let pki = gw.data_dir().join("pki");
    let ca = std::fs::read_to_string(pki.join("ca.crt")).unwrap();
    let server = std::fs::read_to_string(pki.join("server.crt")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for key in ["ca.key", "server.key"] {
        let mode = std::fs::metadata(pki.join(key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    let material = weir::security::server::server_material(
        gw.data_dir(),
        &[tls_listener("tls", ClientAuth::None)],
        &Default::default(),
    )
    .unwrap();
    assert_eq!(material.ca_pem.trim(), ca.trim());
    assert!(material.cert_chain_pem.starts_with(server.trim()), "a valid certificate is kept, not reissued");
    gw.stop().await;
}

async fn weir(gw: &TestGateway, args: &[&str], stdin: &str) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .arg("--data-dir")
        .arg(gw.data_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).await.unwrap();
    tokio::time::timeout(WAIT, child.wait_with_output()).await.unwrap().unwrap()
}

#[tokio::test]
async fn weir_cert_issues_exports_and_revokes_and_revocation_closes_live_connections() {
    let (gw, _, mtls) = gateway().await;
    // The README's example: an output folder that does not exist yet is created, private (keys go into it).
    let out_dir = gw.data_dir().join("issued").join("certs");
    let out = out_dir.to_str().unwrap();
    let issued = weir(
        &gw,
        &[
            "cert",
            "issue",
            "press-9",
            "--san",
            "DNS:press-9.plant",
            "--key-type",
            "p384",
            "--p12",
            "--out",
            out,
        ],
        "p12 passphrase\n",
    )
    .await;
    assert!(issued.status.success(), "{}", String::from_utf8_lossy(&issued.stderr));
    let ca = weir(&gw, &["ca", "export"], "").await;
    let ca_file = gw.data_dir().join("exported-ca.crt");
    std::fs::write(&ca_file, &ca.stdout).unwrap();
    assert_eq!(ca.stdout, std::fs::read(gw.data_dir().join("pki/ca.crt")).unwrap());
    let cert = out_dir.join("press-9.crt");
    let key = out_dir.join("press-9.key");
    // Independent checks: openssl verifies the chain and opens the PKCS#12 file.
    let verify =
        Command::new("openssl").args(["verify", "-CAfile"]).arg(&ca_file).arg(&cert).output().await.unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    let p12 = Command::new("openssl")
        .args(["pkcs12", "-info", "-noout", "-passin", "pass:p12 passphrase", "-in"])
        .arg(out_dir.join("press-9.p12"))
        .output()
        .await
        .unwrap();
    assert!(p12.status.success(), "{}", String::from_utf8_lossy(&p12.stderr));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&out_dir).unwrap().permissions().mode() & 0o777, 0o700);
    let exported = weir(&gw, &["cert", "export", "press-9"], "").await;
    let bundle = String::from_utf8(exported.stdout).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2, "certificate and CA: {bundle}");
    assert!(!bundle.contains("PRIVATE KEY"), "Weir does not keep keys");
    let text =
        Command::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(&cert).output().await.unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("P-384") || text.contains("secp384r1"), "{text}");
    assert!(text.contains("DNS:press-9.plant"), "{text}");

    // Bad input: a second live certificate with the same name, a malformed CSR, revoking what does not exist.
    let again = weir(&gw, &["cert", "issue", "PRESS-9", "--out", out], "").await;
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    let csr = gw.data_dir().join("bad.csr");
    std::fs::write(
        &csr,
        "-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n",
    )
    .unwrap();
    let bad = weir(&gw, &["cert", "sign", csr.to_str().unwrap(), "--out", out], "").await;
    assert!(!bad.status.success());
    let nobody = weir(&gw, &["cert", "revoke", "nobody"], "").await;
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("no certificate"));

    // A device connected with the certificate...
    let rule = weir::auth::acl::Rule::new(
        weir::auth::acl::Subject::User("press-9".into()),
        weir::auth::acl::Effect::Allow,
        weir::auth::acl::Action::Both,
        "#",
    );
    gw.gateway().security().add_rule(&rule, "test").await.unwrap();
    let link = gw.gateway().broker().link("watch", Default::default()).await.unwrap();
    link.subscribe("$SYS/weir/clients/press-9-sub/presence", weir::mqtt::codec::QoS::AtLeastOnce)
        .await
        .unwrap();
    let _sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "localhost",
            "-p",
            &mtls.port().to_string(),
            "-V",
            "mqttv5",
            "-i",
            "press-9-sub",
            "-t",
            "x",
        ])
        .arg("--cafile")
        .arg(&ca_file)
        .args(["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let state = |d: &weir::mqtt::broker::Delivery| {
        serde_json::from_slice::<serde_json::Value>(&d.message.payload).unwrap()["state"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(state(&tokio::time::timeout(WAIT, link.recv()).await.unwrap().unwrap()), "online");
    // ... is disconnected as soon as the certificate is revoked (by another process), and cannot come back.
    let unknown = weir(&gw, &["cert", "revoke", "press-9", "--reason", "lost"], "").await;
    assert!(
        !unknown.status.success() && String::from_utf8_lossy(&unknown.stderr).contains("revocation reason")
    );
    let revoked = weir(&gw, &["cert", "revoke", "press-9", "--reason", "cessation-of-operation"], "").await;
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    let lost = tokio::time::timeout(WAIT, link.recv()).await.expect("the live connection is closed").unwrap();
    let lost: serde_json::Value = serde_json::from_slice(&lost.message.payload).unwrap();
    assert_eq!(lost["state"], "lost");
    assert_eq!(lost["reason"], "disconnected by an administrator");
    let refused =
        mosquitto_pub(mtls, &ca_file, &["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()])
            .await;
    assert!(!refused.status.success(), "a revoked certificate is refused at the handshake");
    let twice = weir(&gw, &["cert", "revoke", "press-9"], "").await;
    assert!(String::from_utf8_lossy(&twice.stderr).contains("already revoked"));
    let list = String::from_utf8(weir(&gw, &["cert", "list"], "").await.stdout).unwrap();
    assert!(list.contains("press-9") && list.contains("revoked (cessation-of-operation)"), "{list}");
    gw.stop().await;
}

#[tokio::test]
async fn paho_over_secure_websocket() {
    let gw = TestGateway::start_with(|c| {
        let mut wss = tls_listener("wss", ClientAuth::None);
        wss.protocol = Protocol::SecureWebSocket;
        wss.ws_path = "/mqtt".into();
        c.listeners.push(wss);
    })
    .await;
    gw.gateway()
        .security()
        .add_user("alice", "correct horse battery", &["admin".into()], "test")
        .await
        .unwrap();
    let port = gw.gateway().local_addr("wss").unwrap().port();
    let ca = gw.data_dir().join("pki/ca.crt");
    // paho-mqtt, an independent client, over wss:// with our CA; it reports whether its QoS 1 publish completed.
    let script = r#"
import sys, paho.mqtt.client as mqtt
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="wss-1", transport="websockets", protocol=mqtt.MQTTv5)
c.ws_set_options(path="/mqtt")
c.tls_set(ca_certs=sys.argv[2])
c.username_pw_set("alice", "correct horse battery")
c.connect("localhost", int(sys.argv[1]))
c.loop_start()
info = c.publish("wss/t", "over wss", qos=1)
info.wait_for_publish(timeout=5)
print("published" if info.is_published() else "not published")
c.disconnect()
c.loop_stop()
"#;
    let python = std::env::var("WEIR_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = tokio::time::timeout(
        WAIT,
        Command::new(python).args(["-c", script, &port.to_string()]).arg(&ca).output(),
    )
    .await
    .unwrap()
    .expect("python3 with paho-mqtt (run .ci/setup)");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "published",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let journal = gw.gateway().journal().unwrap();
    journal.flush().await;
    let page = weir::store::history::query(journal.pool(), &weir::store::history::HistoryQuery::new("wss/t"))
        .await
        .unwrap();
    assert_eq!(page.messages[0].username.as_deref(), Some("alice"));
    gw.stop().await;
}

#[tokio::test]
async fn an_enterprise_ca_can_be_imported_and_the_listeners_use_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let openssl = |args: &[&str]| {
        let mut cmd = std::process::Command::new("openssl");
        cmd.current_dir(dir.path()).args(args);
        cmd
    };
    // An operator's CA, made by openssl (an independent tool), key as unencrypted PKCS#8.
    assert!(
        openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ec.key"])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        openssl(&["pkcs8", "-topk8", "-nocrypt", "-in", "ec.key", "-out", "ca.key"])
            .status()
            .unwrap()
            .success()
    );
    let req = [
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-days",
        "3650",
        "-subj",
        "/CN=Plant Issuing CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        "ca.crt",
    ];
    assert!(openssl(&req).status().unwrap().success());
    assert!(
        openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "other.key"])
            .status()
            .unwrap()
            .success()
    );
    let weir_ca = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.args(["ca", "import", "--cert"]).arg(dir.path().join("ca.crt")).arg("--key");
        cmd.args(extra).arg("--data-dir").arg(&data);
        cmd
    };
    let mismatched = weir_ca(&[dir.path().join("other.key").to_str().unwrap()]).output().await.unwrap();
    assert!(!mismatched.status.success(), "a key that does not match the certificate is refused");
    let ok = weir_ca(&[dir.path().join("ca.key").to_str().unwrap()]).output().await.unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let again = weir_ca(&[dir.path().join("ca.key").to_str().unwrap()]).output().await.unwrap();
    assert!(!again.status.success(), "an existing CA is not replaced without --replace");

    let gw = TestGateway::start_with(|c| {
        c.data_dir = data.clone();
        c.listeners.push(tls_listener("tls", ClientAuth::None));
    })
    .await;
    let tls = gw.gateway().local_addr("tls").unwrap();
    let out = tokio::time::timeout(
        WAIT,
        Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &tls.to_string(),
                "-servername",
                "localhost",
                "-verify_return_error",
                "-CAfile",
            ])
            .arg(dir.path().join("ca.crt"))
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Verify return code: 0 (ok)"),
        "the server certificate chains to the imported CA: {text}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_server_certificate_is_renewed_without_a_restart() {
    let (gw, tls, _) = gateway().await;
    let pki = gw.data_dir().join("pki");
    let old = std::fs::read_to_string(pki.join("server.crt")).unwrap();
    assert!(!gw.gateway().refresh_tls().await.unwrap(), "nothing is due");
    // A certificate that is missing (or due, or for other names) is replaced, and the listener serves the new one.
    std::fs::remove_file(pki.join("server.crt")).unwrap();
    assert!(gw.gateway().refresh_tls().await.unwrap());
    let new = std::fs::read_to_string(pki.join("server.crt")).unwrap();
    assert_ne!(old, new);
    let out = tokio::time::timeout(
        WAIT,
        Command::new("openssl")
            .args([
                "s_client",
                "-showcerts",
                "-connect",
                &tls.to_string(),
                "-servername",
                "localhost",
                "-CAfile",
            ])
            .arg(pki.join("ca.crt"))
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let served = String::from_utf8_lossy(&out.stdout);
    let body = |pem: &str| pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>();
    assert!(
        served.lines().filter(|l| !l.starts_with("-----")).collect::<String>().contains(&body(&new)),
        "the renewed certificate is served"
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_identity_can_come_from_a_san_and_a_password_can_be_required_too() {
    let gw = TestGateway::start_with(|c| {
        let mut by_dns = tls_listener("by-dns", ClientAuth::Required);
        by_dns.identity = weir::pki::IdentitySource::DnsSan;
        c.listeners.push(by_dns);
        let mut with_password = tls_listener("with-password", ClientAuth::Required);
        with_password.certificate_password = true;
        c.listeners.push(with_password);
    })
    .await;
    let security = gw.gateway().security().clone();
    security.add_user("alice", "correct horse battery", &["admin".into()], "test").await.unwrap();
    let rule = weir::auth::acl::Rule::new(
        weir::auth::acl::Subject::Anyone,
        weir::auth::acl::Effect::Allow,
        weir::auth::acl::Action::Both,
        "tls/#",
    );
    security.add_rule(&rule, "test").await.unwrap();
    let pki = gw.data_dir().join("pki");
    let ca = CertificateAuthority::load(&pki).unwrap();
    let ca_file = pki.join("ca.crt");

    // Identity from the DNS SAN: the journal records it as the user name.
    let mut request = ClientCertRequest::new(CommonName::new("press-5").unwrap());
    request.sans = vec![weir::pki::SubjectAltName::parse("DNS:press-5.plant").unwrap()];
    let issued = ca.issue_client(&request).unwrap();
    let (cert, key) = (gw.data_dir().join("p5.crt"), gw.data_dir().join("p5.key"));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, issued.key_pem.unwrap()).unwrap();
    let by_dns = gw.gateway().local_addr("by-dns").unwrap();
    let ok =
        mosquitto_pub(by_dns, &ca_file, &["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()])
            .await;
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let journal = gw.gateway().journal().unwrap();
    journal.flush().await;
    let page =
        weir::store::history::query(journal.pool(), &weir::store::history::HistoryQuery::new("tls/test"))
            .await
            .unwrap();
    assert_eq!(page.messages[0].username.as_deref(), Some("press-5.plant"));

    // Certificate and password: the certificate names the user, whose password must also be right.
    let (acert, akey) = client_cert(&ca, gw.data_dir(), "alice", Validity::days(30));
    let (acert, akey) = (acert.to_str().unwrap().to_owned(), akey.to_str().unwrap().to_owned());
    let with_password = gw.gateway().local_addr("with-password").unwrap();
    let both = ["--cert", &acert, "--key", &akey, "-u", "alice", "-P", "correct horse battery"];
    let ok = mosquitto_pub(with_password, &ca_file, &both).await;
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let wrong = ["--cert", &acert, "--key", &akey, "-u", "alice", "-P", "not it"];
    assert!(!mosquitto_pub(with_password, &ca_file, &wrong).await.status.success());
    let none = ["--cert", &acert, "--key", &akey];
    assert!(
        !mosquitto_pub(with_password, &ca_file, &none).await.status.success(),
        "the password is required"
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_server_certificate_carries_the_configured_names() {
    let gw = TestGateway::start_with(|c| {
        c.server_names = weir::config::ServerNames {
            hostname: Some("gw-test".into()),
            dns: vec!["gw.plant.example".into()],
            addresses: vec!["192.0.2.10".parse().unwrap()],
            ..Default::default()
        };
        c.listeners.push(tls_listener("tls", ClientAuth::None));
    })
    .await;
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(gw.data_dir().join("pki/server.crt"))
        .output()
        .await
        .unwrap();
    let sans = String::from_utf8_lossy(&out.stdout);
    for name in [
        "DNS:gw-test",
        "DNS:gw-test.local",
        "DNS:localhost",
        "DNS:gw.plant.example",
        "IP Address:192.0.2.10",
        "IP Address:127.0.0.1",
    ] {
        assert!(sans.contains(name), "{name} in {sans}");
    }
    gw.stop().await;
}

/// This machine's IPv4 addresses on interfaces that are up, other than loopback, as `ip -o -4 addr show up`
/// (iproute2, over netlink) lists them: independent of Weir's own enumeration (getifaddrs).
async fn ipv4_addresses_by_iproute2() -> Vec<String> {
    let out =
        Command::new("ip").args(["-o", "-4", "addr", "show", "up"]).output().await.expect("ip (iproute2)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // `4: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\ ...`
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace().skip_while(|f| *f != "inet");
            fields.next()?;
            let address = fields.next()?.split('/').next()?.to_owned();
            (!address.starts_with("127.")).then_some(address)
        })
        .collect()
}

#[tokio::test]
async fn a_listener_on_all_interfaces_serves_a_certificate_naming_every_interface_address() {
    let gw = TestGateway::start_with(|c| {
        let mut any = tls_listener("any", ClientAuth::None);
        any.bind = "0.0.0.0:0".parse().unwrap();
        c.listeners.push(any);
    })
    .await;
    let port = gw.gateway().local_addr("any").unwrap().port();
    let expected = ipv4_addresses_by_iproute2().await;
    // What the listener serves, fetched and decoded by openssl.
    let served = tokio::time::timeout(
        WAIT,
        Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", "localhost"])
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let text = String::from_utf8_lossy(&served.stdout);
    let begin = text.find("-----BEGIN CERTIFICATE-----").expect("a certificate was served");
    let end = text.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    let pem = gw.data_dir().join("served.crt");
    std::fs::write(&pem, &text[begin..end]).unwrap();
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&pem)
        .output()
        .await
        .unwrap();
    let sans = String::from_utf8_lossy(&out.stdout);
    let named: Vec<&str> =
        sans.split(',').filter_map(|san| san.trim().strip_prefix("IP Address:")).map(str::trim).collect();
    assert!(named.contains(&"127.0.0.1"), "{sans}");
    for address in &expected {
        assert!(named.contains(&address.as_str()), "{address} (from `ip addr`) in {sans}");
    }
    assert!(
        named.iter().all(|a| !a.starts_with("fe80:") && !a.starts_with("FE80:")),
        "no link-local: {sans}"
    );
    gw.stop().await;
}
