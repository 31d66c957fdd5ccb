//! MQTT 5.0 behaviour, driven by rumqttc's v5 client.

use crate::clients::v5::{
    Client, ConnectReturnCode, Filter, LastWill, LastWillProperties, PublishProperties, QoS,
    RetainForwardRule, SubscribeProperties, options,
};
use crate::support::TestGateway;

#[tokio::test]
async fn v5_connack_announces_limits_and_publish_round_trips() {
    let gw = TestGateway::start().await;
    let (mut c, ack) = Client::connect(options("v5", gw.port())).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let props = ack.properties.unwrap();
    assert_eq!(props.receive_max, Some(100));
    assert_eq!(props.max_packet_size, Some(1024 * 1024));
    c.subscribe("v5/t", QoS::ExactlyOnce).await;
    c.client.publish("v5/t", QoS::ExactlyOnce, false, "hello").await.unwrap();
    let got = c.publish_msg().await;
    assert_eq!(&got.payload[..], b"hello");
    assert_eq!(got.qos, QoS::ExactlyOnce);
    gw.stop().await;
}

#[tokio::test]
async fn will_delay_is_cancelled_by_a_reconnect_and_honoured_otherwise() {
    let gw = TestGateway::start().await;
    let (mut watcher, _) = Client::connect(options("watcher", gw.port())).await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await;
    let will = |topic: &str| {
        let props = LastWillProperties {
            delay_interval: Some(2),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        };
        LastWill::new(topic, "gone", QoS::AtLeastOnce, false, Some(props))
    };
    let persistent = |id: &str, topic: &str| {
        let mut o = options(id, gw.port());
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(60));
        o.set_last_will(will(topic));
        o
    };
    // Lost, then back within the delay: no will.
    let (c, _) = Client::connect(persistent("returns", "will/returns")).await;
    c.kill().await;
    let (_back, ack) = Client::connect(persistent("returns", "will/returns")).await;
    assert!(ack.session_present);
    // Lost for good: the will comes after its delay.
    let (c, _) = Client::connect(persistent("leaves", "will/leaves")).await;
    let lost_at = std::time::Instant::now();
    c.kill().await;
    let got = watcher.publish_msg().await;
    assert_eq!(got.topic, "will/leaves", "the returning client's will was never published");
    assert!(lost_at.elapsed() >= std::time::Duration::from_millis(1500), "not before the delay");
    gw.stop().await;
}

#[tokio::test]
async fn session_expiry_ends_the_session() {
    let gw = TestGateway::start().await;
    let opts = |expiry| {
        let mut o = options("expiring", gw.port());
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(expiry));
        o
    };
    let (mut c, _) = Client::connect(opts(1)).await;
    c.subscribe("e", QoS::AtLeastOnce).await;
    c.client.disconnect().await.unwrap();
    c.closed().await;
    crate::support::eventually("session expired", || async {
        gw.gateway().broker().stats().await.unwrap().sessions == 0
    })
    .await;
    let (_c, ack) = Client::connect(opts(1)).await;
    assert!(!ack.session_present);
    gw.stop().await;
}

#[tokio::test]
async fn subscription_options_no_local_retain_as_published_and_retain_handling() {
    let gw = TestGateway::start().await;
    let (mut c, _) = Client::connect(options("opts", gw.port())).await;
    c.client.publish("o/retained", QoS::AtLeastOnce, true, "kept").await.unwrap();
    let mut no_local = Filter::new("o/local", QoS::AtLeastOnce);
    no_local.nolocal = true;
    let mut rap = Filter::new("o/rap", QoS::AtLeastOnce);
    rap.preserve_retain = true;
    let mut never = Filter::new("o/retained", QoS::AtLeastOnce);
    never.retain_forward_rule = RetainForwardRule::Never;
    c.client.subscribe_many(vec![no_local, rap, never]).await.unwrap();
    c.suback().await;
    c.client.publish("o/local", QoS::AtLeastOnce, false, "own").await.unwrap();
    c.client.publish("o/rap", QoS::AtLeastOnce, true, "flagged").await.unwrap();
    let got = c.publish_msg().await;
    assert_eq!(&got.payload[..], b"flagged", "no retained message at subscribe, no own message back");
    assert!(got.retain, "retain as published keeps the flag");

    let mut on_new = Filter::new("o/retained", QoS::AtLeastOnce);
    on_new.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
    c.client.subscribe_many(vec![on_new.clone()]).await.unwrap();
    c.suback().await;
    c.client.publish("o/rap", QoS::AtLeastOnce, false, "marker").await.unwrap();
    assert_eq!(&c.publish_msg().await.payload[..], b"marker", "existing subscription: not new, nothing sent");
    let (mut other, _) = Client::connect(options("other", gw.port())).await;
    other.client.subscribe_many(vec![on_new]).await.unwrap();
    other.suback().await;
    assert_eq!(
        &other.publish_msg().await.payload[..],
        b"kept",
        "a new subscription gets the retained message"
    );
    gw.stop().await;
}

