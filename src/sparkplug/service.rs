//! The Sparkplug service: a task of the forwarders stage that feeds the [`Tracker`] from an in-process link
//! subscribed to `spBv1.0/#` (not lossless: a slow tracker loses state updates, counted, never slows a
//! publisher), and the administrator's actions on edge nodes (rebirth).
//!
//! At start-up the births are read back from the journal (`store::history`, the retained copies under
//! `$sparkplug/certificates/`, newest per topic), with the data and the deaths recorded after them, so that the
//! last values are known and the aliases of data published after a restart resolve without waiting for a
//! rebirth.
//!
//! The tracker is behind a `std::sync::Mutex`, held for one message's update or one snapshot's clone, never
//! across an `.await`: the console reads it from its handlers while this task writes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::SqlitePool;
use tokio::task::JoinHandle;

use super::payload::{self, Aliases, Decoded};
use super::proto;
use super::state::Tracker;
use super::topic::{self, MessageType, Topic};
use crate::mqtt::broker::{Broker, Link, LinkError, LinkOptions, Message};
use crate::mqtt::codec::QoS;
use crate::shutdown::StopToken;
use crate::store::history::{self, HistoryQuery, Order};
use crate::store::{Journal, StoreError};

/// A node gets at most one rebirth request from the gateway in this time.
pub const REBIRTH_INTERVAL: Duration = Duration::from_secs(10);
/// Births read back at start-up, at most.
const RESTORE_LIMIT: usize = 10_000;
/// Data messages read back after one birth at start-up, at most (newest first, until every metric of the birth
/// has a value).
const RESTORE_DATA_PER_BIRTH: usize = 1_000;
/// Data messages read back at start-up in all, at most: shared between the births (at least one each).
const RESTORE_DATA_LIMIT: usize = 50_000;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SparkplugError {
    #[error("{0:?} is not a valid Sparkplug identifier")]
    InvalidId(String),
    /// No birth or data of this edge node has been seen (since the journal's oldest birth).
    #[error("edge node {group}/{node} is unknown to the gateway (no birth or data seen from it)")]
    UnknownNode { group: String, node: String },
    /// The rate limit: the node was asked less than [`REBIRTH_INTERVAL`] ago.
    #[error("a rebirth was requested from {group}/{node} {ago} s ago; wait {wait} s")]
    TooSoon { group: String, node: String, ago: u64, wait: u64 },
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A metric's series: which metric, of which edge node or device, over which range.
#[derive(Debug, Clone, Default)]
pub struct SeriesQuery {
    pub group: String,
    pub node: String,
    /// `None`: a metric of the edge node itself.
    pub device: Option<String>,
    pub metric: String,
    /// Unix ms, inclusive.
    pub since: Option<i64>,
    /// Unix ms, exclusive.
    pub until: Option<i64>,
    pub max_points: usize,
}

/// A handle on the running service: cheap to clone (the console has one).
#[derive(Debug, Clone)]
pub struct Sparkplug {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tracker: Mutex<Tracker>,
    link: Link,
    journal: Option<Journal>,
    /// When each (group, node) was last asked to rebirth.
    rebirths: Mutex<HashMap<(String, String), Instant>>,
}

impl Sparkplug {
    /// Opens the link, subscribes, reads the births back from the journal and starts the task that follows the
    /// traffic until `stop` fires.
    pub async fn start(
        broker: &Broker,
        journal: Option<Journal>,
        mut stop: StopToken,
    ) -> Result<(Sparkplug, JoinHandle<()>), SparkplugError> {
        let link = broker.link("sparkplug", LinkOptions { capacity: 16_384, lossless: false }).await?;
        // Subscribed before reading the journal: what arrives meanwhile waits in the link's queue.
        link.subscribe(&format!("{}/#", topic::NAMESPACE), QoS::AtMostOnce).await?;
        let mut tracker = Tracker::default();
        if let Some(journal) = &journal {
            // What the router published before the link subscribed (the NDEATH wills of edge nodes connected
            // when the gateway stopped) is read back with the rest.
            journal.flush().await;
            match restore(journal.pool(), &mut tracker).await {
                Ok(r) if r.births > 0 => {
                    tracing::info!(
                        births = r.births,
                        data = r.data,
                        "sparkplug: births and last values read back"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "sparkplug: births could not be read back"),
            }
        }
        let inner = Arc::new(Inner {
            tracker: Mutex::new(tracker),
            link,
            journal,
            rebirths: Mutex::new(HashMap::new()),
        });
        let service = Sparkplug { inner: inner.clone() };
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    delivery = inner.link.recv() => match delivery {
                        Some(d) => {
                            let now = crate::timefmt::now_ms();
                            let mut tracker = inner.tracker.lock().unwrap_or_else(PoisonError::into_inner);
                            tracker.observe(&d.message.topic, &d.message.payload, now);
                        }
                        None => break,
                    },
                    _ = stop.stopped() => break,
                }
            }
            tracing::info!("sparkplug: stopped");
        });
        Ok((service, task))
    }

    /// A copy of the current state, for the console.
    pub fn snapshot(&self) -> Tracker {
        self.inner.tracker.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Messages the link lost because the tracker was behind.
    pub fn dropped(&self) -> u64 {
        self.inner.link.dropped()
    }

    /// Sends the `Node Control/Rebirth` NCMD to an edge node the gateway knows, at most once per
    /// [`REBIRTH_INTERVAL`] per node, and writes it to the audit log (`config` is the configuration database) as
    /// `actor`'s action. Never sent by the gateway on its own.
    pub async fn rebirth(
        &self,
        group: &str,
        node: &str,
        actor: &str,
        config: &SqlitePool,
    ) -> Result<(), SparkplugError> {
        for id in [group, node] {
            if !topic::valid_identifier(id) {
                return Err(SparkplugError::InvalidId(id.to_owned()));
            }
        }
        let known = {
            let tracker = self.inner.tracker.lock().unwrap_or_else(PoisonError::into_inner);
            tracker.groups.get(group).is_some_and(|nodes| nodes.contains_key(node))
        };
        if !known {
            return Err(SparkplugError::UnknownNode { group: group.to_owned(), node: node.to_owned() });
        }
        {
            let now = Instant::now();
            let mut rebirths = self.inner.rebirths.lock().unwrap_or_else(PoisonError::into_inner);
            let key = (group.to_owned(), node.to_owned());
            if let Some(last) = rebirths.get(&key)
                && now.duration_since(*last) < REBIRTH_INTERVAL
            {
                let ago = now.duration_since(*last);
                return Err(SparkplugError::TooSoon {
                    group: group.to_owned(),
                    node: node.to_owned(),
                    ago: ago.as_secs(),
                    wait: (REBIRTH_INTERVAL - ago).as_secs().max(1),
                });
            }
            rebirths.insert(key, now);
        }
        let now = u64::try_from(crate::timefmt::now_ms()).unwrap_or(0);
        let command = payload::rebirth_command(now);
        let message = Message::new(&topic::node_command_topic(group, node), command, QoS::AtLeastOnce, false);
        self.inner.link.publish(message).await?;
        crate::store::audit(config, actor, "sparkplug.rebirth", &format!("{group}/{node}")).await?;
        tracing::info!(group, node, actor, "sparkplug: rebirth requested");
        Ok(())
    }

    /// A numeric metric of an edge node (`device: None`) or device over a time range, as chartable points
    /// `(unix ms, value)`, oldest first, at most `max_points`: read from the journal, aliases resolved with the
    /// births found in the range or, before the first, those known now.
    pub async fn series(&self, q: &SeriesQuery) -> Result<Vec<(i64, f64)>, SparkplugError> {
        let (group, node, device, metric) = (&q.group, &q.node, q.device.as_deref(), q.metric.as_str());
        let Some(journal) = &self.inner.journal else { return Ok(Vec::new()) };
        let mut aliases = {
            let tracker = self.inner.tracker.lock().unwrap_or_else(PoisonError::into_inner);
            tracker.aliases(group, node, device).cloned().unwrap_or_default()
        };
        let filter = match device {
            None => format!("{}/{group}/+/{node}", topic::NAMESPACE),
            Some(d) => format!("{}/{group}/+/{node}/{d}", topic::NAMESPACE),
        };
        let max_points = q.max_points;
        let mut h = HistoryQuery::new(&filter);
        (h.since, h.until, h.order, h.limit) = (q.since, q.until, Order::OldestFirst, 500);
        let mut q = h;
        let mut points = Vec::new();
        loop {
            let page = history::query(journal.pool(), &q).await?;
            for m in &page.messages {
                let Some(Ok(Decoded::Edge { topic, payload })) = payload::decode(&m.topic, &m.payload) else {
                    continue;
                };
                match topic.kind {
                    MessageType::NBirth | MessageType::DBirth => aliases = Aliases::from_birth(&payload),
                    MessageType::NData | MessageType::DData => {}
                    _ => continue,
                }
                for metric_value in &payload.metrics {
                    let (name, datatype) = aliases.resolve(metric_value);
                    if name != Some(metric) {
                        continue;
                    }
                    if let Some(v) = payload::typed_value(metric_value, datatype).number() {
                        let at =
                            metric_value.timestamp.or(payload.timestamp).and_then(|t| i64::try_from(t).ok());
                        points.push((at.unwrap_or(m.ts), v));
                    }
                }
            }
            if points.len() >= max_points {
                points.truncate(max_points);
                break;
            }
            match page.next {
                Some(next) => q.after = Some(next),
                None => break,
            }
        }
        Ok(points)
    }
}

