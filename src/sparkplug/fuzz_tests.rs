//! Deterministic fuzzing of the Sparkplug decoder: runs on stable in CI, unlike the cargo-fuzz target
//! `fuzz/fuzz_targets/sparkplug.rs`, and checks the same properties with a fixed pseudo-random input set: no
//! panic; a payload that decodes encodes again and decodes to itself; the NDEATH timestamp rewrite and the
//! JSON rendering accept whatever decodes.

use prost::Message as _;

use super::payload::{self, Aliases, Decoded, tests::spec_nbirth};
use super::proto::{
    DataSet, DataSetValue, DataSetValueKind, DataType, Metric, MetricValue, Payload, Row, Template,
};

/// xorshift64*: small, fast and reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

const TOPICS: [&str; 5] =
    ["spBv1.0/G/NBIRTH/N", "spBv1.0/G/DDATA/N/D", "spBv1.0/STATE/host", "spBv1.0/G/NDEATH/N", "other/topic"];

/// What the fuzz target checks for one input; returns whether it decoded.
fn check(topic: &str, bytes: &[u8]) -> bool {
    let Some(Ok(decoded)) = payload::decode(topic, bytes) else { return false };
    if let Decoded::Edge { topic, payload } = decoded {
        // Compared as bytes: a NaN float is not equal to itself.
        let encoded = payload.encode_to_vec();
        let again = payload::decode_payload(&encoded).map(|p| p.encode_to_vec());
        assert_eq!(again, Ok(encoded), "round trip of {bytes:?}");
        let aliases = Aliases::from_birth(&payload);
        let _ = payload::payload_json(&topic, &payload, &aliases);
        let rewritten =
            payload::with_timestamp(bytes, 7).unwrap_or_else(|| panic!("no rewrite of {bytes:?}"));
        assert_eq!(payload::decode_payload(&rewritten).map(|p| p.timestamp), Ok(Some(7)));
    }
    true
}

fn seeds() -> Vec<Vec<u8>> {
    let template = Template {
        version: Some("1".into()),
        metrics: vec![Metric {
            name: Some("t".into()),
            value: Some(MetricValue::LongValue(3)),
            ..Metric::default()
        }],
        template_ref: Some("T".into()),
        ..Template::default()
    };
    let dataset = DataSet {
        num_of_columns: Some(1),
        columns: vec!["c".into()],
        types: vec![DataType::Double.code()],
        rows: vec![Row { elements: vec![DataSetValue { value: Some(DataSetValueKind::DoubleValue(1.0)) }] }],
    };
    let rich = Payload {
        timestamp: Some(1),
        seq: Some(255),
        uuid: Some("u".into()),
        body: Some(vec![1, 2, 3]),
        metrics: vec![
            Metric {
                name: Some("tpl".into()),
                value: Some(MetricValue::TemplateValue(template)),
                ..Metric::default()
            },
            Metric { alias: Some(9), value: Some(MetricValue::DatasetValue(dataset)), ..Metric::default() },
            Metric {
                datatype: Some(DataType::StringArray.code()),
                value: Some(MetricValue::BytesValue(b"a\0b\0".to_vec())),
                ..Metric::default()
            },
        ],
    };
    vec![
        spec_nbirth().encode_to_vec(),
        rich.encode_to_vec(),
        payload::rebirth_command(5),
        br#"{"online":false,"timestamp":12}"#.to_vec(),
        Vec::new(),
    ]
}

fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes[i] = rng.byte();
            }
            1 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes[i] ^= 1 << rng.below(8);
            }
            2 => {
                let i = rng.below(bytes.len() + 1);
                bytes.insert(i, rng.byte());
            }
            3 if !bytes.is_empty() => {
                bytes.remove(rng.below(bytes.len()));
            }
            _ => bytes.truncate(rng.below(bytes.len() + 1)),
        }
    }
}

#[test]
fn pseudo_random_payloads_never_panic_and_round_trip() {
    let seeds = seeds();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut decoded = 0;
    for _ in 0..100_000 {
        let topic = TOPICS[rng.below(TOPICS.len())];
        let bytes = match rng.below(8) {
            0 => (0..rng.below(64)).map(|_| rng.byte()).collect(),
            // An unknown group field in front: decoders skip it, the timestamp rewrite must too.
            1 => [&[0x5B, 0x08, 0x01, 0x5C][..], &seeds[rng.below(seeds.len())]].concat(),
            _ => {
                let mut bytes = seeds[rng.below(seeds.len())].clone();
                mutate(&mut rng, &mut bytes);
                bytes
            }
        };
        decoded += usize::from(check(topic, &bytes));
    }
    // The mutations must leave enough valid payloads for the round trip to be exercised.
    assert!(decoded > 10_000, "only {decoded} payloads decoded");
}
