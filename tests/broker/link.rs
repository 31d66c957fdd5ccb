//! The in-process link: subscribe and publish from inside the process, with backpressure instead of loss.

use crate::clients::v4::{Client, QoS as ClientQoS, options};
use crate::support::TestGateway;
use weir::mqtt::broker::{LinkError, LinkOptions, Message};
use weir::mqtt::codec::QoS;

#[tokio::test]
async fn link_receives_what_network_clients_publish_and_publishes_to_them() {
    let gw = TestGateway::start().await;
    let broker = gw.gateway().broker().clone();
    let link = broker.link("history", LinkOptions::default()).await.unwrap();
    link.subscribe("plant/#", QoS::AtLeastOnce).await.unwrap();

    let (mut device, _) = Client::connect(options("device", gw.port())).await;
    device.subscribe("cmd/#", ClientQoS::AtLeastOnce).await;
    device.client.publish("plant/temp", ClientQoS::AtLeastOnce, false, "21.5").await.unwrap();
    let got = tokio::time::timeout(crate::support::WAIT, link.recv()).await.unwrap().unwrap();
    assert_eq!(&*got.message.topic, "plant/temp");
    assert_eq!(&got.message.payload[..], b"21.5");
    assert_eq!(got.message.origin.as_ref().unwrap().as_str(), "device");

    link.publish(Message::new("cmd/reset", "now", QoS::AtLeastOnce, false)).await.unwrap();
    assert_eq!(device.publish_msg().await.payload, "now".as_bytes());

    assert!(matches!(broker.link("history", LinkOptions::default()).await, Err(LinkError::NameInUse(_))));
    assert!(matches!(link.subscribe("a/#/b", QoS::AtMostOnce).await, Err(LinkError::InvalidFilter(_))));
    gw.stop().await;
}

#[tokio::test]
async fn lossless_link_slows_publishers_instead_of_dropping() {
    let gw = TestGateway::start().await;
    let broker = gw.gateway().broker().clone();
    let link = broker.link("slow", LinkOptions { capacity: 8, lossless: true }).await.unwrap();
    link.subscribe("load/#", QoS::AtMostOnce).await.unwrap();
    let publisher = broker.link("producer", LinkOptions::default()).await.unwrap();
    const N: u32 = 5_000;
    let producer = tokio::spawn(async move {
        for i in 0..N {
            publisher.publish(Message::new("load/x", i.to_string(), QoS::AtMostOnce, false)).await.unwrap();
        }
        publisher
    });
    for i in 0..N {
        let d = tokio::time::timeout(crate::support::WAIT, link.recv()).await.unwrap().unwrap();
        assert_eq!(d.message.payload, i.to_string().as_bytes(), "in order, none missing");
        if i % 1000 == 0 {
            // Be slow now and then: the router has to wait for us.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    producer.await.unwrap();
    assert_eq!(link.dropped(), 0);
    gw.stop().await;
}

#[tokio::test]
async fn lossy_link_counts_what_it_drops() {
    let gw = TestGateway::start().await;
    let broker = gw.gateway().broker().clone();
    let link = broker.link("lossy", LinkOptions { capacity: 4, lossless: false }).await.unwrap();
    link.subscribe("x", QoS::AtMostOnce).await.unwrap();
    let publisher = broker.link("p", LinkOptions::default()).await.unwrap();
    for i in 0..10 {
        publisher.publish(Message::new("x", format!("{i}"), QoS::AtMostOnce, false)).await.unwrap();
    }
    crate::support::eventually("drops counted", || async { link.dropped() == 6 }).await;
    let mut got = Vec::new();
    while let Some(d) = link.try_recv() {
        got.push(String::from_utf8(d.message.payload.to_vec()).unwrap());
    }
    assert_eq!(got, ["0", "1", "2", "3"]);
    gw.stop().await;
}

/// A link still held when the gateway stops is told that nothing more will come, and does not keep the router
/// (and with it the shutdown) waiting for the shutdown timeout.
#[tokio::test]
async fn a_live_link_is_let_go_at_shutdown() {
    let gw = TestGateway::start_with(|c| c.shutdown_timeout = std::time::Duration::from_secs(120)).await;
    let link = gw.gateway().broker().link("held", LinkOptions::default()).await.unwrap();
    link.subscribe("plant/#", QoS::AtLeastOnce).await.unwrap();
    let waiting = tokio::spawn(async move { link.recv().await.is_none() });
    tokio::time::timeout(crate::support::WAIT, gw.stop()).await.expect("shutdown does not wait for the link");
    assert!(
        tokio::time::timeout(crate::support::WAIT, waiting).await.unwrap().unwrap(),
        "recv ends with None"
    );
}
