//! What the gateway knows of the Sparkplug B edge nodes and host applications that talk through it, built from
//! the messages it routes: pure (a message and the time in, the state changed), so that it is tested without a
//! broker. The service (`service.rs`) feeds it from an in-process link and shares it with the console.
//!
//! The rules followed, from the specification's host application requirements (chapter 7 and 10):
//! - an NBIRTH makes the node online with its `bdSeq`, its sequence number and its metrics (aliases declared
//!   there resolve later data); its devices are offline until their own DBIRTH;
//! - an NDEATH ends the node only if its `bdSeq` matches the birth's (an older will arriving late is ignored,
//!   and counted); every metric of the node and of its devices is then stale;
//! - every NBIRTH, NDATA, DBIRTH, DDATA and DDEATH carries a sequence number 0-255 that follows the previous
//!   one; a jump is a gap, counted and shown (never answered automatically);
//! - a `STATE` older than the one known for its host is ignored.

use std::collections::BTreeMap;

use super::payload::{self, Aliases, Decoded, Value};
use super::proto::{DataType, Metric, Payload};
use super::topic::{EdgeTopic, MessageType};

/// Malformed payloads whose details are kept for the console.
const KEPT_ERRORS: usize = 20;

#[derive(Debug, Clone, Default)]
pub struct Tracker {
    /// Group id -> edge node id -> node.
    pub groups: BTreeMap<String, BTreeMap<String, Node>>,
    pub hosts: BTreeMap<String, Host>,
    /// Payloads on Sparkplug topics that did not decode.
    pub malformed: u64,
    /// The latest of them, newest last.
    pub errors: Vec<Malformed>,
}

#[derive(Debug, Clone, Default)]
pub struct Node {
    pub online: bool,
    /// Unix ms of the last birth or death.
    pub changed_at: i64,
    pub last_message_at: i64,
    pub bd_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub births: u64,
    pub deaths: u64,
    /// NDEATHs whose bdSeq did not match the current birth: ignored.
    pub stale_deaths: u64,
    pub gaps: u64,
    pub last_gap: Option<Gap>,
    /// Data metrics whose alias no birth declared.
    pub unresolved: u64,
    pub aliases: Aliases,
    pub metrics: BTreeMap<String, MetricState>,
    pub devices: BTreeMap<String, Device>,
}

#[derive(Debug, Clone, Default)]
pub struct Device {
    pub online: bool,
    pub changed_at: i64,
    pub aliases: Aliases,
    pub metrics: BTreeMap<String, MetricState>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricState {
    pub alias: Option<u64>,
    pub datatype: DataType,
    pub value: Value,
    /// The metric's own timestamp (unix ms), or the payload's.
    pub timestamp: Option<u64>,
    pub is_historical: bool,
    /// Its node or device died (or was reborn without it) since this value.
    pub stale: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub expected: u64,
    pub got: u64,
    pub at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    pub online: bool,
    pub timestamp: Option<u64>,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    pub topic: String,
    pub error: String,
    pub at: i64,
}

/// What [`Tracker::observe`] made of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Not in the Sparkplug B namespace.
    Ignored,
    Applied,
    /// A sequence gap was found.
    Gap,
    Malformed,
}

impl Tracker {
    /// Applies one message routed on `topic` at `now` (unix ms).
    pub fn observe(&mut self, topic: &str, bytes: &[u8], now: i64) -> Observed {
        match payload::decode(topic, bytes) {
            None => Observed::Ignored,
            Some(Err(e)) => {
                self.malformed += 1;
                if self.errors.len() >= KEPT_ERRORS {
                    self.errors.remove(0);
                }
                self.errors.push(Malformed { topic: topic.to_owned(), error: e.to_string(), at: now });
                Observed::Malformed
            }
            Some(Ok(Decoded::State { host, state })) => {
                let known = self.hosts.get(host).and_then(|h| h.timestamp);
                if known.is_none_or(|known| state.timestamp.is_none_or(|t| t >= known)) {
                    self.hosts.insert(
                        host.to_owned(),
                        Host { online: state.online, timestamp: state.timestamp, at: now },
                    );
                }
                Observed::Applied
            }
            Some(Ok(Decoded::Edge { topic, payload })) => self.edge(&topic, &payload, now),
        }
    }

