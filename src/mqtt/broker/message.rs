//! What the broker routes: an application message as received, and one delivery of it to one subscriber.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::mqtt::codec::{QoS, UserProperties};

/// A client identifier. Cheap to clone: the router, the subscription tree and every message it published refer
/// to the same allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(Arc<str>);

impl ClientId {
    pub fn new(id: &str) -> ClientId {
        ClientId(Arc::from(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for ClientId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// An application message as the broker accepted it. Shared (`Arc`) by every delivery of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// The publishing client, for "no local" subscriptions and for history; `None` for messages the broker
    /// makes itself ($SYS, presence).
    pub origin: Option<ClientId>,
    /// The publisher's user name, for history and ACLs.
    pub username: Option<Arc<str>>,
    /// When the broker accepted it: the message expiry interval counts from here.
    pub received: Instant,
    /// MQTT 5.0 properties, boxed because 3.1.1 traffic and most 5.0 traffic carries none.
    pub properties: Option<Box<MessageProperties>>,
    /// Its position in the store's journal, set by the store when it writes the message. Persistent sessions
    /// keep their queues as references to it.
    pub journal_id: std::sync::OnceLock<i64>,
}

impl Message {
    pub fn new(topic: &str, payload: impl Into<Bytes>, qos: QoS, retain: bool) -> Message {
        Message {
            topic: Arc::from(topic),
            payload: payload.into(),
            qos,
            retain,
            origin: None,
            username: None,
            received: Instant::now(),
            properties: None,
            journal_id: std::sync::OnceLock::new(),
        }
    }

    /// Seconds left before this message expires, `None` if it never does, `Some(0)` once it has.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        let interval = self.properties.as_ref()?.message_expiry_interval?;
        let elapsed =
            u32::try_from(now.saturating_duration_since(self.received).as_secs()).unwrap_or(u32::MAX);
        Some(interval.saturating_sub(elapsed))
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.remaining_expiry(now) == Some(0)
    }
}

/// The MQTT 5.0 publication properties that travel with a message from publisher to subscriber.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageProperties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: UserProperties,
}

impl MessageProperties {
    fn is_empty(&self) -> bool {
        *self == MessageProperties::default()
    }

    /// `None` when there is nothing to carry, so that 3.1.1-shaped messages stay small.
    pub fn boxed(self) -> Option<Box<MessageProperties>> {
        (!self.is_empty()).then(|| Box::new(self))
    }
}

/// One message on its way to one subscriber, at the QoS and with the flags that subscriber gets.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// The lower of the message's and the subscription's QoS.
    pub qos: QoS,
    /// The RETAIN flag as this subscriber sees it (retain-as-published, or a retained message sent at subscribe).
    pub retain: bool,
    /// The identifiers of every subscription of this client that matched (MQTT 5.0).
    pub subscription_ids: Vec<u32>,
}
