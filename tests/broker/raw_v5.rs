//! MQTT 5.0 flow control and error paths, with hand-written bytes so that every byte on the wire is checked.

use crate::support::{Raw, TestGateway, packet};

/// A v5 CONNECT with the given flags (clean start = 0x02, will = 0x04 | qos << 3 | retain 0x20), properties and
/// payload after the client id (will properties, will topic, will payload).
fn connect(client_id: &str, flags: u8, properties: &[u8], will: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, flags, 0, 60];
    body.push(properties.len() as u8);
    body.extend(properties);
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    body.extend(will);
    packet(0x10, &body)
}

fn string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend(s.as_bytes());
    out
}

/// v5 SUBSCRIBE of one filter at `qos`, no properties.
fn subscribe(packet_id: u16, filter: &str, options: u8) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    body.push(0);
    body.extend(string(filter));
    body.push(options);
    packet(0x82, &body)
}

/// v5 PUBLISH with no properties.
fn publish(topic: &str, qos: u8, packet_id: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = string(topic);
    if qos > 0 {
        body.extend(packet_id.to_be_bytes());
    }
    body.push(0);
    body.extend(payload);
    packet(0x30 | (qos << 1), &body)
}

async fn connected(gw: &TestGateway, client_id: &str, flags: u8, properties: &[u8]) -> Raw {
    let mut c = Raw::connect(gw.tcp).await;
    c.send(&connect(client_id, flags, properties, &[])).await;
    let ack = c.read_packet().await;
    assert_eq!((ack[0], ack[3]), (0x20, 0), "CONNACK success: {ack:?}");
    c
}

#[tokio::test]
async fn broker_never_exceeds_the_client_receive_maximum_and_resends_with_dup() {
    let gw = TestGateway::start().await;
    // Receive maximum 2, session expiry 60 s.
    let props = [0x21, 0, 2, 0x11, 0, 0, 0, 60];
    let mut sub = connected(&gw, "rm", 0x02, &props).await;
    sub.send(&subscribe(1, "rm/t", 1)).await;
    assert_eq!(sub.read_packet().await[0], 0x90);
    let mut p = connected(&gw, "rm-pub", 0x02, &[]).await;
    for i in 0..5u8 {
        p.send(&publish("rm/t", 1, u16::from(i) + 1, &[b'0' + i])).await;
        assert_eq!(p.read_packet().await[0], 0x40, "PUBACK");
    }
    let first = sub.read_packet().await;
    let second = sub.read_packet().await;
    assert_eq!((first[0], *first.last().unwrap()), (0x32, b'0'));
    assert_eq!((second[0], *second.last().unwrap()), (0x32, b'1'));
    // A PINGREQ round trip proves nothing else was sent while two are unacknowledged.
    sub.send(&[0xC0, 0]).await;
    assert_eq!(sub.read_packet().await, [0xD0, 0], "no third PUBLISH before an ack");
    // Ack the first: exactly one more comes.
    sub.send(&packet(0x40, &first[8..10])).await;
    let third = sub.read_packet().await;
    assert_eq!(*third.last().unwrap(), b'2');
    // Drop the connection with two unacknowledged; on reconnect they come again with DUP, then the rest.
    drop(sub);
    let mut back = Raw::connect(gw.tcp).await;
    back.send(&connect("rm", 0x00, &props, &[])).await;
    let ack = back.read_packet().await;
    assert_eq!(ack[2], 1, "session present");
    let again = back.read_packet().await;
    assert_eq!((again[0], *again.last().unwrap()), (0x3A, b'1'), "DUP set on redelivery");
    let again = back.read_packet().await;
    assert_eq!((again[0], *again.last().unwrap()), (0x3A, b'2'));
    gw.stop().await;
}

