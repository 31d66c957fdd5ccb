//! What a journal message becomes in Kafka: the value in the route's format (`raw`, `json`, `sparkplug`), and,
//! for Sparkplug B, the aliases that name its metrics. Used by the uplink and by the replay of dead letters.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::SqlitePool;

use super::config::ValueFormat;
use crate::sparkplug::topic::{self, EdgeTopic, MessageType};
use crate::sparkplug::{Aliases, Decoded, payload, payload_json};
use crate::store::StoreError;
use crate::store::history::{self, HistoryQuery, Order, StoredMessage};

/// An edge node that keeps sending aliases no birth declares is looked up in the journal again at most this often.
const LOOKUP_AGAIN_AFTER: Duration = Duration::from_secs(1);

/// A record's value, or why the message cannot be one (it becomes a dead letter with that reason).
pub(crate) async fn value(
    format: ValueFormat,
    book: &mut AliasBook,
    journal: &SqlitePool,
    m: &StoredMessage,
) -> Result<Result<Vec<u8>, String>, StoreError> {
    Ok(match format {
        ValueFormat::Raw => Ok(m.payload.clone()),
        ValueFormat::Json => Ok(envelope(m)),
        ValueFormat::Sparkplug => book.json(journal, m).await?,
    })
}

/// The JSON envelope: the payload as text when it is UTF-8, else base64.
pub(crate) fn envelope(m: &StoredMessage) -> Vec<u8> {
    use base64ct::Encoding as _;
    let (payload, encoding) = match std::str::from_utf8(&m.payload) {
        Ok(text) => (text.to_owned(), "utf8"),
        Err(_) => (base64ct::Base64::encode_string(&m.payload), "base64"),
    };
    let value = serde_json::json!({
        "topic": m.topic,
        "payload": payload,
        "payload_encoding": encoding,
        "qos": m.qos,
        "retain": m.retain,
        "client_id": m.client_id,
        "username": m.username,
        "content_type": m.content_type,
        "user_properties": m.user_properties,
        "timestamp": m.ts,
        "journal_id": m.id,
    });
    serde_json::to_vec(&value).unwrap_or_default()
}

/// The aliases of the edge nodes and devices a Sparkplug route forwards: learnt from the births it reads, and,
/// for one whose birth it has not read (it started after it, or its filter leaves births out), from the journal:
/// the newest birth before the message, else the broker's retained copy under `$sparkplug/certificates/` (what
/// the Sparkplug service restores its state from after a restart).
#[derive(Debug, Default)]
pub(crate) struct AliasBook {
    /// By `group/node` or `group/node/device`.
    known: HashMap<String, Known>,
}

#[derive(Debug)]
struct Known {
    aliases: Aliases,
    /// When the journal was last asked, if the aliases came from it.
    looked_up: Option<Instant>,
}

impl AliasBook {
    /// A Sparkplug B message as JSON (`sparkplug::payload_json`: aliases resolved, `is_historical` kept), or why
    /// not: a topic outside the Sparkplug B namespace, or a payload that does not decode.
    pub(crate) async fn json(
        &mut self,
        journal: &SqlitePool,
        m: &StoredMessage,
    ) -> Result<Result<Vec<u8>, String>, StoreError> {
        let decoded = match payload::decode(&m.topic, &m.payload) {
            None => {
                return Ok(Err(format!(
                    "{:?} is not a Sparkplug B topic (the route's format is sparkplug)",
                    m.topic
                )));
            }
            Some(Err(e)) => return Ok(Err(e.to_string())),
            Some(Ok(d)) => d,
        };
        let json = match decoded {
            Decoded::State { host, state } => serde_json::json!({
                "type": "STATE",
                "host": host,
                "online": state.online,
                "timestamp": state.timestamp,
            }),
            Decoded::Edge { topic: edge, payload } => {
                let key = edge_key(&edge);
                match edge.kind {
                    MessageType::NBirth | MessageType::DBirth => {
                        let aliases = Aliases::from_birth(&payload);
                        self.known.insert(key.clone(), Known { aliases, looked_up: None });
                    }
                    MessageType::NDeath => {
                        // The node and its devices declare their aliases again when they are reborn.
                        self.known.retain(|k, _| k != &key && !k.starts_with(&format!("{key}/")));
                    }
                    MessageType::DDeath => {
                        self.known.remove(&key);
                    }
                    _ => {
                        let unresolved = |k: &Known| {
                            payload.metrics.iter().any(|metric| k.aliases.resolve(metric).0.is_none())
                        };
                        let stale = match self.known.get(&key) {
                            None => true,
                            Some(k) => {
                                unresolved(k)
                                    && k.looked_up.is_none_or(|at| at.elapsed() > LOOKUP_AGAIN_AFTER)
                            }
                        };
                        if stale {
                            let aliases = birth_before(journal, &edge, m.id).await?.unwrap_or_default();
                            self.known
                                .insert(key.clone(), Known { aliases, looked_up: Some(Instant::now()) });
                        }
                    }
                }
                let empty = Aliases::default();
                let aliases = self.known.get(&key).map_or(&empty, |k| &k.aliases);
                payload_json(&edge, &payload, aliases)
            }
        };
        Ok(Ok(serde_json::to_vec(&json).unwrap_or_default()))
    }
}

fn edge_key(edge: &EdgeTopic<'_>) -> String {
    match edge.device {
        Some(device) => format!("{}/{}/{device}", edge.group, edge.node),
        None => format!("{}/{}", edge.group, edge.node),
    }
}

/// The aliases of the newest birth of `edge`'s node or device journaled before `id`, else of the retained copy
/// of its birth.
async fn birth_before(
    pool: &SqlitePool,
    edge: &EdgeTopic<'_>,
    id: i64,
) -> Result<Option<Aliases>, StoreError> {
    let birth = match edge.device {
        Some(device) => format!("{}/{}/DBIRTH/{}/{device}", topic::NAMESPACE, edge.group, edge.node),
        None => format!("{}/{}/NBIRTH/{}", topic::NAMESPACE, edge.group, edge.node),
    };
    let before =
        HistoryQuery { order: Order::NewestFirst, after: Some(id), limit: 1, ..HistoryQuery::new(&birth) };
    let certificate = HistoryQuery {
        order: Order::NewestFirst,
        limit: 1,
        ..HistoryQuery::new(&format!("{}/{birth}", topic::CERTIFICATES))
    };
    for q in [before, certificate] {
        if let Some(m) = history::query(pool, &q).await?.messages.first()
            && let Ok(p) = payload::decode_payload(&m.payload)
        {
            return Ok(Some(Aliases::from_birth(&p)));
        }
    }
    Ok(None)
}
