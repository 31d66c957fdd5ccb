//! Sparkplug B (Eclipse Sparkplug 3.0): the payload schema, the topic namespace, decoding, and the edge nodes'
//! state as the gateway sees it.
//!
//! - [`proto`], [`topic`] and [`payload`] are pure, like `mqtt::codec`: bytes and topic names in, values out,
//!   no I/O and nothing else of the crate, so that they can be unit-tested against the specification and
//!   fuzzed (`fuzz/fuzz_targets/sparkplug.rs`). Which decoding applies is chosen by the topic's namespace, never
//!   guessed from the payload.
//! - The broker uses them for the Sparkplug-aware server requirements (births republished under
//!   `$sparkplug/certificates/`, NDEATH wills stamped with their delivery time): `mqtt::broker`'s
//!   `sparkplug.rs`.
//! - [`state`] is the edge nodes' state as the gateway sees it (pure); [`Sparkplug`] the service that feeds it
//!   from an in-process link, reads births back from the journal after a restart, sends rebirth requests and
//!   reads metric series from the history. It depends on the broker and the store, and is started by `app`.

pub mod payload;
pub mod proto;
mod service;
pub mod state;
pub mod topic;

pub use payload::{Aliases, DecodeError, Decoded, HostState, Value, decode, payload_json};
pub use proto::DataType;
pub use service::{REBIRTH_INTERVAL, SeriesQuery, Sparkplug, SparkplugError};
pub use topic::{EdgeTopic, MessageType, Topic};

#[cfg(test)]
mod fuzz_tests;
