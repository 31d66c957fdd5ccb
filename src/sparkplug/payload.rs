//! Decoding Sparkplug B messages, chosen by the topic namespace: an edge topic's payload is a protobuf
//! [`Payload`], a `STATE` topic's is JSON. Nothing is guessed from the bytes; a payload that does not decode is
//! a [`DecodeError`], never a panic.

use std::collections::HashMap;

use prost::Message as _;

use super::proto::{DataSet, DataType, Metric, MetricValue, Payload, Template};
use super::topic::{EdgeTopic, Topic};

/// A Sparkplug B message, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded<'a> {
    Edge { topic: EdgeTopic<'a>, payload: Payload },
    State { host: &'a str, state: HostState },
}

/// A primary host application's `STATE` (Sparkplug 3.0: `{"online": bool, "timestamp": unix ms}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct HostState {
    pub online: bool,
    pub timestamp: Option<u64>,
}

/// Why a payload on a Sparkplug B topic was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not a valid protobuf `Payload` (truncated, a wrong wire type, nested too deeply, invalid UTF-8).
    #[error("malformed Sparkplug B payload: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// The sequence number is outside 0-255 (specification 6.4.1).
    #[error("sequence number {0} out of range 0-255")]
    SeqOutOfRange(u64),
    /// A `STATE` payload that is not the JSON object of Sparkplug 3.0.
    #[error("malformed STATE payload: {0}")]
    State(String),
}

/// Decodes the payload of a message on `topic`: `None` if the topic is not in the Sparkplug B namespace.
pub fn decode<'a>(topic: &'a str, payload: &[u8]) -> Option<Result<Decoded<'a>, DecodeError>> {
    Some(match Topic::parse(topic)? {
        Topic::Edge(topic) => decode_payload(payload).map(|payload| Decoded::Edge { topic, payload }),
        Topic::State { host } => decode_state(payload).map(|state| Decoded::State { host, state }),
    })
}

/// Decodes a protobuf payload and checks what the schema cannot say.
pub fn decode_payload(bytes: &[u8]) -> Result<Payload, DecodeError> {
    let payload = Payload::decode(bytes)?;
    match payload.seq {
        Some(seq) if seq > 255 => Err(DecodeError::SeqOutOfRange(seq)),
        _ => Ok(payload),
    }
}

pub fn decode_state(bytes: &[u8]) -> Result<HostState, DecodeError> {
    serde_json::from_slice(bytes).map_err(|e| DecodeError::State(e.to_string()))
}

/// The value of a metric, read according to its data type.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    String(String),
    Bytes(Vec<u8>),
    Ints(Vec<i64>),
    UInts(Vec<u64>),
    Floats(Vec<f64>),
    Bools(Vec<bool>),
    Strings(Vec<String>),
    DataSet(DataSet),
    Template(Template),
    /// A value that does not fit its declared type, or an extension.
    Unreadable,
}

impl Value {
    /// The value as a number, for charts; `None` for what is not a scalar number (booleans are 0 and 1).
    pub fn number(&self) -> Option<f64> {
        match *self {
            Value::Int(i) => Some(i as f64),
            Value::UInt(u) => Some(u as f64),
            Value::Float(f) if f.is_finite() => Some(f),
            Value::Bool(b) => Some(if b { 1.0 } else { 0.0 }),
            _ => None,
        }
    }

    /// The value as JSON (the console, the Kafka format).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{Value as J, json};
        match self {
            Value::Null | Value::Unreadable => J::Null,
            Value::Int(i) => json!(i),
            Value::UInt(u) => json!(u),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Bool(b) => json!(b),
            Value::String(s) => json!(s),
            Value::Bytes(b) => json!(hex(b)),
            Value::Ints(v) => json!(v),
            Value::UInts(v) => json!(v),
            Value::Floats(v) => J::Array(
                v.iter().map(|f| serde_json::Number::from_f64(*f).map_or(J::Null, J::Number)).collect(),
            ),
            Value::Bools(v) => json!(v),
            Value::Strings(v) => json!(v),
            Value::DataSet(d) => dataset_json(d),
            Value::Template(t) => template_json(t, &Aliases::default()),
        }
    }

    /// A short text for tables.
    pub fn display(&self) -> String {
        match self {
            Value::String(s) => s.clone(),
            Value::Null => "null".to_owned(),
            Value::Unreadable => "?".to_owned(),
            Value::DataSet(d) => format!("DataSet ({} rows)", d.rows.len()),
            Value::Template(t) => format!("Template ({} metrics)", t.metrics.len()),
            other => other.to_json().to_string(),
        }
    }
}