#[tokio::test]
async fn client_exceeding_the_broker_receive_maximum_gets_0x93() {
    let gw = TestGateway::start_with(|c| c.broker.receive_maximum = 2).await;
    let mut c = connected(&gw, "greedy", 0x02, &[]).await;
    for id in 1..=3u16 {
        c.send(&publish("q2", 2, id, b"x")).await;
    }
    let reply = c.read_to_close().await;
    // At most the two allowed PUBRECs (they may still be waiting for the journal), then DISCONNECT 0x93.
    let disconnect = reply.iter().position(|&b| b == 0xE0).expect("a DISCONNECT");
    assert!(reply[..disconnect].chunks(4).all(|p| p[0] == 0x50 && p[3] != 3), "{reply:?}");
    assert_eq!(reply[disconnect + 2], 0x93, "{reply:?}");
    gw.stop().await;
}

#[tokio::test]
async fn qos2_retransmission_is_routed_once_and_pubrel_completes() {
    let gw = TestGateway::start().await;
    let mut sub = connected(&gw, "q2-sub", 0x02, &[]).await;
    sub.send(&subscribe(1, "q2/t", 0)).await;
    sub.read_packet().await;
    let mut p = connected(&gw, "q2-pub", 0x02, &[]).await;
    p.send(&publish("q2/t", 2, 9, b"once")).await;
    assert_eq!(p.read_packet().await, [0x50, 2, 0, 9]);
    // Retransmission with DUP: acknowledged again, not routed again.
    let mut dup = publish("q2/t", 2, 9, b"once");
    dup[0] |= 0x08;
    p.send(&dup).await;
    assert_eq!(p.read_packet().await, [0x50, 2, 0, 9]);
    p.send(&packet(0x62, &[0, 9])).await;
    assert_eq!(p.read_packet().await, [0x70, 2, 0, 9], "PUBCOMP");
    // An unknown PUBREL is answered with 0x92.
    p.send(&packet(0x62, &[0, 10])).await;
    assert_eq!(p.read_packet().await, [0x70, 3, 0, 10, 0x92]);
    p.send(&publish("q2/t", 0, 0, b"marker")).await;
    assert_eq!(*sub.read_packet().await.last().unwrap(), b'e', "once");
    let next = sub.read_packet().await;
    assert!(next.ends_with(b"marker"), "the duplicate was not delivered: {next:?}");
    gw.stop().await;
}

#[tokio::test]
async fn messages_larger_than_the_client_maximum_packet_size_are_not_sent() {
    let gw = TestGateway::start().await;
    // Maximum packet size 64.
    let mut sub = connected(&gw, "small", 0x02, &[0x27, 0, 0, 0, 64]).await;
    sub.send(&subscribe(1, "big/#", 1)).await;
    sub.read_packet().await;
    let mut p = connected(&gw, "big-pub", 0x02, &[]).await;
    p.send(&publish("big/a", 1, 1, &[b'x'; 100])).await;
    p.read_packet().await;
    p.send(&publish("big/b", 1, 2, b"fits")).await;
    p.read_packet().await;
    let got = sub.read_packet().await;
    assert!(got.ends_with(b"fits"), "the oversized one was skipped: {got:?}");
    assert!(got.len() <= 64);
    gw.stop().await;
}

#[tokio::test]
async fn topic_alias_errors_close_the_connection() {
    let gw = TestGateway::start().await;
    // Alias beyond the maximum announced (64).
    let mut c = connected(&gw, "alias-big", 0x02, &[]).await;
    let mut body = string("a");
    body.extend([3, 0x23, 0, 65, b'x']);
    c.send(&packet(0x30, &body)).await;
    let reply = c.read_to_close().await;
    assert_eq!((reply[0], reply[2]), (0xE0, 0x94), "{reply:?}");
    // An alias never set.
    let mut c = connected(&gw, "alias-unknown", 0x02, &[]).await;
    let mut body = string("");
    body.extend([3, 0x23, 0, 5, b'x']);
    c.send(&packet(0x30, &body)).await;
    let reply = c.read_to_close().await;
    assert_eq!((reply[0], reply[2]), (0xE0, 0x82), "{reply:?}");
    gw.stop().await;
}

#[tokio::test]
async fn takeover_sends_0x8e_to_the_old_connection() {
    let gw = TestGateway::start().await;
    let mut old = connected(&gw, "same", 0x02, &[]).await;
    let _new = connected(&gw, "same", 0x02, &[]).await;
    let reply = old.read_to_close().await;
    assert_eq!((reply[0], reply[2]), (0xE0, 0x8E), "{reply:?}");
    gw.stop().await;
}

