//! Presence that survives the gateway's own failure: after a kill -9 the wills of the clients that were connected
//! are published exactly once (clean and persistent sessions, with and without will delay), their presence says
//! `lost` ("gateway restart") and the timeline records it; configured birth and death messages, where the access
//! rules allow them.

use std::collections::BTreeMap;
use std::path::Path;

use tokio::process::Command;

use crate::durability::{persistent_connect, publish, start_weir};
use crate::support::{Raw, TestGateway, connect_v311, eventually, packet};
use weir::auth::acl::{Action, Effect, Rule, Subject};
use weir::ops::presence::{NewPresenceRule, PresenceSelection};
use weir::ops::{Actor, Ops};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// A v3.1.1 CONNECT, clean session, with a QoS 1 will `gone` on `will/<id>`.
fn connect_v311_will(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02 | 0x04 | 0x08, 0, 0];
    for field in [client_id.as_bytes(), format!("will/{client_id}").as_bytes(), b"gone"] {
        body.extend((field.len() as u16).to_be_bytes());
        body.extend(field);
    }
    packet(0x10, &body)
}

/// A v3.1.1 CONNECT, clean session, with a user name and password.
fn connect_as(client_id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02 | 0x80 | 0x40, 0, 0];
    for field in [client_id, user, password] {
        body.extend((field.len() as u16).to_be_bytes());
        body.extend(field.as_bytes());
    }
    packet(0x10, &body)
}

/// A SUBSCRIBE (packet id 1) to `filter` at QoS 1.
fn subscribe(filter: &str) -> Vec<u8> {
    let mut body = vec![0, 1];
    body.extend((filter.len() as u16).to_be_bytes());
    body.extend(filter.as_bytes());
    body.push(1);
    packet(0x82, &body)
}

/// Topic, packet id (0 for QoS 0) and payload of a v3.1.1 PUBLISH.
fn parse_publish(p: &[u8]) -> (String, u16, Vec<u8>) {
    assert_eq!(p[0] & 0xF0, 0x30, "a PUBLISH: {p:?}");
    let mut at = 1;
    while p[at] & 0x80 != 0 {
        at += 1;
    }
    at += 1;
    let len = usize::from(u16::from_be_bytes([p[at], p[at + 1]]));
    let topic = String::from_utf8(p[at + 2..at + 2 + len].to_vec()).unwrap();
    at += 2 + len;
    let mut id = 0;
    if p[0] & 0x06 != 0 {
        id = u16::from_be_bytes([p[at], p[at + 1]]);
        at += 2;
    }
    (topic, id, p[at..].to_vec())
}

/// Reads PUBLISH packets (acknowledging QoS 1) until one on `last`; returns how often each topic came before it.
async fn count_until(client: &mut Raw, last: &str) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    loop {
        let (topic, id, _) = parse_publish(&client.read_packet().await);
        if id != 0 {
            client.send(&packet(0x40, &id.to_be_bytes())).await;
        }
        if topic == last {
            return seen;
        }
        *seen.entry(topic).or_insert(0) += 1;
    }
}

/// Publishes `topic` at QoS 1 from a client of its own and waits for the acknowledgement: once acknowledged,
/// everything the gateway was told before is committed too (one ordered writer).
async fn publish_acked(addr: std::net::SocketAddr, topic: &str) {
    let mut p = Raw::connect(addr).await;
    p.send(&connect_v311(&format!("pub-{}", topic.replace('/', "-")), true, 0)).await;
    p.read_packet().await;
    p.send(&publish(1, 1, topic, b"x")).await;
    assert_eq!(p.read_packet().await[0], 0x40);
}

