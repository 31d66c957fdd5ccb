//! Topic access rules enforced on the wire: publish, subscribe, wildcard subscriptions filtered per delivery,
//! retained messages, wills, %u substitution, rule changes applying to connected clients.

use tokio::process::Command;

use crate::support::{Raw, TestGateway, WAIT, eventually, packet};
use weir::auth::acl::{Action, Effect, Rule, Subject};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

fn string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend(s.as_bytes());
    out
}

/// A CONNECT with user name and password (v5 when `v5`), optionally with a will on `will_topic`.
fn connect(v5: bool, client: &str, user: &str, password: &str, will_topic: Option<&str>) -> Vec<u8> {
    let mut flags = 0x02 | 0x80 | 0x40;
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
    body.extend(string(user));
    body.extend(string(password));
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

async fn login(gw: &TestGateway, v5: bool, client: &str, user: &str) -> Raw {
    let mut c = Raw::connect(gw.tcp).await;
    c.send(&connect(v5, client, user, "correct horse battery", None)).await;
    let ack = c.read_packet().await;
    assert_eq!(ack[3], 0, "{user} logs in: {ack:?}");
    c
}

/// The topic of a PUBLISH (short packets: a one-byte remaining length).
fn topic_of(p: &[u8]) -> String {
    let len = usize::from(u16::from_be_bytes([p[2], p[3]]));
    String::from_utf8_lossy(&p[4..4 + len]).into_owned()
}

async fn setup() -> TestGateway {
    let gw =
        TestGateway::start_with(|c| c.listeners.iter_mut().for_each(|l| l.allow_anonymous = false)).await;
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
    gw
}

#[tokio::test]
async fn publish_and_subscribe_follow_the_rules_in_both_protocol_versions() {
    let gw = setup().await;
    let mut root = login(&gw, true, "root-1", "root").await;
    root.send(&subscribe(true, 1, "#")).await;
    assert_eq!(root.read_packet().await[5], 1, "admin may subscribe to everything");

    let mut v5 = login(&gw, true, "alice-5", "alice").await;
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
    let mut v3 = login(&gw, false, "alice-3", "alice").await;
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
    gw.stop().await;
}

#[tokio::test]
async fn a_wildcard_subscription_gets_only_what_the_user_may_read_retained_included() {
    let gw = setup().await;
    let mut root = login(&gw, true, "root-1", "root").await;
    for (id, topic) in [(1u16, "plant/a/r"), (2, "plant/b/r")] {
        root.send(&publish(true, id, topic, "retained", true)).await;
        root.read_packet().await;
    }
    let mut alice = login(&gw, true, "alice-1", "alice").await;
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
    gw.gateway()
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
    gw.stop().await;
}

#[tokio::test]
async fn a_will_on_a_topic_the_user_may_not_publish_is_refused_at_connect() {
    let gw = setup().await;
    let mut c = Raw::connect(gw.tcp).await;
    c.send(&connect(true, "alice-w", "alice", "correct horse battery", Some("plant/b/will"))).await;
    let reply = c.read_to_close().await;
    assert_eq!((reply[0], reply[3]), (0x20, 0x87), "{reply:?}");
    let mut c = Raw::connect(gw.tcp).await;
    c.send(&connect(false, "alice-w3", "alice", "correct horse battery", Some("plant/b/will"))).await;
    assert_eq!(c.read_to_close().await, [0x20, 2, 0, 5]);
    let mut ok = Raw::connect(gw.tcp).await;
    ok.send(&connect(true, "alice-w5", "alice", "correct horse battery", Some("plant/a/will"))).await;
    assert_eq!(ok.read_packet().await[3], 0);
    gw.stop().await;
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
