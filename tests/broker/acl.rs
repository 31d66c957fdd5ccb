//! Topic access rules enforced on the wire: publish, subscribe, wildcard subscriptions filtered per delivery,
//! retained messages, wills, %u substitution, rule changes applying to connected clients. The matrix runs twice:
//! over TCP with passwords, and over TLS with client certificates whose common name is the user name, driven by
//! hand-written packets over rustls and by mosquitto_pub/sub (libmosquitto over OpenSSL).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::{Raw, TestGateway, WAIT, eventually, packet};
use weir::auth::acl::{Action, Effect, Rule, Subject};
use weir::config::ListenerConfig;
use weir::mqtt::net::Protocol;
use weir::pki::{CertificateAuthority, ClientAuth, ClientCertRequest, CommonName, IdentitySource};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

fn string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend(s.as_bytes());
    out
}

/// A CONNECT with user name and password (v5 when `v5`), optionally with a will on `will_topic`.
fn connect(v5: bool, client: &str, user: &str, password: &str, will_topic: Option<&str>) -> Vec<u8> {
    connect_as(v5, client, Some((user, password)), will_topic)
}

/// A CONNECT with or without credentials (a client certificate proves who the client is).
fn connect_as(
    v5: bool,
    client: &str,
    credentials: Option<(&str, &str)>,
    will_topic: Option<&str>,
) -> Vec<u8> {
    let mut flags = 0x02;
    if credentials.is_some() {
        flags |= 0x80 | 0x40;
    }
    if will_topic.is_some() {
        flags |= 0x04;
    }
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', if v5 { 5 } else { 4 }, flags, 0, 0];
    if v5 {
        body.push(0);
    }
    body.extend(string(client));
    if let Some(topic) = will_topic {
        if v5 {
            body.push(0);
        }
        body.extend(string(topic));
        body.extend(string("bye"));
    }
    if let Some((user, password)) = credentials {
        body.extend(string(user));
        body.extend(string(password));
    }
    packet(0x10, &body)
}

fn subscribe(v5: bool, packet_id: u16, filter: &str) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
    }
    body.extend(string(filter));
    body.push(1);
    packet(0x82, &body)
}

fn publish(v5: bool, packet_id: u16, topic: &str, payload: &str, retain: bool) -> Vec<u8> {
    let mut body = string(topic);
    body.extend(packet_id.to_be_bytes());
    if v5 {
        body.push(0);
    }
    body.extend(payload.as_bytes());
    packet(0x32 | u8::from(retain), &body)
}

/// How the matrix's clients reach the gateway and say who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Net {
    /// Plain TCP; user name and password in CONNECT.
    Tcp,
    /// TLS on a listener that requires client certificates; each client presents one issued by Weir's CA to the
    /// user (common name = user name) and sends no credentials in CONNECT.
    Tls,
}

struct Matrix {
    gw: TestGateway,
    net: Net,
}

impl Matrix {
    /// The gateway with users, roles and rules: `alice` (role `operators`: plant/a/# both ways, but not
    /// publishing plant/a/secret), `root` (role `admin`), anyone may publish under devices/<own name>/.
    async fn start(net: Net) -> Matrix {
        let gw = TestGateway::start_with(|c| {
            c.listeners.iter_mut().for_each(|l| l.allow_anonymous = false);
            c.listeners.push(mtls_listener());
        })
        .await;
        let s = gw.gateway().security();
        s.add_user("alice", "correct horse battery", &["operators".into()], "test").await.unwrap();
        s.add_user("root", "correct horse battery", &["admin".into()], "test").await.unwrap();
        for rule in [
            Rule::new(Subject::Role("operators".into()), Effect::Allow, Action::Both, "plant/a/#"),
            Rule::new(Subject::User("alice".into()), Effect::Deny, Action::Publish, "plant/a/secret"),
            Rule::new(Subject::Anyone, Effect::Allow, Action::Publish, "devices/%u/#"),
        ] {
            s.add_rule(&rule, "test").await.unwrap();
        }
        Matrix { gw, net }
    }

    fn tls_addr(&self) -> SocketAddr {
        self.gw.gateway().local_addr("mtls").unwrap()
    }