/// Reads a metric's value as `datatype` (the metric's own, or the one its birth declared).
pub fn typed_value(metric: &Metric, datatype: DataType) -> Value {
    if metric.is_null == Some(true) {
        return Value::Null;
    }
    let Some(value) = &metric.value else { return Value::Null };
    match (value, datatype) {
        // The signed types travel in two's complement; the declared width says where the sign bit is.
        (MetricValue::IntValue(v), DataType::Int8) => Value::Int(i64::from(*v as u8 as i8)),
        (MetricValue::IntValue(v), DataType::Int16) => Value::Int(i64::from(*v as u16 as i16)),
        (MetricValue::IntValue(v), DataType::Int32) => Value::Int(i64::from(*v as i32)),
        (MetricValue::IntValue(v), _) => Value::UInt(u64::from(*v)),
        (MetricValue::LongValue(v), DataType::Int64 | DataType::Int8 | DataType::Int16 | DataType::Int32) => {
            Value::Int(*v as i64)
        }
        (MetricValue::LongValue(v), _) => Value::UInt(*v),
        (MetricValue::FloatValue(v), _) => Value::Float(f64::from(*v)),
        (MetricValue::DoubleValue(v), _) => Value::Float(*v),
        (MetricValue::BooleanValue(v), _) => Value::Bool(*v),
        (MetricValue::StringValue(v), _) => Value::String(v.clone()),
        (MetricValue::BytesValue(v), t) => array(v, t).unwrap_or_else(|| Value::Bytes(v.clone())),
        (MetricValue::DatasetValue(v), _) => Value::DataSet(v.clone()),
        (MetricValue::TemplateValue(v), _) => Value::Template(v.clone()),
        (MetricValue::ExtensionValue(_), _) => Value::Unreadable,
    }
}

/// The array types are packed little-endian in `bytes_value` (specification 6.4.17); `None` for the types
/// that are not arrays, or bytes that do not fit.
fn array(bytes: &[u8], datatype: DataType) -> Option<Value> {
    fn chunks<const N: usize>(bytes: &[u8]) -> Option<impl Iterator<Item = [u8; N]> + '_> {
        bytes
            .len()
            .is_multiple_of(N)
            .then(|| bytes.chunks_exact(N).filter_map(|c| <[u8; N]>::try_from(c).ok()))
    }
    Some(match datatype {
        DataType::Int8Array => Value::Ints(bytes.iter().map(|b| i64::from(*b as i8)).collect()),
        DataType::Int16Array => {
            Value::Ints(chunks::<2>(bytes)?.map(|c| i64::from(i16::from_le_bytes(c))).collect())
        }
        DataType::Int32Array => {
            Value::Ints(chunks::<4>(bytes)?.map(|c| i64::from(i32::from_le_bytes(c))).collect())
        }
        DataType::Int64Array => Value::Ints(chunks::<8>(bytes)?.map(i64::from_le_bytes).collect()),
        DataType::UInt8Array => Value::UInts(bytes.iter().map(|b| u64::from(*b)).collect()),
        DataType::UInt16Array => {
            Value::UInts(chunks::<2>(bytes)?.map(|c| u64::from(u16::from_le_bytes(c))).collect())
        }
        DataType::UInt32Array => {
            Value::UInts(chunks::<4>(bytes)?.map(|c| u64::from(u32::from_le_bytes(c))).collect())
        }
        DataType::UInt64Array | DataType::DateTimeArray => {
            Value::UInts(chunks::<8>(bytes)?.map(u64::from_le_bytes).collect())
        }
        DataType::FloatArray => {
            Value::Floats(chunks::<4>(bytes)?.map(|c| f64::from(f32::from_le_bytes(c))).collect())
        }
        DataType::DoubleArray => Value::Floats(chunks::<8>(bytes)?.map(f64::from_le_bytes).collect()),
        DataType::BooleanArray => {
            // A 4-byte little-endian count, then the values packed 8 to a byte, most significant bit first.
            let (count, bits) = bytes.split_first_chunk::<4>()?;
            let count = usize::try_from(u32::from_le_bytes(*count)).ok()?;
            if count > bits.len().saturating_mul(8) {
                return None;
            }
            Value::Bools(
                (0..count).map(|i| bits.get(i / 8).is_some_and(|b| b & (0x80 >> (i % 8)) != 0)).collect(),
            )
        }
        DataType::StringArray => {
            // Null-terminated UTF-8 strings one after the other.
            let body = bytes.strip_suffix(&[0])?;
            let strings = body.split(|b| *b == 0).map(|s| std::str::from_utf8(s).ok().map(str::to_owned));
            Value::Strings(strings.collect::<Option<Vec<_>>>()?)
        }
        _ => return None,
    })
}