/// `weir presence ...` on the data directory; returns its standard output.
async fn weir_presence(data: &Path, args: &[&str]) -> String {
    let out =
        Command::new(WEIR).arg("presence").args(args).arg("--data-dir").arg(data).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn after_kill_9_wills_are_published_exactly_once_and_presence_says_lost() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut child, addr) = start_weir(&data, "").await;
    // A persistent session that collects wills, offline (disconnected normally) when the gateway dies.
    let mut watcher = Raw::connect(addr).await;
    watcher.send(&connect_v311("watcher", false, 0)).await;
    watcher.read_packet().await;
    watcher.send(&subscribe("will/#")).await;
    assert_eq!(watcher.read_packet().await[0], 0x90);
    watcher.send(&[0xE0, 0]).await;
    watcher.read_to_close().await;
    // Connected when the gateway dies: clean sessions (3.1.1; 5.0 with a will delay, which the session's end
    // cuts short), persistent sessions with and without a will delay, one that comes back within its delay, and
    // one without a will.
    let mut held = Vec::new();
    for connect in [
        connect_v311_will("clean-311"),
        persistent_connect("clean-v5", 0, Some(30)),
        persistent_connect("pers-0", 3600, Some(0)),
        persistent_connect("pers-2", 3600, Some(2)),
        persistent_connect("back", 3600, Some(3600)),
        connect_v311("quiet", true, 0),
    ] {
        let mut c = Raw::connect(addr).await;
        c.send(&connect).await;
        assert_eq!(c.read_packet().await[0], 0x20);
        held.push(c);
    }
    publish_acked(addr, "barrier/1").await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    drop(held);

    let (mut child, addr) = start_weir(&data, "").await;
    // Back within its will delay: its will never comes.
    let mut back = Raw::connect(addr).await;
    back.send(&persistent_connect("back", 3600, None)).await;
    assert_eq!(back.read_packet().await[2], 1, "session present");
    // Presence, restored and corrected.
    let mut observer = Raw::connect(addr).await;
    observer.send(&connect_v311("observer", true, 0)).await;
    observer.read_packet().await;
    observer.send(&subscribe("$SYS/weir/clients/+/presence")).await;
    observer.read_packet().await;
    let mut presence = BTreeMap::new();
    // Retained messages come in topic order: the watcher's is the last.
    while !presence.contains_key("watcher") {
        let (topic, id, payload) = parse_publish(&observer.read_packet().await);
        if id != 0 {
            observer.send(&packet(0x40, &id.to_be_bytes())).await;
        }
        let client = topic.split('/').nth(3).unwrap().to_owned();
        let value: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        presence.insert(client, value);
    }
    for client in ["clean-311", "clean-v5", "pers-0", "pers-2", "quiet"] {
        assert_eq!(presence[client]["state"], "lost", "{client}: {presence:?}");
        assert_eq!(presence[client]["reason"], "gateway restart", "{client}");
    }
    assert_eq!(presence["watcher"]["state"], "offline", "restored as it was");
    assert_eq!(presence["back"]["state"], "online");
    // The watcher's session kept the wills published at start-up; the delayed one comes after its delay.
    let mut watcher = Raw::connect(addr).await;
    watcher.send(&connect_v311("watcher", false, 0)).await;
    watcher.read_packet().await;
    let mut seen = count_until(&mut watcher, "will/pers-2").await;
    *seen.entry("will/pers-2".into()).or_insert(0) += 1;
    publish_acked(addr, "will/marker").await;
    for (topic, n) in count_until(&mut watcher, "will/marker").await {
        *seen.entry(topic).or_insert(0) += n;
    }
    let expected: BTreeMap<String, usize> =
        ["will/clean-311", "will/clean-v5", "will/pers-0", "will/pers-2"].map(|t| (t.to_owned(), 1)).into();
    assert_eq!(seen, expected, "each will exactly once, none for the client that came back");
    // The timeline records the loss.
    let history = weir_presence(&data, &["history", "--client", "clean-311"]).await;
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 2, "{history}");
    assert!(lines[0].contains("\tclean-311\tlost\tgateway restart\t"), "{history}");
    assert!(lines[1].contains("\tclean-311\tonline\t-\t-\t127.0.0.1:"), "{history}");
    let uptime = weir_presence(&data, &["uptime", "--client", "pers-0", "--since", "1h"]).await;
    assert!(uptime.lines().any(|l| l.starts_with("pers-0\t") && l.ends_with("\t1\t1\toffline")), "{uptime}");

    // Again: nothing is published a second time.
    watcher.send(&[0xE0, 0]).await;
    watcher.read_to_close().await;
    publish_acked(addr, "barrier/2").await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    drop((back, observer));
    let (_child, addr) = start_weir(&data, "").await;
    let mut watcher = Raw::connect(addr).await;
    watcher.send(&connect_v311("watcher", false, 0)).await;
    watcher.read_packet().await;
    publish_acked(addr, "will/marker").await;
    let seen = count_until(&mut watcher, "will/marker").await;
    assert!(seen.is_empty(), "no will again after a second restart: {seen:?}");
    let history = weir_presence(&data, &["history", "--client", "clean-311"]).await;
    assert_eq!(history.lines().count(), 2, "lost once: {history}");
    let history = weir_presence(&data, &["history", "--client", "back", "--oldest-first"]).await;
    let states: Vec<&str> = history.lines().map(|l| l.split('\t').nth(2).unwrap()).collect();
    assert_eq!(states, ["online", "lost", "online", "lost"], "{history}");
}

