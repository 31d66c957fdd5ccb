//! Sparkplug-aware broker (Sparkplug 3.0, 10.1), driven by rumqttc: births republished retained under
//! `$sparkplug/certificates/`, also after a restart; publishing there refused; access rules applied to those
//! copies; an NDEATH will stamped with its delivery time. The Python tests (`tests/python/sparkplug_scenarios.py`)
//! check the same with an independent Sparkplug implementation.

use std::time::Duration;

use prost::Message as _;
use tempfile::TempDir;

use crate::clients::v4::{Client, LastWill, Packet, QoS, options};
use crate::support::{TestGateway, WAIT};
use weir::app::{self, Gateway};
use weir::auth::acl::{Action, Effect, Rule, Subject};
use weir::config::Config;
use weir::sparkplug::proto::{DataType, Metric, MetricValue, Payload};

fn birth(bd_seq: u64) -> Vec<u8> {
    Payload {
        timestamp: Some(1),
        seq: Some(0),
        metrics: vec![
            Metric {
                name: Some("bdSeq".into()),
                datatype: Some(DataType::Int64.code()),
                value: Some(MetricValue::LongValue(bd_seq)),
                ..Metric::default()
            },
            Metric {
                name: Some("Temperature".into()),
                alias: Some(1),
                datatype: Some(DataType::Double.code()),
                value: Some(MetricValue::DoubleValue(21.5)),
                ..Metric::default()
            },
        ],
        ..Payload::default()
    }
    .encode_to_vec()
}

async fn gateway_in(dir: &TempDir) -> Gateway {
    let mut config = Config::for_test(dir.path());
    config.broker.sys_interval = None;
    let listeners = app::bind(&config).await.unwrap();
    Gateway::start(config, listeners).await.unwrap()
}

/// Every retained certificate a new subscriber gets, as (topic, payload), until a quiet 300 ms.
async fn certificates(port: u16, id: &str) -> Vec<(String, Vec<u8>)> {
    let (mut host, _) = Client::connect(options(id, port)).await;
    host.subscribe("$sparkplug/certificates/#", QoS::AtLeastOnce).await;
    let mut got = Vec::new();
    while let Ok(p) = tokio::time::timeout(Duration::from_millis(300), host.publish_msg()).await {
        assert!(p.retain, "certificates are retained");
        got.push((p.topic.clone(), p.payload.to_vec()));
    }
    got.sort();
    got
}

#[tokio::test]
async fn births_are_republished_retained_under_sparkplug_certificates_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway_in(&dir).await;
    let port = gateway.local_addr("mqtt").unwrap().port();
    let (edge, _) = Client::connect(options("edge1", port)).await;
    edge.client.publish("spBv1.0/Plant/NBIRTH/Edge1", QoS::AtLeastOnce, false, birth(3)).await.unwrap();
    edge.client.publish("spBv1.0/Plant/DBIRTH/Edge1/Pump", QoS::AtLeastOnce, false, birth(3)).await.unwrap();
    // Neither data nor a malformed birth is certified.
    edge.client.publish("spBv1.0/Plant/NDATA/Edge1", QoS::AtLeastOnce, false, birth(3)).await.unwrap();
    edge.client.publish("spBv1.0/Plant/NBIRTH/Bad", QoS::AtLeastOnce, false, vec![0xFF, 0x01]).await.unwrap();
    let expected = vec![
        ("$sparkplug/certificates/spBv1.0/Plant/DBIRTH/Edge1/Pump".to_owned(), birth(3)),
        ("$sparkplug/certificates/spBv1.0/Plant/NBIRTH/Edge1".to_owned(), birth(3)),
    ];
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut n = 0;
    loop {
        n += 1;
        let got = certificates(port, &format!("host{n}")).await;
        if got == expected {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "certificates: {got:?}");
    }
    edge.kill().await;
    gateway.shutdown().await;

    let gateway = gateway_in(&dir).await;
    let port = gateway.local_addr("mqtt").unwrap().port();
    assert_eq!(certificates(port, "host-after").await, expected, "after a restart");
    gateway.shutdown().await;
}

