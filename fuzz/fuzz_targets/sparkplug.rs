//! Arbitrary bytes through the Sparkplug B decoder, on every kind of topic of the namespace (and one outside
//! it). A payload that decodes must encode again to bytes that decode to the same payload; the NDEATH timestamp
//! rewrite and the JSON rendering must accept it; nothing may panic.
//!
//! Run with `cargo +nightly fuzz run sparkplug` from the repository root. The unit test
//! `pseudo_random_payloads_never_panic_and_round_trip` in `src/sparkplug/fuzz_tests.rs` checks the same
//! properties on stable with a fixed pseudo-random input set.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use weir::sparkplug::payload::{self, Aliases, Decoded};

const TOPICS: [&str; 5] =
    ["spBv1.0/G/NBIRTH/N", "spBv1.0/G/DDATA/N/D", "spBv1.0/STATE/host", "spBv1.0/G/NDEATH/N", "other/topic"];

fuzz_target!(|data: &[u8]| {
    for topic in TOPICS {
        let Some(Ok(decoded)) = payload::decode(topic, data) else { continue };
        if let Decoded::Edge { topic, payload } = decoded {
            let encoded = payload.encode_to_vec();
            let again = payload::decode_payload(&encoded).map(|p| p.encode_to_vec());
            assert_eq!(again, Ok(encoded), "round trip changed the payload");
            let _ = payload::payload_json(&topic, &payload, &Aliases::from_birth(&payload));
            let rewritten = payload::with_timestamp(data, 7);
            let stamped = rewritten.as_deref().map(payload::decode_payload).map(|p| p.map(|p| p.timestamp));
            assert_eq!(stamped, Some(Ok(Some(7))), "timestamp rewrite failed");
        }
    }
});
