//! MQTT 3.1.1 behaviour, driven by rumqttc's v4 client.

use std::time::Duration;

use crate::clients::v4::{Client, ConnectReturnCode, LastWill, Packet, QoS, options};
use crate::support::TestGateway;

#[tokio::test]
async fn publish_and_subscribe_at_every_qos_delivers_the_lower_qos() {
    let gw = TestGateway::start().await;
    let (mut sub, ack) = Client::connect(options("sub", gw.port())).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    sub.subscribe("q/0", QoS::AtMostOnce).await;
    sub.subscribe("q/1", QoS::AtLeastOnce).await;
    sub.subscribe("q/2", QoS::ExactlyOnce).await;
    let (publisher, _) = Client::connect(options("pub", gw.port())).await;
    for (topic, sub_qos) in [("q/0", QoS::AtMostOnce), ("q/1", QoS::AtLeastOnce), ("q/2", QoS::ExactlyOnce)] {
        for pub_qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let payload = format!("{topic} at {pub_qos:?}");
            publisher.client.publish(topic, pub_qos, false, payload.clone()).await.unwrap();
            let got = sub.publish_msg().await;
            assert_eq!(got.topic, topic);
            assert_eq!(got.payload, payload.as_bytes());
            let expected = if (pub_qos as u8) < (sub_qos as u8) { pub_qos } else { sub_qos };
            assert_eq!(got.qos, expected, "{payload}");
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn messages_arrive_in_order() {
    let gw = TestGateway::start().await;
    let (mut sub, _) = Client::connect(options("sub", gw.port())).await;
    sub.subscribe("order", QoS::AtLeastOnce).await;
    let (publisher, _) = Client::connect(options("pub", gw.port())).await;
    for i in 0..500u32 {
        publisher.client.publish("order", QoS::AtLeastOnce, false, i.to_string()).await.unwrap();
    }
    for i in 0..500u32 {
        assert_eq!(sub.publish_msg().await.payload, i.to_string().as_bytes());
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_new_subscription_gets_exactly_the_retained_messages_its_filter_matches_in_topic_order() {
    let gw = TestGateway::start().await;
    let (mut publisher, _) = Client::connect(options("pub", gw.port())).await;
    // `$end` comes after each filter's retained messages: no filter below matches it, so it marks their end.
    let topics = ["a", "a/b", "a/b/c", "a/bc", "a/x/c", "b/b", "ab", "$end"];
    for topic in topics {
        publisher.client.publish(topic, QoS::AtLeastOnce, true, topic).await.unwrap();
    }
    for _ in topics {
        publisher.expect(|p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    }
    let cases: [(&str, &[&str]); 7] = [
        ("a/b/#", &["a/b", "a/b/c"]),
        ("a/+/c", &["a/b/c", "a/x/c"]),
        ("+/b", &["a/b", "b/b"]),
        ("a/#", &["a", "a/b", "a/b/c", "a/bc", "a/x/c"]),
        ("a/b", &["a/b"]),
        ("a/b/c/#", &["a/b/c"]),
        ("#", &["a", "a/b", "a/b/c", "a/bc", "a/x/c", "ab", "b/b"]),
    ];
    for (n, (filter, expected)) in cases.into_iter().enumerate() {
        let (mut sub, _) = Client::connect(options(&format!("sub{n}"), gw.port())).await;
        // One SUBSCRIBE: the retained messages of its filters come in filter order (`subscribe` would skip them
        // while it waits for the SUBACK).
        let filters = [filter, "$end"].map(|f| rumqttc::SubscribeFilter::new(f.to_owned(), QoS::AtMostOnce));
        sub.client.subscribe_many(filters).await.unwrap();
        let mut got = Vec::new();
        loop {
            let message = sub.publish_msg().await;
            assert!(message.retain);
            if message.topic == "$end" {
                break;
            }
            got.push(message.topic);
        }
        assert_eq!(got, expected, "retained messages for {filter}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn retained_message_is_replaced_and_cleared_only_by_an_empty_retained_publish() {
    let gw = TestGateway::start().await;
    let (mut publisher, _) = Client::connect(options("pub", gw.port())).await;
    publisher.client.publish("r/t", QoS::AtLeastOnce, true, "first").await.unwrap();
    publisher.client.publish("r/t", QoS::AtLeastOnce, true, "second").await.unwrap();
    // A non-retained publish does not touch the retained value.
    publisher.client.publish("r/t", QoS::AtLeastOnce, false, "live").await.unwrap();
    // Acknowledged means durable and routed: only then is the retained value certain.
    for _ in 0..3 {
        publisher.expect(|p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    }

    let (mut sub, _) = Client::connect(options("sub1", gw.port())).await;
    sub.client.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();
    let got = sub.publish_msg().await;
    assert_eq!(got.payload, "second".as_bytes());
    assert!(got.retain, "a retained message sent at subscribe has RETAIN set");

    // Live messages to an existing subscription are not flagged retained (3.1.1 §3.3.1.3).
    publisher.client.publish("r/t", QoS::AtLeastOnce, true, "third").await.unwrap();
    let got = sub.publish_msg().await;
    assert_eq!(got.payload, "third".as_bytes());
    assert!(!got.retain);

    publisher.client.publish("r/t", QoS::AtLeastOnce, true, "").await.unwrap();
    publisher.client.publish("r/marker", QoS::AtLeastOnce, true, "m").await.unwrap();
    // The acknowledgements of "third", the clearing publish and the marker.
    for _ in 0..3 {
        publisher.expect(|p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    }
    let (mut late, _) = Client::connect(options("sub2", gw.port())).await;
    late.client.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();
    let got = late.publish_msg().await;
    assert_eq!(got.topic, "r/marker", "the cleared topic sends nothing; only the marker is retained");
    gw.stop().await;
}

#[tokio::test]
async fn persistent_session_keeps_subscriptions_and_queues_qos1_while_offline() {
    let gw = TestGateway::start().await;
    let mut opts = options("durable", gw.port());
    opts.set_clean_session(false);
    let (mut sub, ack) = Client::connect(opts.clone()).await;
    assert!(!ack.session_present);
    sub.subscribe("p/#", QoS::AtLeastOnce).await;
    sub.client.disconnect().await.unwrap();
    sub.closed().await;

    let (publisher, _) = Client::connect(options("pub", gw.port())).await;
    for i in 0..20 {
        publisher.client.publish("p/x", QoS::AtLeastOnce, false, format!("m{i}")).await.unwrap();
    }
    publisher.client.publish("p/x", QoS::AtMostOnce, false, "qos0 is not queued").await.unwrap();
    publisher.client.publish("p/x", QoS::AtLeastOnce, false, "last").await.unwrap();
    crate::support::eventually("publishes routed", || async {
        gw.gateway().broker().metrics().messages_received.load(std::sync::atomic::Ordering::Relaxed) >= 22
    })
    .await;

    let (mut back, ack) = Client::connect(opts).await;
    assert!(ack.session_present);
    for i in 0..20 {
        assert_eq!(back.publish_msg().await.payload, format!("m{i}").as_bytes());
    }
    assert_eq!(back.publish_msg().await.payload, "last".as_bytes());

    // A clean session discards the old one.
    back.client.disconnect().await.unwrap();
    back.closed().await;
    let mut clean = options("durable", gw.port());
    clean.set_clean_session(true);
    let (_c, ack) = Client::connect(clean).await;
    assert!(!ack.session_present);
    gw.stop().await;
}

#[tokio::test]
async fn will_is_published_on_abnormal_loss_but_not_on_disconnect() {
    let gw = TestGateway::start().await;
    let (mut watcher, _) = Client::connect(options("watcher", gw.port())).await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await;

    let mut opts = options("polite", gw.port());
    opts.set_last_will(LastWill::new("will/polite", "gone", QoS::AtLeastOnce, false));
    let (mut polite, _) = Client::connect(opts).await;
    polite.client.disconnect().await.unwrap();
    polite.closed().await;

    let mut opts = options("crashy", gw.port());
    opts.set_last_will(LastWill::new("will/crashy", "lost", QoS::AtLeastOnce, true));
    let (crashy, _) = Client::connect(opts).await;
    crashy.kill().await;

    let got = watcher.publish_msg().await;
    assert_eq!(got.topic, "will/crashy", "only the abnormally lost client's will is published");
    assert_eq!(got.payload, "lost".as_bytes());
    assert_eq!(got.qos, QoS::AtLeastOnce);

    // The will was retained.
    let (mut late, _) = Client::connect(options("late", gw.port())).await;
    late.client.subscribe("will/#", QoS::AtLeastOnce).await.unwrap();
    let got = late.publish_msg().await;
    assert_eq!((got.topic.as_str(), got.retain), ("will/crashy", true));
    gw.stop().await;
}

#[tokio::test]
async fn will_is_published_on_keep_alive_timeout() {
    let gw = TestGateway::start().await;
    let (mut watcher, _) = Client::connect(options("watcher", gw.port())).await;
    watcher.subscribe("will/#", QoS::AtMostOnce).await;
    // A raw client that sends CONNECT with a will and keep alive 1 s, then goes silent.
    let mut raw = crate::support::Raw::connect(gw.tcp).await;
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x06, 0, 1];
    for s in ["silent", "will/silent", "timeout"] {
        body.extend((s.len() as u16).to_be_bytes());
        body.extend(s.as_bytes());
    }
    raw.send(&crate::support::packet(0x10, &body)).await;
    assert_eq!(raw.read_packet().await, [0x20, 2, 0, 0]);
    let started = std::time::Instant::now();
    let got = watcher.publish_msg().await;
    assert_eq!(got.payload, "timeout".as_bytes());
    assert!(started.elapsed() >= Duration::from_millis(1400), "closed at 1.5 x keep alive, not before");
    raw.read_to_close().await;
    gw.stop().await;
}

#[tokio::test]
async fn keep_alive_zero_is_accepted() {
    let gw = TestGateway::start().await;
    let mut opts = options("nokeepalive", gw.port());
    opts.set_keep_alive(Duration::ZERO);
    let (mut c, ack) = Client::connect(opts).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    c.subscribe("k", QoS::AtMostOnce).await;
    c.client.publish("k", QoS::AtMostOnce, false, "x").await.unwrap();
    assert_eq!(c.publish_msg().await.payload, "x".as_bytes());
    gw.stop().await;
}

#[tokio::test]
async fn same_client_id_takes_the_session_over() {
    let gw = TestGateway::start().await;
    let (mut first, _) = Client::connect(options("twin", gw.port())).await;
    let (mut second, _) = Client::connect(options("twin", gw.port())).await;
    first.closed().await;
    second.subscribe("t", QoS::AtMostOnce).await;
    second.client.publish("t", QoS::AtMostOnce, false, "alive").await.unwrap();
    assert_eq!(second.publish_msg().await.payload, "alive".as_bytes());
    gw.stop().await;
}

#[tokio::test]
async fn wildcards_do_not_match_dollar_topics() {
    let gw = TestGateway::start_with(|c| c.broker.sys_interval = Some(Duration::from_secs(1))).await;
    let (mut all, _) = Client::connect(options("all", gw.port())).await;
    all.subscribe("#", QoS::AtMostOnce).await;
    let (mut sys, _) = Client::connect(options("sys", gw.port())).await;
    sys.subscribe("$SYS/broker/uptime", QoS::AtMostOnce).await;
    let got = sys.publish_msg().await;
    assert!(String::from_utf8_lossy(&got.payload).ends_with("seconds"));
    all.client.publish("plain", QoS::AtMostOnce, false, "x").await.unwrap();
    let got = all.publish_msg().await;
    assert_eq!(got.topic, "plain", "# saw nothing of $SYS before the plain message");
    gw.stop().await;
}

#[tokio::test]
async fn sys_topics_report_the_broker() {
    let gw = TestGateway::start_with(|c| c.broker.sys_interval = Some(Duration::from_secs(1))).await;
    let (mut c, _) = Client::connect(options("sys", gw.port())).await;
    c.subscribe("$SYS/broker/#", QoS::AtMostOnce).await;
    let mut seen = std::collections::BTreeMap::new();
    while seen.len() < 12 {
        let p = c.publish_msg().await;
        seen.insert(p.topic.clone(), String::from_utf8_lossy(&p.payload).to_string());
    }
    assert!(seen["$SYS/broker/version"].starts_with("weir "));
    assert_eq!(seen["$SYS/broker/clients/connected"], "1");
    // This client's, and the Sparkplug service's `spBv1.0/#` (an in-process link).
    assert_eq!(seen["$SYS/broker/subscriptions/count"], "2");
    for key in [
        "messages/received",
        "messages/sent",
        "messages/spilled",
        "bytes/received",
        "bytes/sent",
        "retained messages/count",
    ] {
        let value = &seen[&format!("$SYS/broker/{key}")];
        assert!(value.parse::<u64>().is_ok(), "{key} = {value}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn presence_is_published_for_connect_disconnect_and_loss() {
    let gw = TestGateway::start().await;
    let (mut watcher, _) = Client::connect(options("watcher", gw.port())).await;
    watcher.subscribe("$SYS/weir/clients/+/presence", QoS::AtLeastOnce).await;
    let (device, _) = Client::connect(options("plant/press-1", gw.port())).await;
    let mut next = async || loop {
        // The watcher's own presence is retained too; skip it.
        let p = watcher.publish_msg().await;
        if p.topic == "$SYS/weir/clients/plant%2Fpress-1/presence" {
            return serde_json::from_slice::<serde_json::Value>(&p.payload).unwrap();
        }
        assert_eq!(p.topic, "$SYS/weir/clients/watcher/presence");
    };
    let online = next().await;
    assert_eq!(online["state"], "online");
    assert!(online["ts"].as_u64().unwrap() > 1_600_000_000_000);
    device.kill().await;
    let lost = next().await;
    assert_eq!(lost["state"], "lost");
    assert!(lost["reason"].as_str().unwrap().contains("closed"), "{lost}");
    let (mut device, _) = Client::connect(options("plant/press-1", gw.port())).await;
    assert_eq!(next().await["state"], "online");
    device.client.disconnect().await.unwrap();
    device.closed().await;
    assert_eq!(next().await["state"], "offline");
    gw.stop().await;
}