#[tokio::test]
async fn disconnect_with_will_publishes_the_will_and_normal_disconnect_does_not() {
    let gw = TestGateway::start().await;
    let mut watcher = connected(&gw, "watcher", 0x02, &[]).await;
    watcher.send(&subscribe(1, "w/#", 0)).await;
    watcher.read_packet().await;
    let will = |topic: &str, payload: &str| {
        let mut w = vec![0];
        w.extend(string(topic));
        w.extend(string(payload));
        w
    };
    let mut normal = Raw::connect(gw.tcp).await;
    normal.send(&connect("normal", 0x06, &[], &will("w/normal", "no"))).await;
    normal.read_packet().await;
    normal.send(&[0xE0, 0]).await;
    normal.read_to_close().await;
    let mut with_will = Raw::connect(gw.tcp).await;
    with_will.send(&connect("with-will", 0x06, &[], &will("w/yes", "yes"))).await;
    with_will.read_packet().await;
    with_will.send(&[0xE0, 1, 0x04]).await;
    with_will.read_to_close().await;
    let got = watcher.read_packet().await;
    assert!(got.ends_with(b"yes"), "{got:?}");
    gw.stop().await;
}

#[tokio::test]
async fn session_expiry_set_at_disconnect_after_zero_is_a_protocol_error() {
    let gw = TestGateway::start().await;
    let mut c = connected(&gw, "sneaky", 0x02, &[]).await;
    c.send(&packet(0xE0, &[0, 5, 0x11, 0, 0, 0, 30])).await;
    let reply = c.read_to_close().await;
    assert_eq!((reply[0], reply[2]), (0xE0, 0x82), "{reply:?}");
    gw.stop().await;
}

