//! What can go wrong turning bytes into packets and packets into bytes.
//!
//! Decoding errors carry just enough to choose the MQTT 5.0 reason code that ends the connection and to
//! write a useful log line; the `&'static str` details name the rule that was broken without allocating.

use super::packet::{ProtocolVersion, ReasonCode};

/// Why a byte stream is not valid MQTT. Any of these ends the connection: the stream cannot be resynchronised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes do not follow the packet grammar: a truncated field inside a complete packet, reserved bits
    /// set, an impossible value, leftover bytes, a property that the packet type does not allow.
    #[error("malformed packet: {0}")]
    MalformedPacket(&'static str),
    /// The bytes parse, but break a rule about what a packet may say (packet id 0, a duplicated property, a
    /// property value the specification forbids).
    #[error("protocol error: {0}")]
    ProtocolError(&'static str),
    /// The fixed header announces a packet larger than the receiver accepts; detected before the body arrives
    /// so that a peer cannot make us buffer it.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge {
        /// Total size of the announced packet: fixed header plus remaining length.
        size: usize,
        /// The limit the caller passed to `decode`.
        max: usize,
    },
    /// CONNECT names a protocol level we do not implement, or a level that does not go with its protocol name.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    /// CONNECT names neither `MQTT` nor `MQIsdp`: the peer is not speaking MQTT at all.
    #[error("invalid protocol name")]
    InvalidProtocolName,
    /// The first nibble of the fixed header is not a packet type of the connection's protocol version.
    #[error("invalid packet type {0}")]
    InvalidPacketType(u8),
    /// A PUBLISH (or will) topic is empty where that is not allowed, or contains a wildcard.
    #[error("invalid topic name")]
    TopicNameInvalid,
    /// A UTF-8 string field is not well-formed UTF-8, or contains U+0000, which MQTT forbids.
    #[error("invalid UTF-8 string")]
    InvalidUtf8,
}

impl DecodeError {
    /// The MQTT 5.0 reason code to put in the CONNACK or DISCONNECT that answers this error.
    ///
    /// An invalid protocol name maps to "unsupported protocol version": to the peer, a protocol we do not
    /// recognise and a level we do not implement amount to the same thing.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::MalformedPacket(_)
            | DecodeError::InvalidPacketType(_)
            | DecodeError::InvalidUtf8 => ReasonCode::MALFORMED_PACKET,
            DecodeError::ProtocolError(_) => ReasonCode::PROTOCOL_ERROR,
            DecodeError::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocolVersion(_) | DecodeError::InvalidProtocolName => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            DecodeError::TopicNameInvalid => ReasonCode::TOPIC_NAME_INVALID,
        }
    }
}

/// Why a packet value cannot be put on the wire. These are bugs in the caller (or values from an untrusted
/// source that were not checked), never properties of the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A UTF-8 string field is longer than the 65,535 bytes its two-byte length prefix can express.
    #[error("string of {0} bytes is longer than 65535")]
    StringTooLong(usize),
    /// A binary field (password, will payload, correlation or authentication data) is longer than 65,535 bytes.
    #[error("binary data of {0} bytes is longer than 65535")]
    BinaryTooLong(usize),
    /// The remaining length would exceed the 268,435,455 bytes a four-byte variable byte integer can express.
    #[error("packet with remaining length {0} exceeds the MQTT maximum")]
    PacketTooLarge(usize),
    /// A variable byte integer value (a subscription identifier) is larger than 268,435,455.
    #[error("value {0} does not fit a variable byte integer")]
    VariableByteIntegerTooLarge(u32),
    /// A QoS 1 or 2 PUBLISH has no packet identifier.
    #[error("QoS > 0 PUBLISH without a packet identifier")]
    MissingPacketId,
    /// A QoS 0 PUBLISH has a packet identifier, which its encoding has no room for.
    #[error("QoS 0 PUBLISH with a packet identifier")]
    UnexpectedPacketId,
    /// The packet type does not exist in the protocol version (AUTH before 5.0).
    #[error("{packet} does not exist in {version:?}")]
    UnsupportedPacket {
        /// The packet's name, as [`super::Packet::name`] gives it.
        packet: &'static str,
        /// The version it was to be encoded for.
        version: ProtocolVersion,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_follow_the_v5_table() {
        assert_eq!(DecodeError::MalformedPacket("x").reason_code(), ReasonCode(0x81));
        assert_eq!(DecodeError::InvalidUtf8.reason_code(), ReasonCode(0x81));
        assert_eq!(DecodeError::InvalidPacketType(0).reason_code(), ReasonCode(0x81));
        assert_eq!(DecodeError::ProtocolError("x").reason_code(), ReasonCode(0x82));
        assert_eq!(DecodeError::PacketTooLarge { size: 10, max: 5 }.reason_code(), ReasonCode(0x95));
        assert_eq!(DecodeError::UnsupportedProtocolVersion(6).reason_code(), ReasonCode(0x84));
        assert_eq!(DecodeError::InvalidProtocolName.reason_code(), ReasonCode(0x84));
        assert_eq!(DecodeError::TopicNameInvalid.reason_code(), ReasonCode(0x90));
    }

    #[test]
    fn errors_display_their_detail() {
        assert_eq!(DecodeError::MalformedPacket("bad").to_string(), "malformed packet: bad");
        assert_eq!(
            DecodeError::PacketTooLarge { size: 10, max: 5 }.to_string(),
            "packet of 10 bytes exceeds the maximum of 5"
        );
        assert_eq!(
            EncodeError::StringTooLong(70000).to_string(),
            "string of 70000 bytes is longer than 65535"
        );
    }
}