    fn edge(&mut self, topic: &EdgeTopic<'_>, payload: &Payload, now: i64) -> Observed {
        if matches!(topic.kind, MessageType::NCmd | MessageType::DCmd) {
            return Observed::Applied;
        }
        let node =
            self.groups.entry(topic.group.to_owned()).or_default().entry(topic.node.to_owned()).or_default();
        node.last_message_at = now;
        let mut gap = false;
        if topic.kind != MessageType::NDeath {
            gap = node.check_seq(payload.seq, topic.kind == MessageType::NBirth, now);
        }
        match (topic.kind, topic.device) {
            (MessageType::NBirth, _) => {
                node.online = true;
                node.changed_at = now;
                node.births += 1;
                node.bd_seq = payload::bd_seq(payload);
                node.aliases = Aliases::from_birth(payload);
                node.metrics = birth_metrics(payload, &node.aliases);
                for device in node.devices.values_mut() {
                    device.online = false;
                    device.metrics.values_mut().for_each(|m| m.stale = true);
                }
            }
            (MessageType::NDeath, _) => {
                let matches = match (payload::bd_seq(payload), node.bd_seq) {
                    (Some(death), Some(birth)) => death == birth,
                    _ => true,
                };
                if !matches {
                    node.stale_deaths += 1;
                    return Observed::Applied;
                }
                node.online = false;
                node.changed_at = now;
                node.deaths += 1;
                node.metrics.values_mut().for_each(|m| m.stale = true);
                for device in node.devices.values_mut() {
                    device.online = false;
                    device.metrics.values_mut().for_each(|m| m.stale = true);
                }
            }
            (MessageType::NData, _) => {
                node.online = true;
                let unresolved = update(&mut node.metrics, &node.aliases, payload);
                node.unresolved += unresolved;
            }
            (MessageType::DBirth, Some(device_id)) => {
                let aliases = Aliases::from_birth(payload);
                let metrics = birth_metrics(payload, &aliases);
                node.devices
                    .insert(device_id.to_owned(), Device { online: true, changed_at: now, aliases, metrics });
            }
            (MessageType::DDeath, Some(device_id)) => {
                let device = node.devices.entry(device_id.to_owned()).or_default();
                device.online = false;
                device.changed_at = now;
                device.metrics.values_mut().for_each(|m| m.stale = true);
            }
            (MessageType::DData, Some(device_id)) => {
                let device = node.devices.entry(device_id.to_owned()).or_default();
                device.online = true;
                let unresolved = update(&mut device.metrics, &device.aliases, payload);
                node.unresolved += unresolved;
            }
            _ => {}
        }
        if gap { Observed::Gap } else { Observed::Applied }
    }

    /// The birth aliases in force for a node (`device: None`) or one of its devices.
    pub fn aliases(&self, group: &str, node: &str, device: Option<&str>) -> Option<&Aliases> {
        let node = self.groups.get(group)?.get(node)?;
        match device {
            None => Some(&node.aliases),
            Some(d) => node.devices.get(d).map(|d| &d.aliases),
        }
    }
}

impl Node {
    /// Records the sequence number; true if it is not the one expected. A birth starts a new sequence.
    fn check_seq(&mut self, seq: Option<u64>, birth: bool, now: i64) -> bool {
        let Some(got) = seq else { return false };
        let gap = match (birth, self.last_seq) {
            (false, Some(last)) if got != (last + 1) % 256 => {
                self.gaps += 1;
                self.last_gap = Some(Gap { expected: (last + 1) % 256, got, at: now });
                true
            }
            _ => false,
        };
        self.last_seq = Some(got);
        gap
    }
}

fn birth_metrics(payload: &Payload, aliases: &Aliases) -> BTreeMap<String, MetricState> {
    let mut metrics = BTreeMap::new();
    update(&mut metrics, aliases, payload);
    metrics
}

/// Applies a payload's metrics to a table; returns how many could not be named (unknown alias).
fn update(metrics: &mut BTreeMap<String, MetricState>, aliases: &Aliases, payload: &Payload) -> u64 {
    let mut unresolved = 0;
    for metric in &payload.metrics {
        let (name, datatype) = aliases.resolve(metric);
        let Some(name) = name else {
            unresolved += 1;
            continue;
        };
        let datatype = match (datatype, metrics.get(name)) {
            (DataType::Unknown, Some(known)) => known.datatype,
            (datatype, _) => datatype,
        };
        metrics.insert(name.to_owned(), state(metric, datatype, payload.timestamp));
    }
    unresolved
}