#[tokio::test]
async fn session_expiry_changed_at_disconnect_is_honoured() {
    let gw = TestGateway::start().await;
    // Connect with a long expiry, disconnect with expiry 0: the session ends at once.
    let mut c = connected(&gw, "shortened", 0x02, &[0x11, 0, 0, 14, 16]).await;
    c.send(&packet(0xE0, &[0, 5, 0x11, 0, 0, 0, 0])).await;
    c.read_to_close().await;
    crate::support::eventually("session gone", || async {
        gw.gateway().broker().stats().await.unwrap().sessions == 0
    })
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn publish_to_sys_is_refused_with_0x87_and_a_reason_string() {
    let gw = TestGateway::start().await;
    let mut c = connected(&gw, "intruder", 0x02, &[]).await;
    c.send(&publish("$SYS/broker/uptime", 1, 3, b"0")).await;
    let ack = c.read_packet().await;
    assert_eq!(&ack[..5], [0x40, ack[1], 0, 3, 0x87], "{ack:?}");
    assert!(ack.len() > 5, "a reason string follows");
    // With request problem information 0, no reason string.
    let mut quiet = connected(&gw, "quiet", 0x02, &[0x17, 0]).await;
    quiet.send(&publish("$SYS/x", 1, 4, b"0")).await;
    let ack = quiet.read_packet().await;
    assert_eq!(&ack[..5], [0x40, ack[1], 0, 4, 0x87]);
    assert!(ack.len() <= 6, "no reason string: {ack:?}");
    gw.stop().await;
}

#[tokio::test]
async fn enhanced_authentication_is_refused_with_0x8c() {
    let gw = TestGateway::start().await;
    let mut c = Raw::connect(gw.tcp).await;
    let mut props = vec![0x15];
    props.extend(string("SCRAM-SHA-1"));
    c.send(&connect("scram", 0x02, &props, &[])).await;
    let reply = c.read_to_close().await;
    assert_eq!((reply[0], reply[3]), (0x20, 0x8C), "{reply:?}");
    gw.stop().await;
}

#[tokio::test]
async fn suback_and_unsuback_carry_a_reason_code_per_filter() {
    let gw = TestGateway::start().await;
    let mut c = connected(&gw, "codes", 0x02, &[]).await;
    let mut body = vec![0, 7, 0];
    for (filter, options) in [("ok/+", 2u8), ("bad/#/x", 1), ("$share/g/s", 1), ("$share/bad", 0), ("q1", 1)]
    {
        body.extend(string(filter));
        body.push(options);
    }
    c.send(&packet(0x82, &body)).await;
    assert_eq!(c.read_packet().await, [0x90, 8, 0, 7, 0, 2, 0x8F, 1, 0x8F, 1]);
    let mut body = vec![0, 8, 0];
    for filter in ["ok/+", "never/subscribed", "$share/g/s"] {
        body.extend(string(filter));
    }
    c.send(&packet(0xA2, &body)).await;
    assert_eq!(c.read_packet().await, [0xB0, 6, 0, 8, 0, 0, 0x11, 0]);
    gw.stop().await;
}

#[tokio::test]
async fn server_keep_alive_overrides_the_client_and_is_announced() {
    let gw = TestGateway::start_with(|c| c.broker.server_keep_alive = Some(1)).await;
    let mut c = Raw::connect(gw.tcp).await;
    c.send(&connect("ka", 0x02, &[], &[])).await;
    let ack = c.read_packet().await;
    assert!(ack.windows(3).any(|w| w == [0x13, 0, 1]), "server keep alive 1 in CONNACK: {ack:?}");
    let started = std::time::Instant::now();
    let reply = c.read_to_close().await;
    assert_eq!((reply[0], reply[2]), (0xE0, 0x8D), "keep alive timeout: {reply:?}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(1400));
    gw.stop().await;
}

#[tokio::test]
async fn without_a_journal_the_offline_queue_bound_drops_and_counts_the_excess() {
    // With a journal the excess is spilled to it instead (durability tests); without one, memory is the bound.
    let gw = TestGateway::start_with(|c| {
        c.broker.max_queued_messages = 5;
        c.journal.durability = weir::store::Durability::Off;
    })
    .await;
    let props = [0x11, 0, 0, 0, 60];
    let mut sub = connected(&gw, "bounded", 0x02, &props).await;
    sub.send(&subscribe(1, "b/t", 1)).await;
    sub.read_packet().await;
    sub.send(&[0xE0, 0]).await;
    sub.read_to_close().await;
    let mut p = connected(&gw, "b-pub", 0x02, &[]).await;
    for i in 0..10u8 {
        p.send(&publish("b/t", 1, u16::from(i) + 1, &[b'0' + i])).await;
        p.read_packet().await;
    }
    let metrics = &gw.gateway().broker().metrics().messages_dropped;
    assert_eq!(metrics.load(std::sync::atomic::Ordering::Relaxed), 5);
    let mut back = Raw::connect(gw.tcp).await;
    back.send(&connect("bounded", 0x00, &props, &[])).await;
    back.read_packet().await;
    for i in 0..5u8 {
        let got = back.read_packet().await;
        assert_eq!(*got.last().unwrap(), b'0' + i, "the oldest five are kept, in order");
    }
    back.send(&[0xC0, 0]).await;
    assert_eq!(back.read_packet().await, [0xD0, 0], "and nothing more");
    gw.stop().await;
}

#[tokio::test]
async fn several_tcp_listeners_serve_the_same_broker() {
    let gw = TestGateway::start_with(|c| {
        let mut extra = c.listeners[0].clone();
        extra.name = "extra".into();
        c.listeners.push(extra);
    })
    .await;
    let extra = gw.gateway().local_addr("extra").unwrap();
    assert_ne!(extra, gw.tcp);
    let mut sub = connected(&gw, "on-main", 0x02, &[]).await;
    sub.send(&subscribe(1, "x", 0)).await;
    sub.read_packet().await;
    let mut other = Raw::connect(extra).await;
    other.send(&connect("on-extra", 0x02, &[], &[])).await;
    other.read_packet().await;
    other.send(&publish("x", 0, 0, b"across")).await;
    assert!(sub.read_packet().await.ends_with(b"across"));
    gw.stop().await;
}