/// What [`restore`] read back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Restored {
    births: usize,
    data: usize,
}

/// A journaled message to apply, ordered by its journal id.
struct Replay {
    id: i64,
    /// The Sparkplug topic (a birth's, not its certificate's).
    topic: String,
    payload: Vec<u8>,
    ts: i64,
}

/// Reads back the newest birth per topic from the journal (the retained certificates) and, after each, the
/// newest NDATA/DDATA (bounded: until every metric of the birth has a value, or its share of
/// [`RESTORE_DATA_LIMIT`], at most [`RESTORE_DATA_PER_BIRTH`] messages) and the last death, and applies them all
/// in journal order: the state after a restart has the last values, aliases resolved. Sequence numbers start
/// afresh: what came between is not known.
async fn restore(pool: &SqlitePool, tracker: &mut Tracker) -> Result<Restored, StoreError> {
    let mut q = HistoryQuery::new(&format!("{}/{}/#", topic::CERTIFICATES, topic::NAMESPACE));
    (q.order, q.limit) = (Order::NewestFirst, 500);
    let mut births: BTreeMap<String, history::StoredMessage> = BTreeMap::new();
    let mut read = 0;
    loop {
        let page = history::query(pool, &q).await?;
        read += page.messages.len();
        for m in page.messages {
            births.entry(m.topic.clone()).or_insert(m);
        }
        match page.next {
            Some(next) if read < RESTORE_LIMIT => q.after = Some(next),
            _ => break,
        }
    }
    let mut births: Vec<_> = births.into_values().collect();
    births.sort_by_key(|m| m.id);
    let mut restored = Restored { births: births.len(), data: 0 };
    // Each birth gets its share of the overall bound, so that none is left without its values.
    let per_birth = RESTORE_DATA_PER_BIRTH.min(RESTORE_DATA_LIMIT / births.len().max(1)).max(1);
    let mut replay = Vec::new();
    for birth in births {
        let Some(edge_topic) =
            birth.topic.strip_prefix(topic::CERTIFICATES).and_then(|t| t.strip_prefix('/'))
        else {
            continue;
        };
        let Some(Topic::Edge(edge)) = Topic::parse(edge_topic) else { continue };
        let Ok(payload) = payload::decode_payload(&birth.payload) else { continue };
        // The birth itself is journaled just before its certificate, and data published right after it may
        // come between the two: what follows the birth is what follows the original, when it is still there.
        let mut q = HistoryQuery::new(edge_topic);
        (q.order, q.limit, q.after) = (Order::NewestFirst, 1, Some(birth.id));
        let start = history::query(pool, &q).await?.messages.first().map_or(birth.id, |m| m.id);
        let (death_type, data_type) = match edge.kind {
            MessageType::NBirth => (MessageType::NDeath, MessageType::NData),
            _ => (MessageType::DDeath, MessageType::DData),
        };
        let sibling = |kind: MessageType| match edge.device {
            None => format!("{}/{}/{kind}/{}", topic::NAMESPACE, edge.group, edge.node),
            Some(device) => format!("{}/{}/{kind}/{}/{device}", topic::NAMESPACE, edge.group, edge.node),
        };
        let mut q = HistoryQuery::new(&sibling(death_type));
        (q.order, q.limit) = (Order::NewestFirst, 1);
        if let Some(death) = history::query(pool, &q).await?.messages.into_iter().next()
            && death.id > start
        {
            replay.push(Replay { id: death.id, topic: death.topic, payload: death.payload, ts: death.ts });
        }
        let data = latest_data(pool, &sibling(data_type), start, &payload, per_birth).await?;
        restored.data += data.len();
        replay.extend(data);
        replay.push(Replay { id: start, topic: edge_topic.to_owned(), payload: birth.payload, ts: birth.ts });
    }
    replay.sort_by_key(|r| r.id);
    for r in replay {
        tracker.observe(&r.topic, &r.payload, r.ts);
    }
    for node in tracker.groups.values_mut().flat_map(|nodes| nodes.values_mut()) {
        node.last_seq = None;
        node.gaps = 0;
        node.last_gap = None;
    }
    Ok(restored)
}