/// Metric names and types declared by a birth, by alias: what data messages that carry an alias alone refer to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Aliases {
    by_alias: HashMap<u64, (String, DataType)>,
}

impl Aliases {
    /// The aliases a birth declares (metrics with both a name and an alias).
    pub fn from_birth(payload: &Payload) -> Aliases {
        let mut aliases = Aliases::default();
        for m in &payload.metrics {
            if let (Some(name), Some(alias)) = (&m.name, m.alias) {
                let datatype = DataType::from_code(m.datatype.unwrap_or(0));
                aliases.by_alias.insert(alias, (name.clone(), datatype));
            }
        }
        aliases
    }

    pub fn get(&self, alias: u64) -> Option<(&str, DataType)> {
        self.by_alias.get(&alias).map(|(name, datatype)| (name.as_str(), *datatype))
    }

    pub fn len(&self) -> usize {
        self.by_alias.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_alias.is_empty()
    }

    /// A metric's name and data type: its own, or else those its alias was declared with.
    pub fn resolve<'a>(&'a self, metric: &'a Metric) -> (Option<&'a str>, DataType) {
        let declared = metric.alias.and_then(|a| self.get(a));
        let name = metric.name.as_deref().or(declared.map(|d| d.0));
        let datatype = match metric.datatype {
            Some(code) => DataType::from_code(code),
            None => declared.map_or(DataType::Unknown, |d| d.1),
        };
        (name, datatype)
    }
}

/// A decoded payload as JSON, with aliases resolved by `aliases` and `is_historical` kept: the form the Kafka
/// route and the console's raw view use.
///
/// `{"group", "type", "node", "device", "timestamp", "seq", "uuid", "body", "metrics": [{"name", "alias",
/// "timestamp", "datatype", "is_historical", "is_transient", "is_null", "value", "properties"}]}`; absent
/// fields are `null`, a metric whose alias is unknown has `"name": null`.
pub fn payload_json(topic: &EdgeTopic<'_>, payload: &Payload, aliases: &Aliases) -> serde_json::Value {
    serde_json::json!({
        "group": topic.group,
        "type": topic.kind.as_str(),
        "node": topic.node,
        "device": topic.device,
        "timestamp": payload.timestamp,
        "seq": payload.seq,
        "uuid": payload.uuid,
        "body": payload.body.as_deref().map(hex),
        "metrics": payload.metrics.iter().map(|m| metric_json(m, aliases)).collect::<Vec<_>>(),
    })
}