#[tokio::test]
async fn subscription_identifiers_and_properties_are_delivered() {
    let gw = TestGateway::start().await;
    let (mut c, _) = Client::connect(options("props", gw.port())).await;
    let props = SubscribeProperties { id: Some(7), user_properties: vec![] };
    c.client.subscribe_with_properties("p/#", QoS::AtLeastOnce, props).await.unwrap();
    c.suback().await;
    let props = SubscribeProperties { id: Some(9), user_properties: vec![] };
    c.client.subscribe_with_properties("p/+", QoS::AtMostOnce, props).await.unwrap();
    c.suback().await;
    let publish_props = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(300),
        response_topic: Some("p/reply".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"req-1")),
        user_properties: vec![("line".into(), "4".into()), ("line".into(), "5".into())],
        content_type: Some("application/json".into()),
        ..PublishProperties::default()
    };
    c.client.publish_with_properties("p/x", QoS::AtLeastOnce, false, "{}", publish_props).await.unwrap();
    let got = c.publish_msg().await;
    assert_eq!(got.qos, QoS::AtLeastOnce, "overlapping subscriptions: one delivery at the highest QoS");
    let p = got.properties.unwrap();
    let mut ids = p.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, [7, 9]);
    assert_eq!(p.payload_format_indicator, Some(1));
    assert!(p.message_expiry_interval.is_some_and(|e| (290..=300).contains(&e)));
    assert_eq!(p.response_topic.as_deref(), Some("p/reply"));
    assert_eq!(p.correlation_data.as_deref(), Some(&b"req-1"[..]));
    assert_eq!(p.user_properties, vec![("line".into(), "4".into()), ("line".into(), "5".into())]);
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    gw.stop().await;
}

#[tokio::test]
async fn shared_subscription_spreads_messages_over_the_group() {
    let gw = TestGateway::start().await;
    let (mut a, _) = Client::connect(options("a", gw.port())).await;
    let (mut b, _) = Client::connect(options("b", gw.port())).await;
    a.subscribe("$share/workers/jobs/#", QoS::AtLeastOnce).await;
    b.subscribe("$share/workers/jobs/#", QoS::AtLeastOnce).await;
    let (publisher, _) = Client::connect(options("pub", gw.port())).await;
    for i in 0..10 {
        publisher.client.publish("jobs/x", QoS::AtLeastOnce, false, format!("{i}")).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(a.publish_msg().await.payload);
        got.push(b.publish_msg().await.payload);
    }
    got.sort();
    let expected: Vec<_> = (0..10).map(|i| bytes::Bytes::from(format!("{i}"))).collect();
    assert_eq!(got, expected, "each message to exactly one member, in turn");
    gw.stop().await;
}

#[tokio::test]
async fn expired_messages_are_not_delivered() {
    let gw = TestGateway::start().await;
    let mut opts = options("sleeper", gw.port());
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(60));
    let (mut c, _) = Client::connect(opts.clone()).await;
    c.subscribe("x/#", QoS::AtLeastOnce).await;
    c.client.disconnect().await.unwrap();
    c.closed().await;
    let (p, _) = Client::connect(options("pub", gw.port())).await;
    let short = PublishProperties { message_expiry_interval: Some(1), ..PublishProperties::default() };
    p.client.publish_with_properties("x/short", QoS::AtLeastOnce, false, "stale", short).await.unwrap();
    let long = PublishProperties { message_expiry_interval: Some(100), ..PublishProperties::default() };
    p.client.publish_with_properties("x/long", QoS::AtLeastOnce, false, "fresh", long).await.unwrap();
    // Wait out the short expiry (a real wait on a clock, bounded and without polling: nothing to poll for).
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (mut back, _) = Client::connect(opts).await;
    let got = back.publish_msg().await;
    assert_eq!(&got.payload[..], b"fresh");
    let left = got.properties.unwrap().message_expiry_interval.unwrap();
    assert!((90..=98).contains(&left), "the remaining interval is forwarded: {left}");
    gw.stop().await;
}

#[tokio::test]
async fn topic_alias_from_the_client_is_resolved() {
    let gw = TestGateway::start().await;
    let (mut c, _) = Client::connect(options("alias", gw.port())).await;
    c.subscribe("aliased/topic", QoS::AtLeastOnce).await;
    let set = PublishProperties { topic_alias: Some(3), ..PublishProperties::default() };
    c.client.publish_with_properties("aliased/topic", QoS::AtLeastOnce, false, "one", set).await.unwrap();
    let use_it = PublishProperties { topic_alias: Some(3), ..PublishProperties::default() };
    c.client.publish_with_properties("", QoS::AtLeastOnce, false, "two", use_it).await.unwrap();
    assert_eq!(&c.publish_msg().await.payload[..], b"one");
    let got = c.publish_msg().await;
    assert_eq!((&got.topic[..], &got.payload[..]), (&b"aliased/topic"[..], &b"two"[..]));
    gw.stop().await;
}

#[tokio::test]
async fn assigned_client_identifier_for_an_empty_id() {
    let gw = TestGateway::start().await;
    let (_c, ack) = Client::connect(options("", gw.port())).await;
    let id = ack.properties.unwrap().assigned_client_identifier.unwrap();
    assert!(id.starts_with("weir-"), "{id}");
    gw.stop().await;
}

#[tokio::test]
async fn shutdown_tells_v5_clients_the_server_is_shutting_down() {
    let gw = TestGateway::start().await;
    let (mut c, _) = Client::connect(options("bye", gw.port())).await;
    let stop = tokio::spawn(gw.stop());
    // rumqttc reports a server's DISCONNECT as the error that ends its event loop.
    let error = c.closed().await;
    assert!(error.contains("ServerShuttingDown"), "{error}");
    stop.await.unwrap();
}