/// The data messages on `data_topic` after journal id `after`, newest first, until each metric the birth
/// declared has been seen in one of them or `budget` messages have been read: the last values, whatever the
/// edge node reports by exception.
async fn latest_data(
    pool: &SqlitePool,
    data_topic: &str,
    after: i64,
    birth: &proto::Payload,
    budget: usize,
) -> Result<Vec<Replay>, StoreError> {
    let aliases = Aliases::from_birth(birth);
    // bdSeq and the control metrics are declared by the birth and never sent as data.
    let mut missing: HashSet<&str> = birth
        .metrics
        .iter()
        .filter_map(|m| m.name.as_deref())
        .filter(|n| *n != "bdSeq" && !n.starts_with("Node Control/") && !n.starts_with("Device Control/"))
        .collect();
    let mut q = HistoryQuery::new(data_topic);
    // A small first page: a node that reports every metric each time needs one message.
    (q.order, q.limit) = (Order::NewestFirst, 8.min(budget));
    let mut out = Vec::new();
    while !missing.is_empty() && out.len() < budget {
        let page = history::query(pool, &q).await?;
        for m in page.messages {
            if m.id <= after || out.len() >= budget || missing.is_empty() {
                return Ok(out);
            }
            if let Ok(data) = payload::decode_payload(&m.payload) {
                for metric in &data.metrics {
                    if let (Some(name), _) = aliases.resolve(metric) {
                        missing.remove(name);
                    }
                }
            }
            out.push(Replay { id: m.id, topic: m.topic, payload: m.payload, ts: m.ts });
        }
        match page.next {
            Some(next) => (q.after, q.limit) = (Some(next), 100.min(budget.saturating_sub(out.len()))),
            None => break,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::sparkplug::Value;
    use crate::sparkplug::payload::tests::spec_nbirth;
    use crate::sparkplug::proto::{Metric, MetricValue, Payload};
    use crate::store::JournalConfig;

    fn data(seq: u64, metrics: Vec<Metric>) -> Vec<u8> {
        Payload { timestamp: Some(10), seq: Some(seq), metrics, ..Payload::default() }.encode_to_vec()
    }

    fn by_alias(alias: u64, value: MetricValue) -> Metric {
        Metric { alias: Some(alias), value: Some(value), ..Metric::default() }
    }

    /// The births, the data after them (the newest, as far as needed), and the deaths after them, in journal
    /// order; nothing from before a birth.
    #[tokio::test]
    async fn restore_reads_the_last_values_after_each_birth_as_far_as_needed() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), JournalConfig::default()).await.unwrap();
        let append = |topic: &str, bytes: Vec<u8>| {
            let message = Arc::new(Message::new(topic, bytes, QoS::AtLeastOnce, false));
            journal.append_nowait(&message);
        };
        let cert = |topic: &str| format!("{}/{topic}", topic::CERTIFICATES);
        let birth = spec_nbirth().encode_to_vec();
        // Node B: data from before its birth (never applied), then only Supply Voltage, then its death.
        append("spBv1.0/G/NDATA/B", data(9, vec![by_alias(1, MetricValue::FloatValue(99.0))]));
        append("spBv1.0/G/NBIRTH/B", birth.clone());
        append(&cert("spBv1.0/G/NBIRTH/B"), birth.clone());
        append("spBv1.0/G/NDATA/B", data(1, vec![by_alias(1, MetricValue::FloatValue(1.0))]));
        append("spBv1.0/G/NDEATH/B", Payload::default().encode_to_vec());
        // Node A: data between its birth and the birth's certificate, then every metric, newest last; a device.
        append("spBv1.0/G/NBIRTH/A", birth.clone());
        append("spBv1.0/G/NDATA/A", data(1, vec![by_alias(1, MetricValue::FloatValue(13.0))]));
        append(&cert("spBv1.0/G/NBIRTH/A"), birth.clone());
        append("spBv1.0/G/NDATA/A", data(2, vec![by_alias(2, MetricValue::IntValue(5))]));
        append("spBv1.0/G/NDATA/A", data(3, vec![by_alias(1, MetricValue::FloatValue(14.5))]));
        append("spBv1.0/G/NDATA/A", data(4, vec![by_alias(3, MetricValue::StringValue("x".into()))]));
        let dbirth = spec_nbirth().encode_to_vec();
        append("spBv1.0/G/DBIRTH/A/Pump", dbirth.clone());
        append(&cert("spBv1.0/G/DBIRTH/A/Pump"), dbirth);
        append("spBv1.0/G/DDATA/A/Pump", data(6, vec![by_alias(1, MetricValue::FloatValue(3.0))]));
        append("spBv1.0/G/DDEATH/A/Pump", data(7, vec![]));
        journal.flush().await;

        let mut tracker = Tracker::default();
        let restored = restore(journal.pool(), &mut tracker).await.unwrap();
        // A: the three newest messages name every metric (the one before them is not read); B: one; Pump: one.
        assert_eq!(restored, Restored { births: 3, data: 5 });
        let value = |node: &str, device: Option<&str>, name: &str| {
            let n = &tracker.groups["G"][node];
            let metrics = match device {
                None => &n.metrics,
                Some(d) => &n.devices[d].metrics,
            };
            (metrics[name].value.clone(), metrics[name].stale)
        };
        assert_eq!(value("A", None, "Supply Voltage"), (Value::Float(14.5), false));
        assert_eq!(value("A", None, "Temperature"), (Value::Int(5), false));
        assert_eq!(value("A", None, "Label"), (Value::String("x".into()), false));
        assert_eq!(value("A", Some("Pump"), "Supply Voltage"), (Value::Float(3.0), true), "stale: DDEATH");
        assert!(tracker.groups["G"]["A"].online && !tracker.groups["G"]["A"].devices["Pump"].online);
        assert_eq!(
            value("B", None, "Supply Voltage"),
            (Value::Float(1.0), true),
            "not the 99 before the birth"
        );
        assert_eq!(value("B", None, "Temperature"), (Value::Int(-10), true), "the birth's");
        assert!(!tracker.groups["G"]["B"].online);
        assert!(
            tracker.groups["G"].values().all(|n| n.last_seq.is_none() && n.gaps == 0 && n.unresolved == 0)
        );

        // The bound holds whatever is missing.
        let all = latest_data(journal.pool(), "spBv1.0/G/NDATA/A", 0, &spec_nbirth(), 2).await.unwrap();
        assert_eq!(all.len(), 2);
        journal.close().await;
    }
}