fn metric_json(metric: &Metric, aliases: &Aliases) -> serde_json::Value {
    let (name, datatype) = aliases.resolve(metric);
    let value = match typed_value(metric, datatype) {
        Value::Template(t) => template_json(&t, aliases),
        other => other.to_json(),
    };
    let properties = metric.properties.as_ref().map(|p| {
        p.keys
            .iter()
            .zip(&p.values)
            .map(|(k, v)| (k.clone(), property_json(v)))
            .collect::<serde_json::Map<_, _>>()
    });
    serde_json::json!({
        "name": name,
        "alias": metric.alias,
        "timestamp": metric.timestamp,
        "datatype": datatype.name(),
        "is_historical": metric.is_historical.unwrap_or(false),
        "is_transient": metric.is_transient.unwrap_or(false),
        "is_null": metric.is_null.unwrap_or(false),
        "value": value,
        "properties": properties,
    })
}

fn property_json(value: &super::proto::PropertyValue) -> serde_json::Value {
    use super::proto::PropertyValueKind as K;
    if value.is_null == Some(true) {
        return serde_json::Value::Null;
    }
    match &value.value {
        None | Some(K::ExtensionValue(_)) => serde_json::Value::Null,
        Some(K::IntValue(v)) => serde_json::json!(v),
        Some(K::LongValue(v)) => serde_json::json!(v),
        Some(K::FloatValue(v)) => serde_json::json!(v),
        Some(K::DoubleValue(v)) => serde_json::json!(v),
        Some(K::BooleanValue(v)) => serde_json::json!(v),
        Some(K::StringValue(v)) => serde_json::json!(v),
        Some(K::PropertysetValue(set)) => serde_json::Value::Object(
            set.keys.iter().zip(&set.values).map(|(k, v)| (k.clone(), property_json(v))).collect(),
        ),
        Some(K::PropertysetsValue(list)) => serde_json::Value::Array(
            list.propertyset
                .iter()
                .map(|set| {
                    serde_json::Value::Object(
                        set.keys
                            .iter()
                            .zip(&set.values)
                            .map(|(k, v)| (k.clone(), property_json(v)))
                            .collect(),
                    )
                })
                .collect(),
        ),
    }
}

fn dataset_json(d: &DataSet) -> serde_json::Value {
    use super::proto::DataSetValueKind as K;
    let rows: Vec<Vec<serde_json::Value>> = d
        .rows
        .iter()
        .map(|row| {
            row.elements
                .iter()
                .map(|e| match &e.value {
                    None | Some(K::ExtensionValue(_)) => serde_json::Value::Null,
                    Some(K::IntValue(v)) => serde_json::json!(v),
                    Some(K::LongValue(v)) => serde_json::json!(v),
                    Some(K::FloatValue(v)) => serde_json::json!(v),
                    Some(K::DoubleValue(v)) => serde_json::json!(v),
                    Some(K::BooleanValue(v)) => serde_json::json!(v),
                    Some(K::StringValue(v)) => serde_json::json!(v),
                })
                .collect()
        })
        .collect();
    let types: Vec<&str> = d.types.iter().map(|t| DataType::from_code(*t).name()).collect();
    serde_json::json!({ "columns": d.columns, "types": types, "rows": rows })
}

fn template_json(t: &Template, aliases: &Aliases) -> serde_json::Value {
    serde_json::json!({
        "version": t.version,
        "template_ref": t.template_ref,
        "is_definition": t.is_definition.unwrap_or(false),
        "metrics": t.metrics.iter().map(|m| metric_json(m, aliases)).collect::<Vec<_>>(),
    })
}

/// The payload with its top-level timestamp replaced by `timestamp` (unix ms), every other field kept byte for
/// byte (extensions included): how the broker sets an NDEATH will's timestamp to its delivery time
/// (specification 10.1.4). `None` if the payload does not decode: then it is delivered as it was.
pub fn with_timestamp(bytes: &[u8], timestamp: u64) -> Option<Vec<u8>> {
    decode_payload(bytes).ok()?;
    let mut out = Vec::with_capacity(bytes.len() + 11);
    out.push(0x08); // field 1, varint
    put_varint(&mut out, timestamp);
    let mut rest = bytes;
    while !rest.is_empty() {
        let start = rest;
        let key = take_varint(&mut rest)?;
        skip_field(key, &mut rest, 0)?;
        if key >> 3 != 1 {
            out.extend_from_slice(start.get(..start.len() - rest.len())?);
        }
    }
    Some(out)
}

