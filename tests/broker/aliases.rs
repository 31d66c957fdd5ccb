//! Topic aliases the gateway assigns on deliveries to MQTT 5 clients (issue 11, part 2), byte for byte.

use crate::support::{Raw, TestGateway, packet};

/// 61 bytes: a topic as a plant names its sensors.
const TOPIC: &str = "plant/building-3/line-7/press-12/hydraulics/pressure/sensor-a";
const MESSAGES: usize = 1000;
const PAYLOAD: [u8; 16] = [7; 16];

fn string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend(s.as_bytes());
    out
}

/// A v5 CONNECT, with a Topic Alias Maximum property if given.
fn connect(client_id: &str, alias_maximum: Option<u16>) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60];
    match alias_maximum {
        Some(max) => {
            body.push(3);
            body.push(0x22);
            body.extend(max.to_be_bytes());
        }
        None => body.push(0),
    }
    body.extend(string(client_id));
    packet(0x10, &body)
}

async fn connected(gw: &TestGateway, client_id: &str, alias_maximum: Option<u16>) -> Raw {
    let mut c = Raw::connect(gw.tcp).await;
    c.send(&connect(client_id, alias_maximum)).await;
    let ack = c.read_packet().await;
    assert_eq!((ack[0], ack[3]), (0x20, 0), "CONNACK success: {ack:?}");
    c
}

/// A PUBLISH as received: its topic (empty when only the alias is sent), its alias, its retain flag.
struct Received {
    topic: String,
    alias: Option<u16>,
    retain: bool,
    len: usize,
}

/// Parses a v5 PUBLISH at QoS 0 whose properties are at most a topic alias.
fn parse(p: &[u8]) -> Received {
    assert_eq!(p[0] & 0xF6, 0x30, "a QoS 0 PUBLISH: {p:?}");
    let mut at = 1;
    while p[at] & 0x80 != 0 {
        at += 1;
    }
    at += 1;
    let topic_len = usize::from(u16::from_be_bytes([p[at], p[at + 1]]));
    let topic = String::from_utf8(p[at + 2..at + 2 + topic_len].to_vec()).unwrap();
    at += 2 + topic_len;
    let properties = &p[at + 1..at + 1 + usize::from(p[at])];
    let alias = match properties {
        [] => None,
        [0x23, hi, lo] => Some(u16::from_be_bytes([*hi, *lo])),
        other => panic!("unexpected properties {other:?}"),
    };
    Received { topic, alias, retain: p[0] & 1 == 1, len: p.len() }
}

/// Streams [`MESSAGES`] on [`TOPIC`] to a subscriber that allows `alias_maximum` aliases; returns the bytes of
/// the PUBLISH packets it received, after checking that every one resolves to the topic.
async fn stream(gw: &TestGateway, name: &str, alias_maximum: Option<u16>) -> usize {
    let mut sub = connected(gw, &format!("{name}-sub"), alias_maximum).await;
    let mut body = 1u16.to_be_bytes().to_vec();
    body.push(0);
    body.extend(string(TOPIC));
    body.push(0);
    sub.send(&packet(0x82, &body)).await;
    assert_eq!(sub.read_packet().await[0], 0x90, "SUBACK");
    let mut publisher = connected(gw, &format!("{name}-pub"), None).await;
    let mut bytes = 0;
    let mut known = std::collections::HashMap::new();
    for window in 0..MESSAGES / 100 {
        for i in 0..100u16 {
            let mut body = string(TOPIC);
            body.extend((window as u16 * 100 + i + 1).to_be_bytes());
            body.push(0);
            body.extend(PAYLOAD);
            publisher.send(&packet(0x32, &body)).await;
        }
        for _ in 0..100 {
            assert_eq!(publisher.read_packet().await[0], 0x40, "PUBACK");
        }
        for _ in 0..100 {
            let p = parse(&sub.read_packet().await);
            bytes += p.len;
            let topic = match (p.alias, p.topic.is_empty()) {
                (None, false) => p.topic,
                (Some(alias), false) => {
                    known.insert(alias, p.topic.clone());
                    p.topic
                }
                (Some(alias), true) => known.get(&alias).cloned().expect("an alias used before it was set"),
                (None, true) => panic!("an empty topic without an alias"),
            };
            assert_eq!(topic, TOPIC);
            if let Some(alias) = p.alias {
                assert!(alias >= 1 && Some(alias) <= alias_maximum, "alias {alias} beyond {alias_maximum:?}");
            }
        }
    }
    bytes
}

/// The measurement docs/BENCHMARKS.md quotes (run with `--no-capture` to see the figures), and its check: the
/// first delivery names the topic with its alias, the 999 others carry the alias alone (3 bytes of property and
/// an empty topic instead of the 61-byte topic).
#[tokio::test]
async fn server_topic_aliases_shrink_a_stream_on_a_long_topic() {
    let gw = TestGateway::start().await;
    let without = stream(&gw, "plain", None).await;
    let with = stream(&gw, "aliased", Some(10)).await;
    let unaliased_packet = 2 + 2 + TOPIC.len() + 1 + PAYLOAD.len();
    assert_eq!(without, MESSAGES * unaliased_packet);
    assert_eq!(with, (unaliased_packet + 3) + (MESSAGES - 1) * (unaliased_packet + 3 - TOPIC.len()));
    println!(
        "{MESSAGES} QoS 0 deliveries, {}-byte topic, {}-byte payload: {without} bytes without aliases, {with} with \
         ({:.1} %)",
        TOPIC.len(),
        PAYLOAD.len(),
        100.0 * with as f64 / without as f64
    );

    // The message itself keeps its topic: retained, it reaches a new subscriber whole (the alias its connection
    // gives it is that connection's own), and one that allows no aliases sees no alias.
    let mut retained = string(TOPIC);
    retained.extend(1u16.to_be_bytes());
    retained.push(0);
    retained.extend(b"kept");
    let mut publisher = connected(&gw, "retain-pub", None).await;
    publisher.send(&packet(0x33, &retained)).await;
    // Acknowledged (QoS 1) once the router has it: a SUBSCRIBE sent after this finds it retained.
    assert_eq!(publisher.read_packet().await[0], 0x40, "PUBACK");
    for (name, maximum) in [("late-aliased", Some(10)), ("late-plain", None)] {
        let mut late = connected(&gw, name, maximum).await;
        let mut body = 1u16.to_be_bytes().to_vec();
        body.push(0);
        body.extend(string(TOPIC));
        body.push(0);
        late.send(&packet(0x82, &body)).await;
        assert_eq!(late.read_packet().await[0], 0x90, "SUBACK");
        let p = parse(&late.read_packet().await);
        assert_eq!((p.topic.as_str(), p.retain), (TOPIC, true));
        assert_eq!(p.alias, maximum.map(|_| 1));
    }
    gw.stop().await;
}

/// `[mqtt] server_topic_aliases = 0` assigns none, whatever the client allows.
#[tokio::test]
async fn server_topic_aliases_can_be_turned_off() {
    let gw = TestGateway::start_with(|c| c.broker.server_topic_aliases = 0).await;
    let bytes = stream(&gw, "off", Some(10)).await;
    assert_eq!(bytes, MESSAGES * (2 + 2 + TOPIC.len() + 1 + PAYLOAD.len()));
    gw.stop().await;
}
