//! rumqttc (an independent MQTT implementation) wrapped for tests: the event loop runs in its own task and every
//! event lands in a channel that tests wait on with a bound.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::support::WAIT;

pub mod v4 {
    use super::*;
    pub use rumqttc::{
        AsyncClient, ConnAck, ConnectReturnCode, Event, LastWill, MqttOptions, Packet, Publish, QoS,
    };

    pub struct Client {
        pub client: AsyncClient,
        events: mpsc::UnboundedReceiver<Result<Event, String>>,
        task: tokio::task::JoinHandle<()>,
    }

    pub fn options(id: &str, port: u16) -> MqttOptions {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        options
    }

    impl Client {
        /// Connects and waits for the CONNACK, which is returned.
        pub async fn connect(options: MqttOptions) -> (Client, ConnAck) {
            let mut client = Client::start(options);
            let ack = client.connack().await;
            (client, ack)
        }

        /// Starts the event loop without waiting for anything.
        pub fn start(options: MqttOptions) -> Client {
            let (client, mut eventloop) = AsyncClient::new(options, 1000);
            let (tx, events) = mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(event) => {
                            if tx.send(Ok(event)).is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            break;
                        }
                    }
                }
            });
            Client { client, events, task }
        }

        /// Drops the connection without DISCONNECT, as a crashed device or a cut cable would.
        pub async fn kill(self) {
            self.task.abort();
            let _ = self.task.await;
        }

        pub async fn next_event(&mut self) -> Result<Event, String> {
            tokio::time::timeout(WAIT, self.events.recv())
                .await
                .expect("timed out waiting for an event")
                .unwrap_or(Err("event loop ended".into()))
        }

        /// The next incoming packet for which `pick` returns something.
        pub async fn expect<T>(&mut self, mut pick: impl FnMut(&Packet) -> Option<T>) -> T {
            loop {
                match self.next_event().await {
                    Ok(Event::Incoming(packet)) => {
                        if let Some(t) = pick(&packet) {
                            return t;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => panic!("connection failed while waiting: {e}"),
                }
            }
        }

        pub async fn connack(&mut self) -> ConnAck {
            self.expect(|p| match p {
                Packet::ConnAck(ack) => Some(ack.clone()),
                _ => None,
            })
            .await
        }

        pub async fn suback(&mut self) -> Vec<rumqttc::SubscribeReasonCode> {
            self.expect(|p| match p {
                Packet::SubAck(ack) => Some(ack.return_codes.clone()),
                _ => None,
            })
            .await
        }

        pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
            self.client.subscribe(filter, qos).await.unwrap();
            self.suback().await;
        }

        pub async fn publish_msg(&mut self) -> Publish {
            self.expect(|p| match p {
                Packet::Publish(publish) => Some(publish.clone()),
                _ => None,
            })
            .await
        }

        /// Waits for the connection to end, returning the error text.
        pub async fn closed(&mut self) -> String {
            loop {
                if let Err(e) = self.next_event().await {
                    return e;
                }
            }
        }
    }
}

pub mod v5 {
    use super::*;
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::mqttbytes::v5::{
        ConnAck, ConnectReturnCode, Filter, LastWill, LastWillProperties, Packet, Publish, PublishProperties,
        RetainForwardRule, SubscribeProperties, SubscribeReasonCode,
    };
    pub use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    pub struct Client {
        pub client: AsyncClient,
        events: mpsc::UnboundedReceiver<Result<Event, String>>,
        task: tokio::task::JoinHandle<()>,
    }

    pub fn options(id: &str, port: u16) -> MqttOptions {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        options
    }

    impl Client {
        pub async fn connect(options: MqttOptions) -> (Client, ConnAck) {
            let mut client = Client::start(options);
            let ack = client.connack().await;
            (client, ack)
        }

        pub fn start(options: MqttOptions) -> Client {
            let (client, mut eventloop) = AsyncClient::new(options, 1000);
            let (tx, events) = mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(event) => {
                            if tx.send(Ok(event)).is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(format!("{e:?}")));
                            break;
                        }
                    }
                }
            });
            Client { client, events, task }
        }

        /// Drops the connection without DISCONNECT, as a crashed device or a cut cable would.
        pub async fn kill(self) {
            self.task.abort();
            let _ = self.task.await;
        }

        pub async fn next_event(&mut self) -> Result<Event, String> {
            tokio::time::timeout(WAIT, self.events.recv())
                .await
                .expect("timed out waiting for an event")
                .unwrap_or(Err("event loop ended".into()))
        }

        pub async fn expect<T>(&mut self, mut pick: impl FnMut(&Packet) -> Option<T>) -> T {
            loop {
                match self.next_event().await {
                    Ok(Event::Incoming(packet)) => {
                        if let Some(t) = pick(&packet) {
                            return t;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => panic!("connection failed while waiting: {e}"),
                }
            }
        }

        pub async fn connack(&mut self) -> ConnAck {
            self.expect(|p| match p {
                Packet::ConnAck(ack) => Some(ack.clone()),
                _ => None,
            })
            .await
        }

        pub async fn suback(&mut self) -> Vec<SubscribeReasonCode> {
            self.expect(|p| match p {
                Packet::SubAck(ack) => Some(ack.return_codes.clone()),
                _ => None,
            })
            .await
        }

        pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
            self.client.subscribe(filter, qos).await.unwrap();
            self.suback().await;
        }

        pub async fn publish_msg(&mut self) -> Publish {
            self.expect(|p| match p {
                Packet::Publish(publish) => Some(publish.clone()),
                _ => None,
            })
            .await
        }

        pub async fn closed(&mut self) -> String {
            loop {
                if let Err(e) = self.next_event().await {
                    return e;
                }
            }
        }
    }
}