    /// Opens a connection for `user` and sends its CONNECT.
    async fn open(&self, v5: bool, client: &str, user: &str, will_topic: Option<&str>) -> Raw {
        match self.net {
            Net::Tcp => {
                let mut c = Raw::connect(self.gw.tcp).await;
                c.send(&connect(v5, client, user, "correct horse battery", will_topic)).await;
                c
            }
            Net::Tls => {
                let pki = self.gw.data_dir().join("pki");
                let (cert, key) = issue(&pki, user);
                let ca_pem = std::fs::read_to_string(pki.join("ca.crt")).unwrap();
                let mut c = Raw::connect_tls(self.tls_addr(), &ca_pem, Some((&cert, &key))).await;
                c.send(&connect_as(v5, client, None, will_topic)).await;
                c
            }
        }
    }

    async fn login(&self, v5: bool, client: &str, user: &str) -> Raw {
        let mut c = self.open(v5, client, user, None).await;
        let ack = c.read_packet().await;
        assert_eq!(ack[3], 0, "{user} logs in over {:?}: {ack:?}", self.net);
        c
    }
}

fn mtls_listener() -> ListenerConfig {
    ListenerConfig {
        name: "mtls".into(),
        protocol: Protocol::Tls,
        bind: "127.0.0.1:0".parse().unwrap(),
        ws_path: String::new(),
        allow_anonymous: false,
        client_certificates: ClientAuth::Required,
        identity: IdentitySource::CommonName,
        certificate_password: false,
    }
}

/// A client certificate and key (PEM) for `user`, issued by the gateway's CA in `pki`.
fn issue(pki: &Path, user: &str) -> (String, String) {
    let ca = CertificateAuthority::load(pki).unwrap();
    let issued = ca.issue_client(&ClientCertRequest::new(CommonName::new(user).unwrap())).unwrap();
    (issued.cert_pem, issued.key_pem.unwrap())
}

/// The topic of a PUBLISH (short packets: a one-byte remaining length).
fn topic_of(p: &[u8]) -> String {
    let len = usize::from(u16::from_be_bytes([p[2], p[3]]));
    String::from_utf8_lossy(&p[4..4 + len]).into_owned()
}

#[tokio::test]
async fn publish_and_subscribe_follow_the_rules_in_both_protocol_versions() {
    publish_and_subscribe_matrix(Net::Tcp).await;
}

#[tokio::test]
async fn publish_and_subscribe_follow_the_rules_over_tls_with_client_certificates() {
    publish_and_subscribe_matrix(Net::Tls).await;
}

async fn publish_and_subscribe_matrix(net: Net) {
    let m = Matrix::start(net).await;
    let mut root = m.login(true, "root-1", "root").await;
    root.send(&subscribe(true, 1, "#")).await;
    assert_eq!(root.read_packet().await[5], 1, "admin may subscribe to everything");

    let mut v5 = m.login(true, "alice-5", "alice").await;
    for (id, topic, allowed) in [
        (1u16, "plant/a/x", true),
        (2, "plant/b/x", false),
        (3, "plant/a/secret", false),
        (4, "devices/alice/t", true),
        (5, "devices/bob/t", false),
    ] {
        v5.send(&publish(true, id, topic, "v5", false)).await;
        let ack = v5.read_packet().await;
        let code = ack.get(4).copied().unwrap_or(0);
        assert_eq!(code == 0, allowed, "{topic}: {ack:?}");
        if !allowed {
            assert_eq!(code, 0x87, "{topic}");
        }
    }
    // 3.1.1 cannot refuse a publish: it is acknowledged and dropped.
    let mut v3 = m.login(false, "alice-3", "alice").await;
    v3.send(&publish(false, 9, "plant/b/x", "v3", false)).await;
    assert_eq!(v3.read_packet().await, [0x40, 2, 0, 9]);
    v3.send(&publish(false, 10, "plant/a/y", "v3", false)).await;
    v3.read_packet().await;
    // What root saw: only what was allowed, in order.
    let mut seen = Vec::new();
    for _ in 0..3 {
        let p = root.read_packet().await;
        seen.push(topic_of(&p));
    }
    assert_eq!(seen, ["plant/a/x", "devices/alice/t", "plant/a/y"]);

    // SUBSCRIBE: refused per filter (v5 0x87, 3.1.1 0x80); allowed ones granted.
    v5.send(&subscribe(true, 7, "plant/b/#")).await;
    assert_eq!(v5.read_packet().await[5], 0x87);
    v3.send(&subscribe(false, 8, "plant/b/#")).await;
    assert_eq!(v3.read_packet().await, [0x90, 3, 0, 8, 0x80]);
    v3.send(&subscribe(false, 11, "plant/a/#")).await;
    assert_eq!(v3.read_packet().await, [0x90, 3, 0, 11, 1]);
    m.gw.stop().await;
}

