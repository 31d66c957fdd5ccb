//! A downlink route, Kafka → MQTT: commands and set-points from upstream to devices.
//!
//! A member of a Kafka consumer group reads the route's topic; each record is published on the MQTT topic its
//! template makes, as the route's identity, whose access rules must allow it. The record's offset is stored
//! only once the message is in the journal (and routed), and committed from there: a crash re-delivers at most
//! what was published and not yet committed, never loses a record.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use sqlx::SqlitePool;
use tokio::sync::watch;

use super::config::{Downlink, Upstream, expand_downlink_topic};
use super::kafka::{self, KafkaClientError};
use super::settings::Role;
use super::status::{RouteState, StatusBoard};
use crate::auth::Identity;
use crate::mqtt::broker::{Broker, BrokerGone, ClientId, Message};
use crate::mqtt::codec::{QoS, topic};
use crate::timefmt::now_ms;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum DownlinkError {
    #[error(transparent)]
    Kafka(#[from] KafkaClientError),
    #[error("Kafka consumer: {0}")]
    Consumer(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Broker(#[from] BrokerGone),
    #[error("dead-letter list: {0}")]
    DeadLetter(#[from] sqlx::Error),
}

#[derive(Debug, Clone)]
pub(crate) struct DownlinkRoute {
    pub(crate) spec: Downlink,
    pub(crate) upstream: Upstream,
    pub(crate) broker: Broker,
    pub(crate) config_db: SqlitePool,
    pub(crate) gateway: String,
    pub(crate) board: StatusBoard,
}

impl DownlinkRoute {
    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        let name = self.spec.name.clone();
        let mut backoff = Duration::from_millis(500);
        loop {
            self.board.update(&name, |s| s.state = RouteState::Starting);
            match self.session(&mut stop).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(route = %name, "Kafka downlink: {e}; retrying in {backoff:?}");
                    self.board.error(&name, &e.to_string());
                    self.board.update(&name, |s| s.state = RouteState::Error);
                }
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn session(&self, stop: &mut watch::Receiver<bool>) -> Result<(), DownlinkError> {
        let spec = &self.spec;
        let group = spec.group.clone().unwrap_or_else(|| format!("weir-{}-{}", self.gateway, spec.name));
        let client_id = format!("weir-{}-{}", self.gateway, spec.name);
        let consumer: StreamConsumer =
            kafka::config(&self.upstream, Role::Consumer { group: &group }, &client_id).create()?;
        consumer.subscribe(&[&spec.topic])?;
        let principal =
            Identity { username: spec.as_user.clone(), client_id: format!("kafka:{}", spec.name) };
        self.board.update(&spec.name, |s| s.state = RouteState::Idle);
        let result = loop {
            let record = tokio::select! {
                _ = stop.wait_for(|s| *s) => break Ok(()),
                r = consumer.recv() => r,
            };
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    // Transient (broker down, rebalancing): librdkafka reconnects by itself.
                    self.board.error(&spec.name, &e.to_string());
                    self.board.update(&spec.name, |s| s.state = RouteState::Stalled);
                    continue;
                }
            };
            if let Err(e) = self.deliver(&record, &principal, stop).await {
                break Err(e);
            }
            consumer.store_offset_from_message(&record)?;
            self.board.update(&spec.name, |s| {
                s.forwarded += 1;
                s.last_ack_ms = Some(now_ms());
                s.state = RouteState::Forwarding;
            });
        };
        // What was stored is committed now rather than at the next auto-commit.
        let _ = consumer.commit_consumer_state(CommitMode::Sync);
        result
    }

    /// Publishes one record on MQTT, waiting until it is in the journal; or keeps it as a dead letter.
    async fn deliver(
        &self,
        record: &BorrowedMessage<'_>,
        principal: &Identity,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), DownlinkError> {
        let spec = &self.spec;
        let header = |name: &str| {
            record
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == name).and_then(|h| h.value.map(<[u8]>::to_vec)))
        };
        let source = format!("{}/{}@{}", record.topic(), record.partition(), record.offset());
        let payload = record.payload().unwrap_or_default();
        let mqtt_topic = match expand_downlink_topic(&spec.mqtt_topic, record.key(), &header) {
            Ok(t) if topic::valid_topic_name(&t) && !t.starts_with('$') => t,
            Ok(t) => return self.dead_letter(&source, &t, "not a valid MQTT topic name", payload).await,
            Err(reason) => return self.dead_letter(&source, "", &reason, payload).await,
        };
        if let Some(authorizer) = self.broker.authorizer()
            && !authorizer.can_publish(principal, &mqtt_topic)
        {
            let who = spec.as_user.as_deref().unwrap_or("anonymous");
            let reason = format!("the access rules do not allow {who} to publish here");
            return self.dead_letter(&source, &mqtt_topic, &reason, payload).await;
        }
        let qos = match spec.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        let mut message = Message::new(&mqtt_topic, payload.to_vec(), qos, spec.retain);
        message.origin = Some(ClientId::new(&principal.client_id));
        message.username = spec.as_user.as_deref().map(Arc::from);
        let message = Arc::new(message);
        if let Some(durable) = self.broker.durable() {
            // Until the journal has it: only then may the offset move (a full disk holds the route, not loses).
            loop {
                let completion = durable.record(&message).await;
                match completion.await {
                    Ok(Ok(())) => break,
                    Ok(Err(refusal)) => {
                        self.board
                            .error(&spec.name, &format!("the journal refused a downlink message: {refusal}"));
                        if *stop.borrow() {
                            return Err(DownlinkError::Broker(BrokerGone));
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(_) => return Err(DownlinkError::Broker(BrokerGone)),
                }
            }
        }
        crate::mqtt::broker::Metrics::add(&self.broker.metrics().messages_received, 1);
        self.broker.publish_shared(message).await?;
        Ok(())
    }

    async fn dead_letter(
        &self,
        source: &str,
        destination: &str,
        reason: &str,
        payload: &[u8],
    ) -> Result<(), DownlinkError> {
        let route = &self.spec.name;
        tracing::warn!(route = %route, %source, "Kafka downlink record not published: {reason}; kept in the dead letters");
        sqlx::query(
            "INSERT INTO kafka_dead_letters (route, ts, journal_id, source, destination, reason, payload) \
             VALUES (?, ?, NULL, ?, ?, ?, ?)",
        )
        .bind(route)
        .bind(now_ms())
        .bind(source)
        .bind(destination)
        .bind(reason)
        .bind(payload)
        .execute(&self.config_db)
        .await?;
        self.board.update(route, |s| s.dead_letters += 1);
        self.board.error(route, &format!("dead letter: {reason}"));
        Ok(())
    }
}
