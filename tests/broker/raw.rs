//! Hand-written bytes: malformed and hostile input, limits, and exact wire behaviour.

use std::time::Duration;

use crate::support::{Raw, TestGateway, connect_v5, connect_v311, packet};

#[tokio::test]
async fn v311_connect_gets_connack_and_pingresp() {
    let gw = TestGateway::start().await;
    let mut c = Raw::connect(gw.tcp).await;
    c.send(&connect_v311("raw", true, 60)).await;
    assert_eq!(c.read_packet().await, [0x20, 2, 0, 0]);
    c.send(&[0xC0, 0]).await;
    assert_eq!(c.read_packet().await, [0xD0, 0]);
    gw.stop().await;
}

#[tokio::test]
async fn malformed_packet_closes_only_that_connection() {
    let gw = TestGateway::start().await;
    let mut good = Raw::connect(gw.tcp).await;
    good.send(&connect_v311("good", true, 60)).await;
    good.read_packet().await;

    // v3.1.1: PUBLISH with QoS 3 is malformed: the connection is closed without a reply.
    let mut bad = Raw::connect(gw.tcp).await;
    bad.send(&connect_v311("bad", true, 60)).await;
    bad.read_packet().await;
    bad.send(&packet(0x36, &[0, 1, b't', 0, 1])).await;
    assert_eq!(bad.read_to_close().await, Vec::<u8>::new());

    // v5: a reserved fixed-header flag on PINGREQ: DISCONNECT 0x81 malformed packet, then close.
    let mut bad5 = Raw::connect(gw.tcp).await;
    bad5.send(&connect_v5("bad5", 60)).await;
    assert_eq!(bad5.read_packet().await[0], 0x20);
    bad5.send(&[0xC1, 0]).await;
    let reply = bad5.read_to_close().await;
    assert_eq!(reply.first(), Some(&0xE0), "a DISCONNECT: {reply:?}");
    assert_eq!(reply.get(2), Some(&0x81), "reason malformed packet: {reply:?}");

    // The other client is unaffected.
    good.send(&[0xC0, 0]).await;
    assert_eq!(good.read_packet().await, [0xD0, 0]);
    gw.stop().await;
}

#[tokio::test]
async fn garbage_before_connect_and_bad_varints_are_refused() {
    let gw = TestGateway::start().await;
    for bytes in [
        vec![0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], // five-byte remaining length
        vec![0x30, 0x03, 0x00, 0x01, b'x'],       // PUBLISH before CONNECT
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), // HTTP on the MQTT port
    ] {
        let mut c = Raw::connect(gw.tcp).await;
        c.send(&bytes).await;
        let reply = c.read_to_close().await;
        assert!(reply.is_empty(), "{bytes:?} got {reply:?}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn unsupported_protocol_level_gets_connack_0x01() {
    let gw = TestGateway::start().await;
    let mut c = Raw::connect(gw.tcp).await;
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 9, 0x02, 0, 60];
    body.extend([0, 1, b'x']);
    c.send(&packet(0x10, &body)).await;
    assert_eq!(c.read_to_close().await, [0x20, 2, 0, 1]);
    gw.stop().await;
}

#[tokio::test]
async fn oversized_packet_gets_0x95_and_loses_nothing_else() {
    let gw = TestGateway::start_with(|c| c.broker.max_packet_size = 1024).await;
    let mut sub = Raw::connect(gw.tcp).await;
    sub.send(&connect_v311("sub", true, 60)).await;
    sub.read_packet().await;
    sub.send(&packet(0x82, &[0, 1, 0, 1, b'#', 1])).await;
    assert_eq!(sub.read_packet().await, [0x90, 3, 0, 1, 1]);

    let mut c = Raw::connect(gw.tcp).await;
    c.send(&connect_v5("big", 60)).await;
    c.read_packet().await;
    // Only the header of a 2000-byte PUBLISH: the broker refuses it from the length alone.
    c.send(&[0x30, 0xD0, 0x0F]).await;
    let reply = c.read_to_close().await;
    assert_eq!(reply.first(), Some(&0xE0));
    assert_eq!(reply.get(2), Some(&0x95), "packet too large: {reply:?}");

    // A publish within the limit still flows.
    let mut p = Raw::connect(gw.tcp).await;
    p.send(&connect_v311("pub", true, 60)).await;
    p.read_packet().await;
    p.send(&packet(0x30, &[0, 1, b'a', b'o', b'k'])).await;
    assert_eq!(sub.read_packet().await, packet(0x30, &[0, 1, b'a', b'o', b'k']));
    gw.stop().await;
}

#[tokio::test]
async fn connect_timeout_closes_silent_connections() {
    let gw = TestGateway::start_with(|c| c.connect_timeout = Duration::from_secs(1)).await;
    let mut c = Raw::connect(gw.tcp).await;
    let started = std::time::Instant::now();
    assert!(c.read_to_close().await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));
    gw.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_get_a_connack_refusal() {
    let gw = TestGateway::start_with(|c| c.max_connections = 2).await;
    let mut a = Raw::connect(gw.tcp).await;
    a.send(&connect_v311("a", true, 60)).await;
    a.read_packet().await;
    let mut b = Raw::connect(gw.tcp).await;
    b.send(&connect_v5("b", 60)).await;
    b.read_packet().await;
    let mut c = Raw::connect(gw.tcp).await;
    c.send(&connect_v311("c", true, 60)).await;
    assert_eq!(c.read_to_close().await, [0x20, 2, 0, 3], "3.1.1: server unavailable");
    let mut d = Raw::connect(gw.tcp).await;
    d.send(&connect_v5("d", 60)).await;
    let reply = d.read_to_close().await;
    assert_eq!(&reply[..4], [0x20, reply[1], 0, 0x97], "v5: quota exceeded: {reply:?}");
    gw.stop().await;
}