#[tokio::test]
async fn a_wildcard_subscription_gets_only_what_the_user_may_read_retained_included() {
    wildcard_and_retained_matrix(Net::Tcp).await;
}

#[tokio::test]
async fn a_wildcard_subscription_over_tls_gets_only_what_the_certificates_user_may_read() {
    wildcard_and_retained_matrix(Net::Tls).await;
}

async fn wildcard_and_retained_matrix(net: Net) {
    let m = Matrix::start(net).await;
    let mut root = m.login(true, "root-1", "root").await;
    for (id, topic) in [(1u16, "plant/a/r"), (2, "plant/b/r")] {
        root.send(&publish(true, id, topic, "retained", true)).await;
        root.read_packet().await;
    }
    let mut alice = m.login(true, "alice-1", "alice").await;
    alice.send(&subscribe(true, 1, "#")).await;
    assert_eq!(alice.read_packet().await[5], 1, "# is granted: something under it is readable");
    let got = alice.read_packet().await;
    assert_eq!(topic_of(&got), "plant/a/r", "only the readable retained message");
    for (id, topic) in [(3u16, "plant/b/live"), (4, "plant/a/live")] {
        root.send(&publish(true, id, topic, "now", false)).await;
        root.read_packet().await;
    }
    let got = alice.read_packet().await;
    assert_eq!(topic_of(&got), "plant/a/live", "plant/b/live was not delivered");

    // A rule added now applies to the subscription that already exists.
    m.gw.gateway()
        .security()
        .add_rule(
            &Rule::new(Subject::Role("operators".into()), Effect::Deny, Action::Subscribe, "plant/a/live"),
            "test",
        )
        .await
        .unwrap();
    for (id, topic) in [(5u16, "plant/a/live"), (6, "plant/a/other")] {
        root.send(&publish(true, id, topic, "later", false)).await;
        root.read_packet().await;
    }
    let got = alice.read_packet().await;
    assert_eq!(topic_of(&got), "plant/a/other", "the newly denied topic is no longer delivered");
    m.gw.stop().await;
}

#[tokio::test]
async fn a_will_on_a_topic_the_user_may_not_publish_is_refused_at_connect() {
    will_matrix(Net::Tcp).await;
}

#[tokio::test]
async fn a_will_over_tls_on_a_topic_the_certificates_user_may_not_publish_is_refused_at_connect() {
    will_matrix(Net::Tls).await;
}

async fn will_matrix(net: Net) {
    let m = Matrix::start(net).await;
    let mut c = m.open(true, "alice-w", "alice", Some("plant/b/will")).await;
    let reply = c.read_to_close().await;
    assert_eq!((reply[0], reply[3]), (0x20, 0x87), "{reply:?}");
    let mut c = m.open(false, "alice-w3", "alice", Some("plant/b/will")).await;
    assert_eq!(c.read_to_close().await, [0x20, 2, 0, 5]);
    let mut ok = m.open(true, "alice-w5", "alice", Some("plant/a/will")).await;
    assert_eq!(ok.read_packet().await[3], 0);
    m.gw.stop().await;
}