#[tokio::test]
async fn birth_and_death_messages_follow_their_rules_and_the_acl() {
    let gw =
        TestGateway::start_with(|c| c.listeners.iter_mut().for_each(|l| l.allow_anonymous = false)).await;
    let security = gw.gateway().security().clone();
    security.add_user("alice", "pw-alice-123", &["sensors".into()], "test").await.unwrap();
    security.add_user("bob", "pw-bob-12345", &[], "test").await.unwrap();
    security.add_user("root", "pw-root-1234", &["admin".into()], "test").await.unwrap();
    for (subject, filter) in
        [(Subject::Role("sensors".into()), "plant/#"), (Subject::User("bob".into()), "bob/#")]
    {
        security.add_rule(&Rule::new(subject, Effect::Allow, Action::Publish, filter), "test").await.unwrap();
    }
    let ops = Ops::with(gw.data_dir(), security.clone());
    let rule = |event: &str, matcher: &str, topic: &str, payload: &str| NewPresenceRule {
        matcher: matcher.into(),
        event: event.into(),
        topic: topic.into(),
        payload: payload.into(),
        qos: 1,
        retain: true,
    };
    for r in [
        rule("birth", "role:sensors", "plant/%c/state", r#"{"online":true,"user":"%u","ts":%t}"#),
        rule("death", "role:sensors", "plant/%c/state", r#"{"online":false,"ts":%t}"#),
        // Bob may not publish under plant/: his birth there is not published.
        rule("birth", "user:b*", "plant/%c/state", "bob is here"),
        rule("birth", "user:b*", "bob/%c/hello", "hello from %u"),
    ] {
        ops.add_presence_rule(&r, &Actor::new("test")).await.unwrap();
    }
    let broker = gw.gateway().broker().clone();
    eventually("the rules applied", || {
        let broker = broker.clone();
        async move { broker.presence_rules().len() == 4 }
    })
    .await;

    let mut observer = Raw::connect(gw.tcp).await;
    observer.send(&connect_as("observer", "root", "pw-root-1234")).await;
    assert_eq!(observer.read_packet().await, [0x20, 2, 0, 0]);
    for filter in ["plant/#", "bob/#", "$SYS/weir/clients/+/presence"] {
        observer.send(&subscribe(filter)).await;
        observer.read_packet().await;
    }
    let mut next = async || {
        loop {
            let (topic, id, payload) = parse_publish(&observer.read_packet().await);
            if id != 0 {
                observer.send(&packet(0x40, &id.to_be_bytes())).await;
            }
            if !topic.starts_with("$SYS/") || topic.contains("sensor-2") {
                return (topic, String::from_utf8(payload).unwrap());
            }
        }
    };

    // Birth on connect, death on a normal disconnect.
    let mut alice = Raw::connect(gw.tcp).await;
    alice.send(&connect_as("sensor-1", "alice", "pw-alice-123")).await;
    assert_eq!(alice.read_packet().await, [0x20, 2, 0, 0]);
    let (topic, payload) = next().await;
    assert_eq!(topic, "plant/sensor-1/state");
    let value: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!((value["online"].as_bool(), value["user"].as_str()), (Some(true), Some("alice")));
    assert!(value["ts"].as_i64().unwrap() > 1_700_000_000_000, "{payload}");
    alice.send(&[0xE0, 0]).await;
    let (topic, payload) = next().await;
    assert_eq!(topic, "plant/sensor-1/state");
    assert!(payload.starts_with(r#"{"online":false,"ts":"#), "{payload}");

    // Bob's births: only where he may publish himself (the forbidden one comes first in rule order).
    let mut bob = Raw::connect(gw.tcp).await;
    bob.send(&connect_as("bob-1", "bob", "pw-bob-12345")).await;
    assert_eq!(bob.read_packet().await, [0x20, 2, 0, 0]);
    assert_eq!(next().await, ("bob/bob-1/hello".to_owned(), "hello from bob".to_owned()));

    // A lost connection: the broker's presence says lost, and no death is published.
    let mut sensor = Raw::connect(gw.tcp).await;
    sensor.send(&connect_as("sensor-2", "alice", "pw-alice-123")).await;
    sensor.read_packet().await;
    let (topic, payload) = next().await;
    assert!(topic.ends_with("sensor-2/presence") && payload.contains("online"), "{topic} {payload}");
    assert_eq!(next().await.0, "plant/sensor-2/state");
    drop(sensor);
    let (topic, payload) = next().await;
    assert!(topic.ends_with("sensor-2/presence") && payload.contains("\"lost\""), "{topic} {payload}");
    let mut root = Raw::connect(gw.tcp).await;
    root.send(&connect_as("root-pub", "root", "pw-root-1234")).await;
    root.read_packet().await;
    root.send(&publish(1, 1, "plant/marker", b"m")).await;
    assert_eq!(next().await.0, "plant/marker", "no death for a lost client");

    // The timeline, through the operations layer.
    let journal = gw.gateway().journal().unwrap().clone();
    journal.flush().await;
    let selection = PresenceSelection { client: Some("sensor-1".into()), ..Default::default() };
    let events = weir::ops::presence::history(journal.pool(), &selection, 10, true).await.unwrap();
    let states: Vec<(&str, Option<&str>)> =
        events.iter().map(|e| (e.state.as_str(), e.username.as_deref())).collect();
    assert_eq!(states, [("online", Some("alice")), ("offline", Some("alice"))]);
    drop(bob);
    gw.stop().await;
}

/// MQTT 5 will properties survive a kill -9 with the durable wills (of a clean session, kept with its presence,
/// and of a persistent session, kept with the session) and are published with the will after the restart.
#[tokio::test]
async fn v5_will_properties_survive_kill_9_and_are_published_with_the_will() {
    use crate::clients::v5::{Client, LastWill, LastWillProperties, QoS, options};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut child, addr) = start_weir(&data, "").await;
    // A persistent v5 session that collects wills, offline when the gateway dies.
    let watcher_options = |port: u16| {
        let mut o = options("props-watcher", port);
        o.set_clean_start(false).set_session_expiry_interval(Some(3600));
        o
    };
    let (mut watcher, _) = Client::connect(watcher_options(addr.port())).await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await;
    watcher.client.disconnect().await.unwrap();
    watcher.closed().await;

    let properties = |client: &str| LastWillProperties {
        delay_interval: None,
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(600),
        content_type: Some("application/json".into()),
        response_topic: Some(format!("reply/{client}")),
        correlation_data: Some(bytes::Bytes::from(format!("corr-{client}"))),
        user_properties: vec![("site".into(), "north".into()), ("client".into(), client.into())],
    };
    let mut held = Vec::new();
    for (client, expiry) in [("props-clean", None), ("props-pers", Some(3600))] {
        let mut o = options(client, addr.port());
        o.set_session_expiry_interval(expiry);
        let will = format!("will/{client}");
        o.set_last_will(LastWill::new(
            will,
            "{\"gone\":true}",
            QoS::AtLeastOnce,
            false,
            Some(properties(client)),
        ));
        held.push(Client::connect(o).await.0);
    }
    publish_acked(addr, "barrier/props").await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    for c in held {
        c.kill().await;
    }

    let (_child, addr) = start_weir(&data, "").await;
    let (mut watcher, ack) = Client::connect(watcher_options(addr.port())).await;
    assert!(ack.session_present);
    let mut wills = BTreeMap::new();
    while wills.len() < 2 {
        let p = watcher.publish_msg().await;
        wills.insert(String::from_utf8(p.topic.to_vec()).unwrap(), p);
    }
    for client in ["props-clean", "props-pers"] {
        let will = &wills[&format!("will/{client}")];
        assert_eq!(&will.payload[..], b"{\"gone\":true}");
        let p = will.properties.as_ref().unwrap_or_else(|| panic!("{client}: the will lost its properties"));
        assert_eq!(p.payload_format_indicator, Some(1), "{client}");
        assert!(p.message_expiry_interval.is_some_and(|e| (590..=600).contains(&e)), "{client}: {p:?}");
        assert_eq!(p.content_type.as_deref(), Some("application/json"), "{client}");
        assert_eq!(p.response_topic, Some(format!("reply/{client}")), "{client}");
        assert_eq!(p.correlation_data.as_deref(), Some(format!("corr-{client}").as_bytes()), "{client}");
        assert_eq!(
            p.user_properties,
            [("site".to_owned(), "north".to_owned()), ("client".to_owned(), client.to_owned())],
            "{client}"
        );
    }
}