#[tokio::test]
async fn empty_client_id_without_clean_session_is_rejected_in_v311() {
    let gw = TestGateway::start().await;
    let mut c = Raw::connect(gw.tcp).await;
    c.send(&connect_v311("", false, 60)).await;
    assert_eq!(c.read_to_close().await, [0x20, 2, 0, 2]);
    let mut ok = Raw::connect(gw.tcp).await;
    ok.send(&connect_v311("", true, 60)).await;
    assert_eq!(ok.read_packet().await, [0x20, 2, 0, 0]);
    gw.stop().await;
}

#[tokio::test]
async fn anonymous_is_refused_where_the_listener_does_not_allow_it() {
    let gw = TestGateway::start_with(|c| c.listeners[0].allow_anonymous = false).await;
    let mut c = Raw::connect(gw.tcp).await;
    c.send(&connect_v311("anon", true, 60)).await;
    assert_eq!(c.read_to_close().await, [0x20, 2, 0, 5], "not authorized");
    gw.stop().await;
}

#[tokio::test]
async fn slow_subscriber_does_not_stall_publishers_or_other_subscribers() {
    let gw = TestGateway::start_with(|c| c.broker.max_queued_qos0 = 100).await;
    // A subscriber that never reads its socket.
    let mut stalled = Raw::connect(gw.tcp).await;
    stalled.send(&connect_v311("stalled", true, 0)).await;
    stalled.read_packet().await;
    stalled.send(&packet(0x82, &[0, 1, 0, 1, b'#', 0])).await;
    stalled.read_packet().await;
    let mut healthy = Raw::connect(gw.tcp).await;
    healthy.send(&connect_v311("healthy", true, 0)).await;
    healthy.read_packet().await;
    healthy.send(&packet(0x82, &[0, 1, 0, 4, b'l', b'a', b's', b't', 0])).await;
    healthy.read_packet().await;

    let mut publisher = Raw::connect(gw.tcp).await;
    publisher.send(&connect_v311("pub", true, 0)).await;
    publisher.read_packet().await;
    let payload = vec![b'x'; 4096];
    let mut body = vec![0, 4, b'b', b'u', b'l', b'k'];
    body.extend(&payload);
    let bulk = packet(0x30, &body);
    // 40 MB: far more than the stalled socket's buffers hold.
    for _ in 0..10_000 {
        publisher.send(&bulk).await;
    }
    publisher.send(&packet(0x30, &[0, 4, b'l', b'a', b's', b't', b'!'])).await;
    assert_eq!(healthy.read_packet().await, packet(0x30, &[0, 4, b'l', b'a', b's', b't', b'!']));
    let dropped = gw.gateway().broker().metrics().messages_dropped.load(std::sync::atomic::Ordering::Relaxed);
    assert!(dropped > 0, "the stalled subscriber's excess is dropped and counted");
    gw.stop().await;
}

#[tokio::test]
async fn shutdown_sends_v5_disconnect_0x8b() {
    let gw = TestGateway::start().await;
    let mut c = Raw::connect(gw.tcp).await;
    c.send(&connect_v5("bye", 60)).await;
    c.read_packet().await;
    let stop = tokio::spawn(gw.stop());
    let reply = c.read_to_close().await;
    assert_eq!(reply.first(), Some(&0xE0), "{reply:?}");
    assert_eq!(reply.get(2), Some(&0x8B), "{reply:?}");
    stop.await.unwrap();
}

#[tokio::test]
async fn in_flight_towards_a_v311_client_is_bounded_by_max_inflight() {
    let gw = TestGateway::start_with(|c| c.broker.max_inflight = 2).await;
    let mut sub = Raw::connect(gw.tcp).await;
    sub.send(&connect_v311("slow", true, 0)).await;
    sub.read_packet().await;
    sub.send(&packet(0x82, &[0, 1, 0, 1, b'w', 1])).await;
    sub.read_packet().await;
    let mut publisher = Raw::connect(gw.tcp).await;
    publisher.send(&connect_v311("fast", true, 0)).await;
    publisher.read_packet().await;
    for id in 1..=4u8 {
        publisher.send(&packet(0x32, &[0, 1, b'w', 0, id, b'0' + id])).await;
        publisher.read_packet().await;
    }
    let first = sub.read_packet().await;
    sub.read_packet().await;
    sub.send(&[0xC0, 0]).await;
    assert_eq!(sub.read_packet().await, [0xD0, 0], "only two in flight");
    sub.send(&packet(0x40, &first[5..7])).await;
    assert_eq!(*sub.read_packet().await.last().unwrap(), b'3', "one more after an acknowledgement");
    gw.stop().await;
}
