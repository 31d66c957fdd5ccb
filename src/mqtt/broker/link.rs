//! The in-process link: how code inside the gateway (history logger, Kafka forwarder, console) subscribes and
//! publishes without a socket.
//!
//! A link is a session of its own, named `link:<name>`, that the router keeps online for as long as the link
//! lives. Deliveries arrive through the same [`SessionQueue`] a network connection drains, so a link sees exactly
//! what a subscriber with the same filters would. What differs is the overflow policy:
//!
//! - [`LinkOptions::lossless`] (the default): when the link's queue is full the router waits for the consumer to
//!   take from it. Nothing is dropped; publishers are slowed down instead (the router's command channel fills
//!   and their connection tasks wait on it, which in turn stops reading their sockets).
//! - `lossless: false`: the link is treated like a network subscriber: excess messages are dropped and counted in
//!   [`Link::dropped`] and in the broker's `messages_dropped` metric, with a warning in the log.
//!
//! A lossless link must be drained by a task that does not itself wait on the broker: a consumer that calls
//! [`Link::publish`] while its own queue is full can deadlock with the router. Publish from another task or
//! another link.

use std::sync::Arc;

use super::message::{ClientId, Delivery, Message};
use super::queue::{QueueLimits, SessionQueue};
use super::{Arrival, Broker, BrokerGone, Command, SubscribeRequest};
use crate::mqtt::codec::{QoS, ReasonCode, SubscribeFilter, SubscriptionOptions};

#[derive(Debug, Clone, Copy)]
pub struct LinkOptions {
    /// Deliveries waiting to be taken before the overflow policy applies.
    pub capacity: usize,
    /// Wait for room rather than drop when full.
    pub lossless: bool,
}

impl Default for LinkOptions {
    fn default() -> LinkOptions {
        LinkOptions { capacity: 4096, lossless: true }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Two links may not share a name: they would share a session.
    #[error("a session named {0} already exists")]
    NameInUse(String),
    #[error("invalid topic filter {0:?}")]
    InvalidFilter(String),
    #[error("invalid topic name {0:?}")]
    InvalidTopic(String),
    #[error(transparent)]
    BrokerGone(#[from] BrokerGone),
}

#[derive(Debug)]
pub struct Link {
    broker: Broker,
    id: ClientId,
    queue: Arc<SessionQueue>,
}

impl Link {
    pub(super) async fn open(broker: Broker, name: &str, options: LinkOptions) -> Result<Link, LinkError> {
        let id = ClientId::new(&format!("link:{name}"));
        let limits = QueueLimits {
            max_queued: options.capacity,
            max_queued_qos0: options.capacity,
            lossless: options.lossless,
        };
        let queue = broker.request(|tx| Command::OpenLink(id.clone(), limits, tx)).await??;
        Ok(Link { broker, id, queue })
    }

    /// The session name of this link, as it appears in `origin` of the messages it publishes.
    pub fn id(&self) -> &ClientId {
        &self.id
    }

    /// Subscribes to `filter` (shared subscriptions included). Retained messages follow at once.
    pub async fn subscribe(&self, filter: &str, qos: QoS) -> Result<ReasonCode, LinkError> {
        let request = SubscribeRequest {
            client_id: self.id.clone(),
            filters: vec![SubscribeFilter {
                filter: filter.to_owned(),
                options: SubscriptionOptions { qos, ..SubscriptionOptions::default() },
            }],
            subscription_id: None,
            principal: None,
            arrival: Arrival::UNKNOWN,
        };
        let reasons = self.broker.subscribe(request).await?;
        match reasons.first() {
            Some(&code) if !code.is_error() => Ok(code),
            _ => Err(LinkError::InvalidFilter(filter.to_owned())),
        }
    }

    pub async fn unsubscribe(&self, filter: &str) -> Result<(), LinkError> {
        self.broker.unsubscribe(self.id.clone(), vec![filter.to_owned()]).await?;
        Ok(())
    }

    /// Publishes as this link. Waits while the router is busy; never drops.
    pub async fn publish(&self, mut message: Message) -> Result<(), LinkError> {
        if !crate::mqtt::codec::topic::valid_topic_name(&message.topic) {
            return Err(LinkError::InvalidTopic(message.topic.to_string()));
        }
        message.origin = Some(self.id.clone());
        crate::mqtt::broker::Metrics::add(&self.broker.metrics().messages_received, 1);
        let message = Arc::new(message);
        if let Some(durable) = self.broker.durable() {
            durable.record_nowait(&message);
        }
        self.broker.publish_shared(message).await?;
        Ok(())
    }

    /// The next delivery, waiting for one if need be. Taking it is its acknowledgement. `None` once the broker
    /// is shutting down and what was queued has been taken.
    pub async fn recv(&self) -> Option<Delivery> {
        loop {
            if let Some(delivery) = self.queue.pop() {
                return Some(delivery);
            }
            if self.queue.is_closed() {
                return None;
            }
            self.queue.ready().await;
        }
    }

    /// The next delivery if one is waiting.
    pub fn try_recv(&self) -> Option<Delivery> {
        self.queue.pop()
    }

    /// Deliveries this link lost to its overflow policy (always 0 for a lossless link).
    pub fn dropped(&self) -> u64 {
        self.queue.stats().dropped
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let command = Command::CloseLink(self.id.clone());
        if let Err(tokio::sync::mpsc::error::TrySendError::Full(command)) =
            self.broker.commands.try_send(command)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // The router is busy: close the session as soon as it has room, so that the name can be reused.
            let commands = self.broker.commands.clone();
            runtime.spawn(async move { commands.send(command).await });
        }
    }
}
