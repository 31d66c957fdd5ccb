//! Arbitrary bytes through `decode`, for every protocol version, until it needs more bytes or fails. Every
//! packet decoded must encode again and decode to an equal packet; nothing may panic.
//!
//! Run with `cargo +nightly fuzz run decode` from the repository root. The unit test
//! `pseudo_random_bytes_never_panic_and_round_trip` in `src/mqtt/codec/decode.rs` checks the same property on
//! stable with a fixed pseudo-random input set.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use weir::mqtt::codec::{ProtocolVersion, decode, encode};

const VERSIONS: [ProtocolVersion; 3] = [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1, ProtocolVersion::V5];

fuzz_target!(|data: &[u8]| {
    for version in VERSIONS {
        let mut buf = BytesMut::from(data);
        loop {
            let before = buf.len();
            match decode(&mut buf, version, 1 << 20) {
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                    break;
                }
                Err(_) => break,
                Ok(Some(packet)) => {
                    assert!(buf.len() < before, "a packet was decoded from no bytes");
                    let mut encoded = BytesMut::new();
                    if let Err(e) = encode(&packet, version, &mut encoded) {
                        panic!("decoded {packet:?} does not encode: {e}");
                    }
                    let again = decode(&mut encoded, version, usize::MAX);
                    assert_eq!(again, Ok(Some(packet)), "round trip changed the packet");
                    assert!(encoded.is_empty(), "re-encoding produced trailing bytes");
                }
            }
        }
    }
});