#[tokio::test]
async fn weir_acl_manages_rules_with_clear_errors() {
    let gw = TestGateway::start().await;
    let run = |args: &[&str]| {
        let mut cmd = Command::new(WEIR);
        cmd.arg("acl").args(args).arg("--data-dir").arg(gw.data_dir());
        cmd
    };
    let out = tokio::time::timeout(WAIT, run(&["add", "role:ops", "allow", "both", "plant/#"]).output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (args, needle) in [
        (&["add", "group:x", "allow", "both", "a"][..], "subject"),
        (&["add", "anyone", "maybe", "both", "a"][..], "effect"),
        (&["add", "anyone", "allow", "read", "a"][..], "action"),
        (&["add", "anyone", "allow", "both", "a/#/b"][..], "invalid access rule"),
        (&["del", "99"][..], "no access rule 99"),
    ] {
        let out = tokio::time::timeout(WAIT, run(args).output()).await.unwrap().unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = tokio::time::timeout(WAIT, run(&["list"]).output()).await.unwrap().unwrap();
    let listing = String::from_utf8(out.stdout).unwrap();
    assert_eq!(listing.lines().count(), 1, "{listing}");
    assert!(listing.contains("\"filter\":\"plant/#\""));
    let security = gw.gateway().security().clone();
    eventually("the gateway loads the rule", || async { security.list_rules().await.unwrap().len() == 1 })
        .await;
    gw.stop().await;
}

#[tokio::test]
async fn a_mosquitto_password_file_and_acl_file_are_imported_and_work() {
    let gw =
        TestGateway::start_with(|c| c.listeners.iter_mut().for_each(|l| l.allow_anonymous = false)).await;
    let dir = gw.data_dir().to_owned();
    let passwd = dir.join("passwd");
    // A real Mosquitto password file, written by Mosquitto's own tool.
    for (i, (user, password)) in
        [("plc1", "S3cure-Pump#4"), ("hmi", "Hmi-Panel-2024")].into_iter().enumerate()
    {
        let mut cmd = Command::new("mosquitto_passwd");
        if i == 0 {
            cmd.arg("-c");
        }
        let out = cmd
            .arg("-b")
            .arg(&passwd)
            .args([user, password])
            .output()
            .await
            .expect("mosquitto_passwd (run .ci/setup)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let acl = dir.join("acl");
    std::fs::write(&acl, "# plant ACL\nuser plc1\ntopic readwrite plant/pump/#\n\nuser hmi\ntopic read plant/#\ntopic write plant/cmd/#\n\npattern write devices/%u/status\n").unwrap();
    let import = |args: Vec<std::ffi::OsString>| {
        let mut cmd = Command::new(WEIR);
        cmd.args(["import", "mosquitto", "--data-dir"]).arg(gw.data_dir()).args(args);
        cmd
    };
    let out = tokio::time::timeout(
        WAIT,
        import(vec!["--passwd".into(), passwd.clone().into(), "--acl".into(), acl.clone().into()]).output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("imported 2 users"));

    let security = gw.gateway().security().clone();
    eventually("the imported users are known", || async { security.knows("plc1") && security.knows("hmi") })
        .await;
    let mut hmi = Raw::connect(gw.tcp).await;
    hmi.send(&connect(true, "hmi-1", "hmi", "Hmi-Panel-2024", None)).await;
    assert_eq!(hmi.read_packet().await[3], 0, "the Mosquitto hash verifies as it is");
    hmi.send(&subscribe(true, 1, "plant/#")).await;
    assert_eq!(hmi.read_packet().await[5], 1);
    let mut plc = Raw::connect(gw.tcp).await;
    plc.send(&connect(false, "plc1-1", "plc1", "S3cure-Pump#4", None)).await;
    assert_eq!(plc.read_packet().await, [0x20, 2, 0, 0]);
    for (id, topic) in [(1u16, "plant/cmd/x"), (2, "devices/plc1/status"), (3, "plant/pump/speed")] {
        plc.send(&publish(false, id, topic, "1", false)).await;
        plc.read_packet().await;
    }
    let got = hmi.read_packet().await;
    assert_eq!(
        topic_of(&got),
        "plant/pump/speed",
        "plc1 may only write plant/pump/# (and its status, unread)"
    );
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE username = 'hmi'")
        .fetch_one(&weir::store::open_for_reading(&dir, weir::store::Database::Config).await.unwrap())
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$"), "upgraded at login: {hash}");

    // Importing again changes nothing and says why; so does a malformed file.
    let out = tokio::time::timeout(WAIT, import(vec!["--passwd".into(), passwd.into()]).output())
        .await
        .unwrap()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    std::fs::write(&acl, "user x\ntopic sideways a/b\n").unwrap();
    let out =
        tokio::time::timeout(WAIT, import(vec!["--acl".into(), acl.into()]).output()).await.unwrap().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(security.list_rules().await.unwrap().len(), 4, "the first import's rules only");
    gw.stop().await;
}

/// mosquitto_pub or mosquitto_sub connecting to the matrix's TLS listener with a certificate issued to `user`.
fn mosquitto(m: &Matrix, tool: &str, user: &str, args: &[&str]) -> Command {
    let pki = m.gw.data_dir().join("pki");
    let (cert, key) = issue(&pki, user);
    let (cert_file, key_file): (PathBuf, PathBuf) =
        (m.gw.data_dir().join(format!("{user}.crt")), m.gw.data_dir().join(format!("{user}.key")));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let mut cmd = Command::new(tool);
    cmd.args(["-h", "localhost", "-p", &m.tls_addr().port().to_string(), "--cafile"])
        .arg(pki.join("ca.crt"))
        .arg("--cert")
        .arg(cert_file)
        .arg("--key")
        .arg(key_file)
        .args(args)
        .kill_on_drop(true);
    cmd
}

async fn run(mut cmd: Command) -> std::process::Output {
    tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("mosquitto client hung")
        .expect("mosquitto clients (run .ci/setup)")
}

/// A `mosquitto_sub -v` whose printed lines (`<topic> <payload>`) the test reads one by one.
struct Subscriber {
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    _child: tokio::process::Child,
}

impl Subscriber {
    async fn start(m: &Matrix, user: &str, args: &[&str]) -> Subscriber {
        let mut cmd = mosquitto(m, "mosquitto_sub", user, args);
        let mut child = cmd.arg("-v").stdout(std::process::Stdio::piped()).spawn().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Subscriber { lines, _child: child }
    }

    async fn next(&mut self) -> String {
        tokio::time::timeout(WAIT, self.lines.next_line()).await.expect("nothing received").unwrap().unwrap()
    }
}

#[tokio::test]
async fn mosquitto_clients_over_tls_meet_the_same_rules_as_their_certificates_users() {
    let m = Matrix::start(Net::Tls).await;
    let ok = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    // Retained messages by the admin: one alice may read, one she may not.
    for topic in ["plant/a/r", "plant/b/r"] {
        ok(&run(mosquitto(
            &m,
            "mosquitto_pub",
            "root",
            &["-V", "mqttv5", "-q", "1", "-r", "-t", topic, "-m", "kept"],
        ))
        .await);
    }
    let mut root = Subscriber::start(&m, "root", &["-V", "mqttv5", "-q", "1", "-t", "#"]).await;
    let mut retained = vec![root.next().await, root.next().await];
    retained.sort();
    assert_eq!(retained, ["plant/a/r kept", "plant/b/r kept"], "the admin gets both");
    // A new # subscription of alice's gets only the retained message she may read.
    let mut alice = Subscriber::start(&m, "alice", &["-V", "mqttv5", "-q", "1", "-t", "#"]).await;
    assert_eq!(alice.next().await, "plant/a/r kept");

    // Publishing as alice: allowed and refused (v5: PUBACK 0x87; 3.1.1: acknowledged and dropped).
    let publish = |version: &'static str, topic: &'static str, payload: &'static str| {
        run(mosquitto(&m, "mosquitto_pub", "alice", &["-V", version, "-q", "1", "-t", topic, "-m", payload]))
    };
    ok(&publish("mqttv5", "plant/a/x", "v5").await);
    let refused = publish("mqttv5", "plant/b/x", "v5").await;
    let said = String::from_utf8_lossy(&refused.stderr).to_lowercase();
    assert!(said.contains("not authori"), "mosquitto_pub reports the refusal: {said} ({:?})", refused.status);
    ok(&publish("mqttv311", "plant/b/y", "v3").await);
    ok(&publish("mqttv311", "plant/a/y", "v3").await);
    ok(&publish("mqttv5", "devices/alice/t", "mine").await);
    // The admin publishes live messages, one alice may not read.
    for topic in ["plant/b/live", "plant/a/live"] {
        ok(&run(mosquitto(
            &m,
            "mosquitto_pub",
            "root",
            &["-V", "mqttv5", "-q", "1", "-t", topic, "-m", "now"],
        ))
        .await);
    }
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(root.next().await);
    }
    assert_eq!(
        seen,
        ["plant/a/x v5", "plant/a/y v3", "devices/alice/t mine", "plant/b/live now", "plant/a/live now"],
        "the admin sees every accepted publish and none of the refused ones"
    );
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(alice.next().await);
    }
    assert_eq!(
        seen,
        ["plant/a/x v5", "plant/a/y v3", "plant/a/live now"],
        "alice's # sees only what she may read"
    );

    // Subscribing to what alice may not read is refused, in both versions.
    for version in ["mqttv5", "mqttv311"] {
        let out = run(mosquitto(
            &m,
            "mosquitto_sub",
            "alice",
            &["-V", version, "-t", "plant/b/#", "-C", "1", "-W", "5"],
        ))
        .await;
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("denied"), "{version}: {said} ({:?})", out.status);
    }
    // A will on a topic alice may not publish is refused at CONNECT, in both versions.
    for version in ["mqttv5", "mqttv311"] {
        let out = run(mosquitto(
            &m,
            "mosquitto_pub",
            "alice",
            &[
                "-V",
                version,
                "--will-topic",
                "plant/b/will",
                "--will-payload",
                "bye",
                "-t",
                "plant/a/x",
                "-m",
                "x",
            ],
        ))
        .await;
        assert!(!out.status.success(), "{version}");
        let said = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(said.contains("not authori"), "{version}: {said}");
    }
    m.gw.stop().await;
}