#[tokio::test]
async fn clients_may_not_publish_under_sparkplug() {
    let gw = TestGateway::start().await;
    let (mut host, _) = Client::connect(options("host", gw.port())).await;
    host.subscribe("$sparkplug/#", QoS::AtLeastOnce).await;
    host.subscribe("marker", QoS::AtLeastOnce).await;
    let (mut forger, _) = Client::connect(options("forger", gw.port())).await;
    let topic = "$sparkplug/certificates/spBv1.0/Plant/NBIRTH/Fake";
    forger.client.publish(topic, QoS::AtLeastOnce, true, birth(1)).await.unwrap();
    // Acknowledged (3.1.1 has no refusal) and dropped: the marker published after it arrives first and alone.
    forger.expect(|p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    forger.client.publish("marker", QoS::AtLeastOnce, false, "after").await.unwrap();
    assert_eq!(host.publish_msg().await.topic, "marker");
    assert!(tokio::time::timeout(Duration::from_millis(300), host.publish_msg()).await.is_err());
    // A will there is refused at CONNECT.
    let mut willing = options("willing", gw.port());
    willing.set_last_will(LastWill::new(topic, birth(1), QoS::AtLeastOnce, true));
    let mut c = Client::start(willing);
    let closed = c.closed().await;
    assert!(closed.contains("NotAuthorized") || closed.contains("refused"), "{closed}");
    gw.stop().await;
}

#[tokio::test]
async fn access_rules_hold_on_the_certificates() {
    let gw =
        TestGateway::start_with(|c| c.listeners.iter_mut().for_each(|l| l.allow_anonymous = false)).await;
    let s = gw.gateway().security();
    for user in ["edge", "hostA"] {
        s.add_user(user, "correct horse battery", &[], "test").await.unwrap();
    }
    for rule in [
        Rule::new(Subject::User("edge".into()), Effect::Allow, Action::Publish, "spBv1.0/#"),
        Rule::new(
            Subject::User("hostA".into()),
            Effect::Allow,
            Action::Subscribe,
            "$sparkplug/certificates/spBv1.0/A/#",
        ),
    ] {
        s.add_rule(&rule, "test").await.unwrap();
    }
    let login = |id: &str, user: &str| {
        let mut o = options(id, gw.port());
        o.set_credentials(user, "correct horse battery");
        o
    };
    let (edge, _) = Client::connect(login("edge1", "edge")).await;
    for group in ["A", "B"] {
        let topic = format!("spBv1.0/{group}/NBIRTH/E");
        edge.client.publish(topic, QoS::AtLeastOnce, false, birth(0)).await.unwrap();
    }
    let (mut host, _) = Client::connect(login("hostA", "hostA")).await;
    // Live and retained alike: only group A.
    host.client.subscribe("$sparkplug/certificates/spBv1.0/+/NBIRTH/+", QoS::AtLeastOnce).await.unwrap();
    let mut got = Vec::new();
    while let Ok(p) = tokio::time::timeout(Duration::from_millis(500), host.publish_msg()).await {
        got.push(p.topic.clone());
    }
    assert_eq!(got, ["$sparkplug/certificates/spBv1.0/A/NBIRTH/E"]);
    gw.stop().await;
}

#[tokio::test]
async fn an_ndeath_will_is_stamped_with_its_delivery_time() {
    let gw = TestGateway::start().await;
    let (mut host, _) = Client::connect(options("host", gw.port())).await;
    host.subscribe("spBv1.0/+/NDEATH/+", QoS::AtLeastOnce).await;
    let death = Payload {
        timestamp: Some(1),
        metrics: vec![Metric {
            name: Some("bdSeq".into()),
            datatype: Some(DataType::Int64.code()),
            value: Some(MetricValue::LongValue(7)),
            ..Metric::default()
        }],
        ..Payload::default()
    };
    let mut o = options("edge", gw.port());
    o.set_last_will(LastWill::new("spBv1.0/G/NDEATH/edge", death.encode_to_vec(), QoS::AtLeastOnce, false));
    let (edge, _) = Client::connect(o).await;
    let before = weir::timefmt::now_ms() as u64;
    edge.kill().await;
    let p = host.publish_msg().await;
    let delivered = Payload::decode(&p.payload[..]).unwrap();
    assert!(delivered.timestamp.unwrap() >= before, "{delivered:?}");
    assert_eq!(delivered.metrics, death.metrics);
    gw.stop().await;
}
