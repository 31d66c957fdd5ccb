//! The MQTT wire format: bytes in, packets out, and back. Pure: no I/O, no clocks, no broker state, and it
//! depends on nothing else in the crate, so that it can be unit-tested against the specification and fuzzed.
//!
//! - [`decode`] takes bytes from the front of a buffer. `Ok(None)` means "need more bytes" and leaves the buffer
//!   untouched; an `Err` means the stream is malformed and the connection must be closed (with the error's
//!   [`DecodeError::reason_code`] in a v5 DISCONNECT or CONNACK).
//! - [`encode`] appends one packet to a buffer in the framing of the given protocol version.
//! - [`topic`] validates topic names and filters and matches one against the other.

mod decode;
mod encode;
mod error;
mod packet;
mod properties;
#[cfg(test)]
mod samples;
pub mod topic;
mod wire;

pub use decode::{MAX_REMAINING_LENGTH, decode};
pub use encode::encode;
pub use error::{DecodeError, EncodeError};
pub use packet::*;