/// Skips the value of the field whose key was just read. Groups (deprecated, never in this schema, but skipped
/// by decoders as unknown fields) are skipped to their end, at most 100 deep like prost's own limit.
fn skip_field(key: u64, rest: &mut &[u8], depth: u32) -> Option<()> {
    let skip = match key & 7 {
        0 => {
            take_varint(rest)?;
            0
        }
        1 => 8,
        2 => usize::try_from(take_varint(rest)?).ok()?,
        3 if depth < 100 => loop {
            let inner = take_varint(rest)?;
            if inner & 7 == 4 {
                return (inner >> 3 == key >> 3).then_some(());
            }
            skip_field(inner, rest, depth + 1)?;
        },
        5 => 4,
        _ => return None,
    };
    *rest = rest.get(skip..)?;
    Some(())
}

fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The `bdSeq` metric of an NBIRTH or NDEATH, which pairs a death with the birth it ends.
pub fn bd_seq(payload: &Payload) -> Option<u64> {
    payload.metrics.iter().find(|m| m.name.as_deref() == Some("bdSeq")).and_then(|m| match m.value {
        Some(MetricValue::LongValue(v)) => Some(v),
        Some(MetricValue::IntValue(v)) => Some(u64::from(v)),
        _ => None,
    })
}

/// The payload of the `Node Control/Rebirth` NCMD (specification 6.4.x): one Boolean metric set to true.
pub fn rebirth_command(timestamp: u64) -> Vec<u8> {
    Payload {
        timestamp: Some(timestamp),
        metrics: vec![Metric {
            name: Some("Node Control/Rebirth".to_owned()),
            timestamp: Some(timestamp),
            datatype: Some(DataType::Boolean.code()),
            value: Some(MetricValue::BooleanValue(true)),
            ..Metric::default()
        }],
        ..Payload::default()
    }
    .encode_to_vec()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::proto::{
        DataSetValue, DataSetValueKind, PropertySet, PropertyValue, PropertyValueKind, Row,
    };
    use super::*;

    pub(crate) fn metric(
        name: Option<&str>,
        alias: Option<u64>,
        datatype: DataType,
        value: MetricValue,
    ) -> Metric {
        Metric {
            name: name.map(str::to_owned),
            alias,
            timestamp: Some(1_486_144_502_122),
            datatype: Some(datatype.code()),
            value: Some(value),
            ..Metric::default()
        }
    }

    /// The NBIRTH of the specification's example (6.4.18 / 7.x): bdSeq, a rebirth control and a few metrics,
    /// each with an alias.
    pub(crate) fn spec_nbirth() -> Payload {
        Payload {
            timestamp: Some(1_486_144_502_122),
            seq: Some(0),
            metrics: vec![
                metric(Some("bdSeq"), None, DataType::Int64, MetricValue::LongValue(0)),
                metric(
                    Some("Node Control/Rebirth"),
                    None,
                    DataType::Boolean,
                    MetricValue::BooleanValue(false),
                ),
                metric(Some("Supply Voltage"), Some(1), DataType::Float, MetricValue::FloatValue(12.1)),
                metric(Some("Temperature"), Some(2), DataType::Int16, MetricValue::IntValue(0xFFFF_FFF6)),
                metric(Some("Label"), Some(3), DataType::String, MetricValue::StringValue("edge".into())),
            ],
            ..Payload::default()
        }
    }

    #[test]
    fn decoding_is_chosen_by_the_namespace() {
        let bytes = spec_nbirth().encode_to_vec();
        let Some(Ok(Decoded::Edge { topic, payload })) = decode("spBv1.0/Plant/NBIRTH/Edge1", &bytes) else {
            panic!("not decoded")
        };
        assert_eq!(topic.node, "Edge1");
        assert_eq!(payload, spec_nbirth());
        // Not in the namespace: not decoded at all, whatever the bytes.
        assert!(decode("plant/NBIRTH/Edge1", &bytes).is_none());
        // STATE is JSON, never protobuf.
        assert!(matches!(decode("spBv1.0/STATE/scada", &bytes), Some(Err(DecodeError::State(_)))));
        let state = br#"{"online":true,"timestamp":1668114759262}"#;
        assert_eq!(
            decode("spBv1.0/STATE/scada", state),
            Some(Ok(Decoded::State {
                host: "scada",
                state: HostState { online: true, timestamp: Some(1_668_114_759_262) }
            }))
        );
    }

    #[test]
    fn malformed_payloads_are_errors() {
        let bytes = spec_nbirth().encode_to_vec();
        for cut in 1..bytes.len() {
            // Some prefixes end on a field boundary and are valid payloads; the others must be errors.
            let _ = decode_payload(&bytes[..cut]);
        }
        assert!(decode_payload(&bytes[..bytes.len() - 1]).is_err());
        assert!(matches!(decode_payload(&[0x12, 0x05, 0x0a]), Err(DecodeError::Protobuf(_))));
        // Wrong wire type for the timestamp.
        assert!(decode_payload(&[0x0d, 0, 0, 0, 0]).is_err());
        // seq beyond 255.
        let p = Payload { seq: Some(256), ..Payload::default() };
        assert_eq!(decode_payload(&p.encode_to_vec()), Err(DecodeError::SeqOutOfRange(256)));
        // Nesting beyond prost's limit is an error, not a stack overflow.
        let mut nested = Vec::new();
        for _ in 0..200 {
            let inner = nested;
            nested = Vec::new();
            nested.push(0x12); // metrics
            let mut metric = vec![0x92, 0x01]; // template_value (18)
            let mut template = vec![0x12]; // metrics
            put_varint(&mut template, inner.len() as u64);
            template.extend_from_slice(&inner);
            put_varint(&mut metric, template.len() as u64);
            metric.extend_from_slice(&template);
            put_varint(&mut nested, metric.len() as u64);
            nested.extend_from_slice(&metric);
        }
        assert!(decode_payload(&nested).is_err());
    }

    #[test]
    fn values_are_read_by_their_datatype() {
        let birth = spec_nbirth();
        let aliases = Aliases::from_birth(&birth);
        assert_eq!(aliases.len(), 3);
        let by_alias =
            Metric { alias: Some(2), value: Some(MetricValue::IntValue(0xFFFF_FFF6)), ..Metric::default() };
        let (name, datatype) = aliases.resolve(&by_alias);
        assert_eq!((name, datatype), (Some("Temperature"), DataType::Int16));
        assert_eq!(typed_value(&by_alias, datatype), Value::Int(-10));
        let m = metric(None, None, DataType::Int8, MetricValue::IntValue(0xFF));
        assert_eq!(typed_value(&m, DataType::Int8), Value::Int(-1));
        let m = metric(None, None, DataType::Int64, MetricValue::LongValue(u64::MAX));
        assert_eq!(typed_value(&m, DataType::Int64), Value::Int(-1));
        let m = metric(
            None,
            None,
            DataType::Int32Array,
            MetricValue::BytesValue(vec![0xFF, 0xFF, 0xFF, 0xFF, 2, 0, 0, 0]),
        );
        assert_eq!(typed_value(&m, DataType::Int32Array), Value::Ints(vec![-1, 2]));
        let m = metric(
            None,
            None,
            DataType::BooleanArray,
            MetricValue::BytesValue(vec![3, 0, 0, 0, 0b1010_0000]),
        );
        assert_eq!(typed_value(&m, DataType::BooleanArray), Value::Bools(vec![true, false, true]));
        let m = metric(None, None, DataType::StringArray, MetricValue::BytesValue(b"ab\0c\0".to_vec()));
        assert_eq!(typed_value(&m, DataType::StringArray), Value::Strings(vec!["ab".into(), "c".into()]));
        let mut m = metric(None, None, DataType::Double, MetricValue::DoubleValue(1.5));
        assert_eq!(typed_value(&m, DataType::Double).number(), Some(1.5));
        m.is_null = Some(true);
        assert_eq!(typed_value(&m, DataType::Double), Value::Null);
    }

    #[test]
    fn json_resolves_aliases_and_keeps_is_historical() {
        let aliases = Aliases::from_birth(&spec_nbirth());
        let mut m =
            Metric { alias: Some(1), value: Some(MetricValue::FloatValue(13.5)), ..Metric::default() };
        m.is_historical = Some(true);
        let dataset = DataSet {
            num_of_columns: Some(2),
            columns: vec!["a".into(), "b".into()],
            types: vec![DataType::Int32.code(), DataType::String.code()],
            rows: vec![Row {
                elements: vec![
                    DataSetValue { value: Some(DataSetValueKind::IntValue(7)) },
                    DataSetValue { value: Some(DataSetValueKind::StringValue("x".into())) },
                ],
            }],
        };
        let mut d = metric(Some("Table"), None, DataType::DataSet, MetricValue::DatasetValue(dataset));
        d.properties = Some(PropertySet {
            keys: vec!["engUnit".into()],
            values: vec![PropertyValue {
                r#type: Some(DataType::String.code()),
                is_null: None,
                value: Some(PropertyValueKind::StringValue("V".into())),
            }],
        });
        let payload = Payload { timestamp: Some(5), seq: Some(1), metrics: vec![m, d], ..Payload::default() };
        let Some(Topic::Edge(topic)) = Topic::parse("spBv1.0/G/NDATA/N") else { panic!("no parse") };
        let json = payload_json(&topic, &payload, &aliases);
        assert_eq!(json["metrics"][0]["name"], "Supply Voltage");
        assert_eq!(json["metrics"][0]["datatype"], "Float");
        assert_eq!(json["metrics"][0]["is_historical"], true);
        assert_eq!(json["metrics"][0]["value"], 13.5);
        assert_eq!(json["metrics"][1]["value"]["rows"][0][1], "x");
        assert_eq!(json["metrics"][1]["properties"]["engUnit"], "V");
        assert_eq!(json["type"], "NDATA");
        assert_eq!(json["device"], serde_json::Value::Null);
    }

    #[test]
    fn a_death_gets_its_delivery_time_and_keeps_the_rest() {
        let death = Payload {
            timestamp: Some(1),
            metrics: vec![metric(Some("bdSeq"), None, DataType::Int64, MetricValue::LongValue(3))],
            ..Payload::default()
        };
        let mut bytes = death.encode_to_vec();
        // An extension field (tag 6, varint), unknown to the schema: kept.
        bytes.extend_from_slice(&[0x30, 0x2A]);
        let rewritten = with_timestamp(&bytes, 1_700_000_000_000).unwrap();
        let again = decode_payload(&rewritten).unwrap();
        assert_eq!(again.timestamp, Some(1_700_000_000_000));
        assert_eq!(bd_seq(&again), Some(3));
        assert!(rewritten.ends_with(&[0x30, 0x2A]));
        // Without a timestamp it gets one; a payload that does not decode is left alone.
        let none = Payload::default().encode_to_vec();
        assert_eq!(decode_payload(&with_timestamp(&none, 9).unwrap()).unwrap().timestamp, Some(9));
        assert_eq!(with_timestamp(&[0xFF], 9), None);
    }

    #[test]
    fn the_rebirth_command_is_the_specified_metric() {
        let p = decode_payload(&rebirth_command(42)).unwrap();
        assert_eq!(p.metrics.len(), 1);
        assert_eq!(p.metrics[0].name.as_deref(), Some("Node Control/Rebirth"));
        assert_eq!(p.metrics[0].value, Some(MetricValue::BooleanValue(true)));
        assert_eq!(p.metrics[0].datatype, Some(11));
    }
}
