//! A journaled message as read back from `messages`, by either connection type (the sqlx pool's readers and the
//! writer's rusqlite connection), and rebuilt as the broker's [`Message`] or [`Delivery`].

use std::sync::Arc;

use sqlx::Row;

use super::payload_log::{PayloadRef, Reader};
use crate::mqtt::broker::{ClientId, Delivery, Message, MessageProperties};
use crate::mqtt::codec::QoS;

/// A row of `messages` as read back, by either connection type.
#[derive(Debug)]
pub(super) struct StoredRow {
    id: i64,
    ts: i64,
    topic: String,
    payload: Vec<u8>,
    /// Where the payload is in the payload log, if it is not in the row.
    payload_ref: Option<PayloadRef>,
    qos: i64,
    client_id: Option<String>,
    username: Option<String>,
    payload_format: Option<i64>,
    expiry_interval: Option<i64>,
    content_type: Option<String>,
    response_topic: Option<String>,
    correlation_data: Option<Vec<u8>>,
    user_properties: Option<String>,
}

impl StoredRow {
    pub(super) fn from_sqlx(row: &sqlx::sqlite::SqliteRow) -> Result<StoredRow, sqlx::Error> {
        Ok(StoredRow {
            id: row.try_get("id")?,
            ts: row.try_get("ts")?,
            topic: row.try_get("topic")?,
            payload: row.try_get("payload")?,
            payload_ref: PayloadRef::from_columns(
                row.try_get("payload_at")?,
                row.try_get("payload_len")?,
                row.try_get("payload_crc")?,
            ),
            qos: row.try_get("qos")?,
            client_id: row.try_get("client_id")?,
            username: row.try_get("username")?,
            payload_format: row.try_get("payload_format")?,
            expiry_interval: row.try_get("expiry_interval")?,
            content_type: row.try_get("content_type")?,
            response_topic: row.try_get("response_topic")?,
            correlation_data: row.try_get("correlation_data")?,
            user_properties: row.try_get("user_properties")?,
        })
    }

    pub(super) fn from_rusqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRow> {
        Ok(StoredRow {
            id: row.get("id")?,
            ts: row.get("ts")?,
            topic: row.get("topic")?,
            payload: row.get("payload")?,
            payload_ref: PayloadRef::from_columns(
                row.get("payload_at")?,
                row.get("payload_len")?,
                row.get("payload_crc")?,
            ),
            qos: row.get("qos")?,
            client_id: row.get("client_id")?,
            username: row.get("username")?,
            payload_format: row.get("payload_format")?,
            expiry_interval: row.get("expiry_interval")?,
            content_type: row.get("content_type")?,
            response_topic: row.get("response_topic")?,
            correlation_data: row.get("correlation_data")?,
            user_properties: row.get("user_properties")?,
        })
    }

    /// Rebuilds the journaled message, its payload read from the payload log (`log`) if it is there. `None` if
    /// its expiry interval has run out by `now` (counting the time the gateway was down; otherwise it keeps what
    /// remains of it), or if its payload cannot be read (logged).
    pub(super) fn into_message(mut self, now: i64, retain: bool, log: &mut Reader) -> Option<Message> {
        let remaining = match self.expiry_interval {
            Some(e) => match u32::try_from(e - (now - self.ts) / 1000) {
                Ok(r) if r > 0 => Some(r),
                _ => return None,
            },
            None => None,
        };
        if let Some(at) = self.payload_ref {
            match log.read(self.id, at) {
                Ok(payload) => self.payload = payload,
                Err(e @ super::payload_log::PayloadError::Gone { .. }) => {
                    tracing::debug!("{e}: the message is left out");
                    return None;
                }
                Err(e) => {
                    tracing::warn!("{e}: the message is left out");
                    return None;
                }
            }
        }
        let qos = QoS::from_u8(u8::try_from(self.qos).unwrap_or(0)).unwrap_or_default();
        let mut message = Message::new(&self.topic, self.payload, qos, retain);
        message.origin = self.client_id.map(|c| ClientId::new(&c));
        message.username = self.username.map(Arc::from);
        message.properties = MessageProperties {
            payload_format_indicator: self.payload_format.and_then(|p| u8::try_from(p).ok()),
            message_expiry_interval: remaining,
            content_type: self.content_type,
            response_topic: self.response_topic,
            correlation_data: self.correlation_data.map(bytes::Bytes::from),
            user_properties: self
                .user_properties
                .and_then(|j| serde_json::from_str(&j).ok())
                .unwrap_or_default(),
        }
        .boxed();
        let _ = message.journal_id.set(self.id);
        Some(message)
    }
}

/// A delivery as `session_messages` keeps it: the QoS and RETAIN flag this subscriber gets, and its
/// subscription identifiers as a JSON array.
pub(super) fn queued_delivery(message: Message, qos: i64, retain: bool, sub_ids: Option<String>) -> Delivery {
    Delivery {
        message: Arc::new(message),
        qos: u8::try_from(qos).ok().and_then(QoS::from_u8).unwrap_or_default(),
        retain,
        subscription_ids: sub_ids.and_then(|j| serde_json::from_str(&j).ok()).unwrap_or_default(),
    }
}