fn state(metric: &Metric, datatype: DataType, payload_timestamp: Option<u64>) -> MetricState {
    MetricState {
        alias: metric.alias,
        datatype,
        value: payload::typed_value(metric, datatype),
        timestamp: metric.timestamp.or(payload_timestamp),
        is_historical: metric.is_historical.unwrap_or(false),
        stale: false,
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::super::payload::tests::{metric, spec_nbirth};
    use super::super::proto::MetricValue;
    use super::*;

    fn data(seq: u64, metrics: Vec<Metric>) -> Vec<u8> {
        Payload { timestamp: Some(10), seq: Some(seq), metrics, ..Payload::default() }.encode_to_vec()
    }

    fn by_alias(alias: u64, value: MetricValue) -> Metric {
        Metric { alias: Some(alias), value: Some(value), ..Metric::default() }
    }

    #[test]
    fn births_data_gaps_and_deaths() {
        let mut t = Tracker::default();
        assert_eq!(t.observe("spBv1.0/G/NBIRTH/N", &spec_nbirth().encode_to_vec(), 1), Observed::Applied);
        let node = &t.groups["G"]["N"];
        assert!(node.online);
        assert_eq!(node.bd_seq, Some(0));
        assert_eq!(node.metrics["Temperature"].value, Value::Int(-10));
        // Alias-only data resolves through the birth.
        let ndata =
            data(1, vec![by_alias(1, MetricValue::FloatValue(12.5)), by_alias(99, MetricValue::IntValue(1))]);
        assert_eq!(t.observe("spBv1.0/G/NDATA/N", &ndata, 2), Observed::Applied);
        let node = &t.groups["G"]["N"];
        assert_eq!(node.metrics["Supply Voltage"].value, Value::Float(12.5));
        assert_eq!(node.metrics["Supply Voltage"].datatype, DataType::Float);
        assert_eq!(node.unresolved, 1);
        // A device.
        let dbirth =
            data(2, vec![metric(Some("Speed"), Some(10), DataType::UInt32, MetricValue::IntValue(5))]);
        t.observe("spBv1.0/G/DBIRTH/N/Pump", &dbirth, 3);
        t.observe("spBv1.0/G/DDATA/N/Pump", &data(3, vec![by_alias(10, MetricValue::IntValue(6))]), 4);
        assert_eq!(t.groups["G"]["N"].devices["Pump"].metrics["Speed"].value, Value::UInt(6));
        // Seq 4 then 6: a gap.
        assert_eq!(t.observe("spBv1.0/G/NDATA/N", &data(4, vec![]), 5), Observed::Applied);
        assert_eq!(t.observe("spBv1.0/G/NDATA/N", &data(6, vec![]), 6), Observed::Gap);
        assert_eq!(t.groups["G"]["N"].last_gap, Some(Gap { expected: 5, got: 6, at: 6 }));
        // A death with another bdSeq is a late will of an earlier session: ignored.
        let death = |bd| {
            Payload {
                metrics: vec![metric(Some("bdSeq"), None, DataType::Int64, MetricValue::LongValue(bd))],
                ..Payload::default()
            }
            .encode_to_vec()
        };
        t.observe("spBv1.0/G/NDEATH/N", &death(7), 7);
        assert!(t.groups["G"]["N"].online);
        assert_eq!(t.groups["G"]["N"].stale_deaths, 1);
        t.observe("spBv1.0/G/NDEATH/N", &death(0), 8);
        let node = &t.groups["G"]["N"];
        assert!(!node.online && node.metrics.values().all(|m| m.stale));
        assert!(!node.devices["Pump"].online && node.devices["Pump"].metrics["Speed"].stale);
    }

    #[test]
    fn seq_wraps_and_a_birth_restarts_it() {
        let mut t = Tracker::default();
        let mut birth = spec_nbirth();
        birth.seq = Some(254);
        t.observe("spBv1.0/G/NBIRTH/N", &birth.encode_to_vec(), 1);
        assert_eq!(t.observe("spBv1.0/G/NDATA/N", &data(255, vec![]), 2), Observed::Applied);
        assert_eq!(t.observe("spBv1.0/G/NDATA/N", &data(0, vec![]), 3), Observed::Applied);
        t.observe("spBv1.0/G/NBIRTH/N", &spec_nbirth().encode_to_vec(), 4);
        assert_eq!(t.observe("spBv1.0/G/NDATA/N", &data(1, vec![]), 5), Observed::Applied);
        assert_eq!(t.groups["G"]["N"].gaps, 0);
    }

    #[test]
    fn host_states_and_malformed_payloads() {
        let mut t = Tracker::default();
        t.observe("spBv1.0/STATE/scada", br#"{"online":true,"timestamp":5}"#, 1);
        // Older than what is known: ignored.
        t.observe("spBv1.0/STATE/scada", br#"{"online":false,"timestamp":4}"#, 2);
        assert!(t.hosts["scada"].online);
        t.observe("spBv1.0/STATE/scada", br#"{"online":false,"timestamp":6}"#, 3);
        assert!(!t.hosts["scada"].online);
        assert_eq!(t.observe("spBv1.0/G/NDATA/N", &[0xFF], 4), Observed::Malformed);
        assert_eq!(t.observe("other/topic", &[0xFF], 4), Observed::Ignored);
        assert_eq!(t.malformed, 1);
        assert_eq!(t.errors[0].topic, "spBv1.0/G/NDATA/N");
    }
}
