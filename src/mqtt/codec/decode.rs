//! Bytes to packets: framing (fixed header, remaining length, size limit) and the variable header and payload
//! of each packet type, checked against the rules of MQTT 3.1.1 and 5.0.
//!
//! The whole packet is split off the buffer and frozen before its body is parsed, so PUBLISH payloads (and
//! other binary fields) are slices of the receive buffer rather than copies.

use bytes::{Buf, BytesMut};

use super::error::DecodeError;
use super::packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, ProtocolVersion, PubResp, Publish, QoS, ReasonCode,
    RetainHandling, SubAck, Subscribe, SubscribeFilter, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};
use super::properties;
use super::topic::{parse_shared, valid_topic_name};
use super::wire::{MAX_VARINT, Reader, parse_varint};

/// The largest remaining length a fixed header can announce (four-byte variable byte integer).
pub const MAX_REMAINING_LENGTH: usize = MAX_VARINT;

/// Takes one packet from the front of `buf`.
///
/// - `Ok(None)`: the packet is not complete yet; `buf` is untouched. Read more and call again.
/// - `Ok(Some(packet))`: exactly that packet's bytes were consumed.
/// - `Err(_)`: the stream is malformed; the connection must be closed. `buf` may have been partly consumed.
///
/// CONNECT is decoded according to its own protocol name and level; every other packet according to
/// `version`. `max_packet_size` bounds the total size (fixed header included) and is enforced as soon as the
/// fixed header is complete, before the body is buffered.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    check_fixed_header(first, version)?;
    let Some((remaining, len_bytes)) = parse_varint(buf.get(1..).unwrap_or_default())? else {
        return Ok(None);
    };
    let header_len = 1 + len_bytes;
    let size = header_len + remaining;
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge { size, max: max_packet_size });
    }
    if buf.len() < size {
        return Ok(None);
    }
    let mut frame = buf.split_to(size).freeze();
    frame.advance(header_len);
    let mut r = Reader::new(frame);
    decode_body(first, &mut r, version).map(Some)
}

// Packet types, the high nibble of the first byte.
const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const UNSUBSCRIBE: u8 = 10;
const UNSUBACK: u8 = 11;
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;
const DISCONNECT: u8 = 14;
const AUTH: u8 = 15;

/// Checks the packet type and its flags from the first byte alone, so that garbage is rejected before we wait
/// for (or size-check) a body.
fn check_fixed_header(first: u8, version: ProtocolVersion) -> Result<(), DecodeError> {
    let packet_type = first >> 4;
    let flags = first & 0x0F;
    let valid = match packet_type {
        PUBLISH => return check_publish_flags(flags),
        // MQTT 3.1 also sets DUP (bit 3) when it retransmits these three.
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => {
            flags == 0b0010 || (version == ProtocolVersion::V3_1 && flags == 0b1010)
        }
        CONNECT | CONNACK | PUBACK | PUBREC | PUBCOMP | SUBACK | UNSUBACK | PINGREQ | PINGRESP
        | DISCONNECT => flags == 0,
        AUTH if version.is_v5() => flags == 0,
        _ => return Err(DecodeError::InvalidPacketType(packet_type)),
    };
    if valid { Ok(()) } else { Err(DecodeError::MalformedPacket("reserved fixed header flags set")) }
}

fn check_publish_flags(flags: u8) -> Result<(), DecodeError> {
    let qos = (flags >> 1) & 0b11;
    if qos == 3 {
        return Err(DecodeError::MalformedPacket("PUBLISH with QoS 3"));
    }
    if qos == 0 && flags & 0b1000 != 0 {
        return Err(DecodeError::MalformedPacket("PUBLISH with QoS 0 and DUP set"));
    }
    Ok(())
}

fn decode_body(first: u8, r: &mut Reader, version: ProtocolVersion) -> Result<Packet, DecodeError> {
    let v5 = version.is_v5();
    Ok(match first >> 4 {
        CONNECT => Packet::Connect(Box::new(decode_connect(r)?)),
        CONNACK => Packet::ConnAck(decode_connack(r, version)?),
        PUBLISH => Packet::Publish(decode_publish(first & 0x0F, r, v5)?),
        PUBACK => Packet::PubAck(decode_pub_resp(r, v5)?),
        PUBREC => Packet::PubRec(decode_pub_resp(r, v5)?),
        PUBREL => Packet::PubRel(decode_pub_resp(r, v5)?),
        PUBCOMP => Packet::PubComp(decode_pub_resp(r, v5)?),
        SUBSCRIBE => Packet::Subscribe(decode_subscribe(r, v5)?),
        SUBACK => Packet::SubAck(decode_suback(r, v5)?),
        UNSUBSCRIBE => Packet::Unsubscribe(decode_unsubscribe(r, v5)?),
        UNSUBACK => Packet::UnsubAck(decode_unsuback(r, v5)?),
        PINGREQ => {
            r.expect_end("PINGREQ with a body")?;
            Packet::PingReq
        }
        PINGRESP => {
            r.expect_end("PINGRESP with a body")?;
            Packet::PingResp
        }
        DISCONNECT => Packet::Disconnect(decode_disconnect(r, v5)?),
        // `check_fixed_header` let AUTH through only for 5.0.
        AUTH => Packet::Auth(decode_auth(r)?),
        other => return Err(DecodeError::InvalidPacketType(other)),
    })
}

/// A packet identifier where one is required: zero is reserved [MQTT-2.2.1-3].
fn packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::ProtocolError("packet identifier 0")),
        id => Ok(id),
    }
}

// CONNECT flag bits, §3.1.2.3.
const RESERVED: u8 = 0b0000_0001;
const CLEAN_START: u8 = 0b0000_0010;
const WILL_FLAG: u8 = 0b0000_0100;
const WILL_RETAIN: u8 = 0b0010_0000;
const PASSWORD_FLAG: u8 = 0b0100_0000;
const USERNAME_FLAG: u8 = 0b1000_0000;

fn decode_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = match (name.as_ref(), level) {
        (b"MQIsdp", 3) => ProtocolVersion::V3_1,
        (b"MQTT", 4) => ProtocolVersion::V3_1_1,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQIsdp" | b"MQTT", _) => return Err(DecodeError::UnsupportedProtocolVersion(level)),
        _ => return Err(DecodeError::InvalidProtocolName),
    };
    let v5 = protocol.is_v5();

    let flags = r.u8()?;
    if flags & RESERVED != 0 {
        return Err(DecodeError::MalformedPacket("CONNECT reserved flag set"));
    }
    let will_flag = flags & WILL_FLAG != 0;
    let will_qos =
        QoS::from_u8((flags >> 3) & 0b11).ok_or(DecodeError::MalformedPacket("CONNECT with will QoS 3"))?;
    let will_retain = flags & WILL_RETAIN != 0;
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        return Err(DecodeError::MalformedPacket("will QoS or retain set without the will flag"));
    }
    let has_username = flags & USERNAME_FLAG != 0;
    let has_password = flags & PASSWORD_FLAG != 0;
    if has_password && !has_username && !v5 {
        return Err(DecodeError::MalformedPacket("password without user name"));
    }
    let keep_alive = r.u16()?;
    let properties = if v5 { properties::read_connect(r)? } else { Default::default() };

    let client_id = r.string()?;
    let will = if will_flag {
        let properties = if v5 { properties::read_will(r)? } else { Default::default() };
        let topic = r.string()?;
        if !valid_topic_name(&topic) {
            return Err(DecodeError::TopicNameInvalid);
        }
        let payload = r.binary()?;
        Some(Will { topic, payload, qos: will_qos, retain: will_retain, properties })
    } else {
        None
    };
    let username = if has_username { Some(r.string()?) } else { None };
    let password = if has_password { Some(r.binary()?) } else { None };
    r.expect_end("bytes after the CONNECT payload")?;

    Ok(Connect {
        protocol,
        clean_start: flags & CLEAN_START != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn decode_connack(r: &mut Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    let code = r.u8()?;
    // MQTT 3.1 has no session present flag: the whole byte is reserved and ignored.
    let session_present = match version {
        ProtocolVersion::V3_1 => false,
        ProtocolVersion::V3_1_1 | ProtocolVersion::V5 => {
            if flags & 0xFE != 0 {
                return Err(DecodeError::MalformedPacket("CONNACK reserved flags set"));
            }
            flags & 1 != 0
        }
    };
    if session_present && code != 0 {
        return Err(DecodeError::ProtocolError("session present with a refused connection"));
    }
    let (reason, properties) = if version.is_v5() {
        (ReasonCode(code), properties::read_connack(r)?)
    } else {
        (v3_connack_reason(code)?, Default::default())
    };
    r.expect_end("bytes after the CONNACK properties")?;
    Ok(ConnAck { session_present, reason, properties })
}

/// The 5.0 reason code for a 3.1.1 CONNACK return code; the inverse of the encoder's mapping.
fn v3_connack_reason(code: u8) -> Result<ReasonCode, DecodeError> {
    Ok(match code {
        0 => ReasonCode::SUCCESS,
        1 => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        2 => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
        3 => ReasonCode::SERVER_UNAVAILABLE,
        4 => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        5 => ReasonCode::NOT_AUTHORIZED,
        _ => return Err(DecodeError::MalformedPacket("reserved CONNACK return code")),
    })
}

fn decode_publish(flags: u8, r: &mut Reader, v5: bool) -> Result<Publish, DecodeError> {
    // `check_publish_flags` already rejected QoS 3.
    let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::MalformedPacket("PUBLISH with QoS 3"))?;
    let topic = r.string()?;
    if topic.contains(['+', '#']) {
        return Err(DecodeError::TopicNameInvalid);
    }
    let packet_id = if qos == QoS::AtMostOnce { None } else { Some(packet_id(r)?) };
    let properties = if v5 { properties::read_publish(r)? } else { Default::default() };
    if topic.is_empty() {
        if !v5 {
            return Err(DecodeError::TopicNameInvalid);
        }
        if properties.topic_alias.is_none() {
            return Err(DecodeError::ProtocolError("empty topic name without a topic alias"));
        }
    }
    Ok(Publish {
        dup: flags & 0b1000 != 0,
        qos,
        retain: flags & 1 != 0,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP. In 5.0 the reason code and properties may be left off (§3.4.2.1).
fn decode_pub_resp(r: &mut Reader, v5: bool) -> Result<PubResp, DecodeError> {
    let packet_id = packet_id(r)?;
    if !v5 || r.is_empty() {
        r.expect_end("bytes after the packet identifier")?;
        return Ok(PubResp::new(packet_id));
    }
    let reason = ReasonCode(r.u8()?);
    let properties = if r.is_empty() { Default::default() } else { properties::read_ack(r)? };
    r.expect_end("bytes after the acknowledgement properties")?;
    Ok(PubResp { packet_id, reason, properties })
}

fn decode_subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = if v5 { properties::read_subscribe(r)? } else { Default::default() };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        if filter.is_empty() {
            return Err(DecodeError::MalformedPacket("empty topic filter"));
        }
        let options = r.u8()?;
        let options =
            if v5 { v5_subscription_options(options, &filter)? } else { v3_subscription_options(options)? };
        filters.push(SubscribeFilter { filter, options });
    }
    if filters.is_empty() {
        return Err(DecodeError::ProtocolError("SUBSCRIBE without a topic filter"));
    }
    Ok(Subscribe { packet_id, filters, properties })
}

/// §3.8.3.1: QoS in bits 0-1, No Local, Retain As Published, Retain Handling in bits 4-5, bits 6-7 reserved.
fn v5_subscription_options(byte: u8, filter: &str) -> Result<SubscriptionOptions, DecodeError> {
    if byte & 0b1100_0000 != 0 {
        return Err(DecodeError::MalformedPacket("reserved subscription option bits set"));
    }
    let qos = QoS::from_u8(byte & 0b11).ok_or(DecodeError::MalformedPacket("subscription with QoS 3"))?;
    let retain_handling = match (byte >> 4) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendAtNewSubscribe,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError::MalformedPacket("retain handling 3")),
    };
    let no_local = byte & 0b0100 != 0;
    if no_local && parse_shared(filter).is_some() {
        return Err(DecodeError::ProtocolError("No Local on a shared subscription"));
    }
    Ok(SubscriptionOptions { qos, no_local, retain_as_published: byte & 0b1000 != 0, retain_handling })
}

/// §3.8.3 (3.1.1): the requested QoS, and six reserved bits that must be 0.
fn v3_subscription_options(byte: u8) -> Result<SubscriptionOptions, DecodeError> {
    if byte & 0b1111_1100 != 0 {
        return Err(DecodeError::MalformedPacket("reserved bits set in requested QoS"));
    }
    let qos = QoS::from_u8(byte).ok_or(DecodeError::MalformedPacket("subscription with QoS 3"))?;
    Ok(SubscriptionOptions { qos, ..Default::default() })
}

fn decode_suback(r: &mut Reader, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = if v5 { properties::read_ack(r)? } else { Default::default() };
    let reasons: Vec<ReasonCode> = r.rest().iter().map(|&code| ReasonCode(code)).collect();
    if reasons.is_empty() {
        return Err(DecodeError::ProtocolError("SUBACK without a return code"));
    }
    if !v5 && reasons.iter().any(|code| !matches!(code.0, 0 | 1 | 2 | 0x80)) {
        return Err(DecodeError::MalformedPacket("reserved SUBACK return code"));
    }
    Ok(SubAck { packet_id, reasons, properties })
}

fn decode_unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let user_properties = if v5 { properties::read_unsubscribe(r)? } else { Default::default() };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        if filter.is_empty() {
            return Err(DecodeError::MalformedPacket("empty topic filter"));
        }
        filters.push(filter);
    }
    if filters.is_empty() {
        return Err(DecodeError::ProtocolError("UNSUBSCRIBE without a topic filter"));
    }
    Ok(Unsubscribe { packet_id, filters, user_properties })
}

fn decode_unsuback(r: &mut Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    if !v5 {
        r.expect_end("bytes after the UNSUBACK packet identifier")?;
        return Ok(UnsubAck { packet_id, ..Default::default() });
    }
    let properties = properties::read_ack(r)?;
    let reasons: Vec<ReasonCode> = r.rest().iter().map(|&code| ReasonCode(code)).collect();
    if reasons.is_empty() {
        return Err(DecodeError::ProtocolError("UNSUBACK without a reason code"));
    }
    Ok(UnsubAck { packet_id, reasons, properties })
}

/// In 5.0 an empty DISCONNECT means normal disconnection, and a one-byte one has no properties (§3.14.2.1).
fn decode_disconnect(r: &mut Reader, v5: bool) -> Result<Disconnect, DecodeError> {
    if !v5 || r.is_empty() {
        r.expect_end("DISCONNECT with a body")?;
        return Ok(Disconnect::default());
    }
    let reason = ReasonCode(r.u8()?);
    let properties = if r.is_empty() { Default::default() } else { properties::read_disconnect(r)? };
    r.expect_end("bytes after the DISCONNECT properties")?;
    Ok(Disconnect { reason, properties })
}

/// An empty AUTH means success with no properties; otherwise both the reason code and the property length
/// must be present (§3.15.2.1, which unlike DISCONNECT has no one-byte form).
fn decode_auth(r: &mut Reader) -> Result<Auth, DecodeError> {
    if r.is_empty() {
        return Ok(Auth::default());
    }
    let reason = ReasonCode(r.u8()?);
    let properties = properties::read_auth(r)?;
    r.expect_end("bytes after the AUTH properties")?;
    Ok(Auth { reason, properties })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::encode::encode;
    use super::super::packet::*;
    use super::super::samples;
    use super::super::wire::{parse_varint, put_varint};
    use super::*;

    const VERSIONS: [ProtocolVersion; 3] =
        [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1, ProtocolVersion::V5];
    const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
    const V5: ProtocolVersion = ProtocolVersion::V5;

    fn dec(bytes: &[u8], version: ProtocolVersion) -> Result<Option<Packet>, DecodeError> {
        let mut buf = BytesMut::from(bytes);
        let result = decode(&mut buf, version, usize::MAX);
        if let Ok(Some(_)) = result {
            assert!(buf.is_empty(), "{} bytes left over", buf.len());
        }
        result
    }

    fn one(bytes: &[u8], version: ProtocolVersion) -> Packet {
        dec(bytes, version).unwrap().expect("a whole packet")
    }

    /// A fixed header with the right remaining length in front of `body`.
    fn framed(first: u8, body: &[u8]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[first]);
        put_varint(&mut buf, body.len()).unwrap();
        buf.extend_from_slice(body);
        buf.to_vec()
    }

    fn malformed(result: Result<Option<Packet>, DecodeError>) {
        assert!(matches!(result, Err(DecodeError::MalformedPacket(_))), "{result:?}");
    }

    fn protocol_error(result: Result<Option<Packet>, DecodeError>) {
        assert!(matches!(result, Err(DecodeError::ProtocolError(_))), "{result:?}");
    }

    /// A 3.1.1 CONNECT with the given flags and payload (keep alive 60).
    fn v3_connect(flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut body = b"\x00\x04MQTT\x04".to_vec();
        body.extend_from_slice(&[flags, 0, 60]);
        body.extend_from_slice(payload);
        framed(0x10, &body)
    }

    /// A 5.0 CONNECT with the given flags, no properties and the given payload.
    fn v5_connect(flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut body = b"\x00\x04MQTT\x05".to_vec();
        body.extend_from_slice(&[flags, 0, 60, 0]);
        body.extend_from_slice(payload);
        framed(0x10, &body)
    }

    // --- Byte examples written from the specification. ---

    #[test]
    fn minimal_v311_connect() {
        let bytes = [0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0x3C, 0, 1, b'a'];
        let expected = Connect {
            clean_start: true,
            keep_alive: 60,
            client_id: "a".into(),
            ..samples::minimal_connect(ProtocolVersion::V3_1_1)
        };
        // CONNECT ignores the version the caller assumed.
        for version in VERSIONS {
            assert_eq!(one(&bytes, version), Packet::Connect(Box::new(expected.clone())));
        }
    }

    #[test]
    fn v31_connect() {
        let bytes = [0x10, 0x0F, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 0x3C, 0, 1, b'a'];
        let Packet::Connect(c) = one(&bytes, V5) else { panic!("not a CONNECT") };
        assert_eq!(c.protocol, ProtocolVersion::V3_1);
        assert_eq!(c.client_id, "a");
    }

    #[test]
    fn v5_connect_with_properties() {
        #[rustfmt::skip]
        let bytes = [
            0x10, 0x1C,
            0, 4, b'M', b'Q', b'T', b'T', 5,
            0xC2, 0, 0x3C,
            5, 0x11, 0, 0, 0, 10,
            0, 3, b'c', b'i', b'd',
            0, 1, b'u',
            0, 2, b'p', b'w',
        ];
        let expected = Connect {
            protocol: V5,
            clean_start: true,
            keep_alive: 60,
            client_id: "cid".into(),
            will: None,
            username: Some("u".into()),
            password: Some(Bytes::from_static(b"pw")),
            properties: ConnectProperties { session_expiry_interval: Some(10), ..Default::default() },
        };
        assert_eq!(one(&bytes, V3), Packet::Connect(Box::new(expected)));
    }

    #[test]
    fn v5_publish_with_properties() {
        #[rustfmt::skip]
        let bytes = [
            0x32, 0x18,
            0, 3, b'a', b'/', b'b',
            0, 10,
            14,
            0x01, 1,
            0x02, 0, 0, 0, 60,
            0x26, 0, 1, b'k', 0, 1, b'v',
            b'h', b'i',
        ];
        let expected = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "a/b".into(),
            packet_id: Some(10),
            properties: PublishProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                user_properties: vec![("k".into(), "v".into())],
                ..Default::default()
            },
            payload: Bytes::from_static(b"hi"),
        };
        assert_eq!(one(&bytes, V5), Packet::Publish(expected));
        // In 3.1.1 the same bytes are a payload, not properties.
        let Packet::Publish(p) = one(&bytes, V3) else { panic!("not a PUBLISH") };
        assert_eq!(p.payload.len(), 17);
    }

    #[test]
    fn v311_publish_and_subscribe() {
        let publish = one(&[0x31, 0x07, 0, 3, b'a', b'/', b'b', b'x', b'y'], V3);
        let expected = Publish {
            retain: true,
            topic: "a/b".into(),
            payload: Bytes::from_static(b"xy"),
            ..Publish::default()
        };
        assert_eq!(publish, Packet::Publish(expected));

        let subscribe = one(&[0x82, 0x08, 0, 1, 0, 3, b'a', b'/', b'b', 1], V3);
        let filter = SubscribeFilter {
            filter: "a/b".into(),
            options: SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() },
        };
        let expected = Subscribe { packet_id: 1, filters: vec![filter], properties: Default::default() };
        assert_eq!(subscribe, Packet::Subscribe(expected));
    }

    #[test]
    fn v5_subscription_options_byte() {
        let Packet::Subscribe(s) = one(&[0x82, 0x09, 0, 1, 0, 0, 3, b'a', b'/', b'b', 0x2D], V5) else {
            panic!("not a SUBSCRIBE")
        };
        let expected = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DoNotSend,
        };
        assert_eq!(s.filters[0].options, expected);
    }

    #[test]
    fn v311_connack_return_codes() {
        let cases = [(0, 0x00), (1, 0x84), (2, 0x85), (3, 0x88), (4, 0x86), (5, 0x87)];
        for (code, reason) in cases {
            let Packet::ConnAck(c) = one(&[0x20, 2, 0, code], V3) else { panic!("not a CONNACK") };
            assert_eq!(c.reason, ReasonCode(reason));
            assert!(c.properties == ConnAckProperties::default());
        }
        assert_eq!(
            one(&[0x20, 2, 1, 0], V3),
            Packet::ConnAck(ConnAck { session_present: true, ..Default::default() })
        );
        // 3.1 has no session present flag; the byte is ignored.
        assert_eq!(one(&[0x20, 2, 1, 0], ProtocolVersion::V3_1), Packet::ConnAck(ConnAck::default()));
        malformed(dec(&[0x20, 2, 0, 6], V3));
        malformed(dec(&[0x20, 2, 2, 0], V3));
        malformed(dec(&[0x20, 2, 2, 0], V5));
        protocol_error(dec(&[0x20, 2, 1, 5], V3));
        protocol_error(dec(&[0x20, 3, 1, 0x87, 0], V5));
        malformed(dec(&[0x20, 3, 0, 0, 0, 0], V3));
        // A 5.0 CONNACK always has a property length.
        malformed(dec(&[0x20, 2, 0, 0], V5));
    }

    #[test]
    fn v311_suback_return_codes() {
        let Packet::SubAck(s) = one(&[0x90, 6, 0, 7, 0, 1, 2, 0x80], V3) else { panic!("not a SUBACK") };
        assert_eq!(s.reasons, [0, 1, 2, 0x80].map(ReasonCode));
        malformed(dec(&[0x90, 3, 0, 7, 3], V3));
        malformed(dec(&[0x90, 3, 0, 7, 0x87], V3));
        // 5.0 accepts any reason code, including ones we do not know.
        let Packet::SubAck(s) = one(&[0x90, 5, 0, 7, 0, 0x87, 0xFE], V5) else { panic!("not a SUBACK") };
        assert_eq!(s.reasons, [ReasonCode(0x87), ReasonCode(0xFE)]);
        protocol_error(dec(&[0x90, 2, 0, 7], V3));
        protocol_error(dec(&[0x90, 3, 0, 7, 0], V5));
    }

    #[test]
    fn short_ack_forms() {
        for first in [0x40, 0x50, 0x62, 0x70] {
            let short = dec(&[first, 2, 0, 9], V5).unwrap().unwrap();
            let with_reason = dec(&[first, 3, 0, 9, 0x10], V5).unwrap().unwrap();
            let with_empty_properties = dec(&[first, 4, 0, 9, 0x10, 0], V5).unwrap().unwrap();
            let reason = |p: &Packet| match p {
                Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
                    (r.packet_id, r.reason, r.properties.clone())
                }
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(reason(&short), (9, ReasonCode::SUCCESS, AckProperties::default()));
            assert_eq!(reason(&with_reason), (9, ReasonCode(0x10), AckProperties::default()));
            assert_eq!(reason(&with_empty_properties), reason(&with_reason));
            // 3.1.1 acknowledgements are exactly two bytes.
            malformed(dec(&[first, 3, 0, 9, 0x10], V3));
            malformed(dec(&[first, 1, 9], V5));
            protocol_error(dec(&[first, 2, 0, 0], V3));
        }
        let Packet::UnsubAck(u) = one(&[0xB0, 2, 0, 9], V3) else { panic!("not an UNSUBACK") };
        assert!(u.reasons.is_empty());
        malformed(dec(&[0xB0, 3, 0, 9, 0], V3));
        let Packet::UnsubAck(u) = one(&[0xB0, 4, 0, 9, 0, 0x11], V5) else { panic!("not an UNSUBACK") };
        assert_eq!(u.reasons, [ReasonCode::NO_SUBSCRIPTION_EXISTED]);
        protocol_error(dec(&[0xB0, 3, 0, 9, 0], V5));
    }

    #[test]
    fn disconnect_and_auth_forms() {
        assert_eq!(one(&[0xE0, 0], V3), Packet::Disconnect(Disconnect::default()));
        malformed(dec(&[0xE0, 1, 0], V3));
        assert_eq!(one(&[0xE0, 0], V5), Packet::Disconnect(Disconnect::default()));
        let with_will = Packet::Disconnect(Disconnect { reason: ReasonCode(4), ..Default::default() });
        assert_eq!(one(&[0xE0, 1, 4], V5), with_will);
        assert_eq!(one(&[0xE0, 2, 4, 0], V5), with_will);
        malformed(dec(&[0xE0, 3, 4, 0, 0], V5));

        assert_eq!(one(&[0xF0, 0], V5), Packet::Auth(Auth::default()));
        let cont = Packet::Auth(Auth { reason: ReasonCode(0x18), ..Default::default() });
        assert_eq!(one(&[0xF0, 2, 0x18, 0], V5), cont);
        malformed(dec(&[0xF0, 1, 0x18], V5));
        assert_eq!(dec(&[0xF0, 0], V3), Err(DecodeError::InvalidPacketType(15)));

        assert_eq!(one(&[0xC0, 0], V3), Packet::PingReq);
        assert_eq!(one(&[0xD0, 0], V5), Packet::PingResp);
        malformed(dec(&[0xC0, 1, 0], V3));
        malformed(dec(&[0xD0, 1, 0], V5));
    }

    #[test]
    fn publish_payload_is_a_slice_of_the_receive_buffer() {
        let bytes = framed(0x30, b"\x00\x01tpayload");
        let mut buf = BytesMut::from(&bytes[..]);
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        let Some(Packet::Publish(p)) = decode(&mut buf, V3, usize::MAX).unwrap() else {
            panic!("no PUBLISH")
        };
        assert_eq!(p.payload, &b"payload"[..]);
        assert!(range.contains(&(p.payload.as_ptr() as usize)), "payload was copied");
    }

    // --- Framing. ---

    #[test]
    fn every_strict_prefix_needs_more_bytes() {
        for version in VERSIONS {
            for packet in samples::all(version) {
                let mut encoded = BytesMut::new();
                encode(&packet, version, &mut encoded).unwrap();
                for cut in 0..encoded.len() {
                    let mut buf = BytesMut::from(&encoded[..cut]);
                    assert_eq!(decode(&mut buf, version, usize::MAX), Ok(None), "{packet:?} cut at {cut}");
                    assert_eq!(&buf[..], &encoded[..cut], "buffer touched");
                }
                let mut buf = encoded.clone();
                assert_eq!(decode(&mut buf, version, encoded.len()), Ok(Some(packet)));
            }
        }
    }

    #[test]
    fn consumes_exactly_one_packet() {
        let mut buf = BytesMut::from(&[0xC0, 0, 0xD0, 0, 0x30, 0x05][..]);
        assert_eq!(decode(&mut buf, V3, 100), Ok(Some(Packet::PingReq)));
        assert_eq!(decode(&mut buf, V3, 100), Ok(Some(Packet::PingResp)));
        assert_eq!(decode(&mut buf, V3, 100), Ok(None));
        assert_eq!(&buf[..], &[0x30, 0x05]);
        assert_eq!(decode(&mut BytesMut::new(), V3, 100), Ok(None));
    }

    #[test]
    fn packet_too_large_is_known_from_the_fixed_header() {
        let header = [0x30, 0xFF, 0xFF, 0xFF, 0x7F];
        let mut buf = BytesMut::from(&header[..]);
        assert_eq!(
            decode(&mut buf, V5, 1000),
            Err(DecodeError::PacketTooLarge { size: 5 + MAX_REMAINING_LENGTH, max: 1000 })
        );
        let mut buf = BytesMut::from(&header[..]);
        assert_eq!(decode(&mut buf, V5, usize::MAX), Ok(None));
        // The limit counts the fixed header: a 2-byte PINGREQ fits in 2, not in 1.
        assert_eq!(dec(&[0xC0, 0], V3), Ok(Some(Packet::PingReq)));
        assert_eq!(decode(&mut BytesMut::from(&[0xC0, 0][..]), V3, 2), Ok(Some(Packet::PingReq)));
        assert_eq!(
            decode(&mut BytesMut::from(&[0xC0, 0][..]), V3, 1),
            Err(DecodeError::PacketTooLarge { size: 2, max: 1 })
        );
        let err = decode(&mut BytesMut::from(&[0x30, 100][..]), V3, 50).unwrap_err();
        assert_eq!(err.reason_code(), ReasonCode::PACKET_TOO_LARGE);
    }

    #[test]
    fn remaining_length_boundaries() {
        for remaining in [0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, MAX_REMAINING_LENGTH] {
            let mut header = BytesMut::from(&[0x30][..]);
            put_varint(&mut header, remaining).unwrap();
            let size = header.len() + remaining;
            let too_large = decode(&mut header.clone(), V3, size - 1);
            assert_eq!(too_large, Err(DecodeError::PacketTooLarge { size, max: size - 1 }));
            if !(3..=2_097_152).contains(&remaining) {
                continue;
            }
            // A QoS 0 PUBLISH to "t" whose payload fills the rest.
            let mut body = b"\x00\x01t".to_vec();
            body.resize(remaining, 0xAB);
            let bytes = framed(0x30, &body);
            assert_eq!(bytes.len(), size);
            let Packet::Publish(p) = one(&bytes, V3) else { panic!("not a PUBLISH") };
            assert_eq!(p.payload.len(), remaining - 3);
        }
        assert_eq!(one(&[0xC0, 0], V3), Packet::PingReq);
        // Non-minimal, but unambiguous and four bytes: accepted.
        assert_eq!(one(&[0xC0, 0x80, 0x80, 0x80, 0x00], V3), Packet::PingReq);
    }

    #[test]
    fn five_byte_remaining_length_is_malformed() {
        malformed(dec(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], V3));
        malformed(dec(&[0x30, 0x80, 0x80, 0x80, 0x80], V5));
    }

    #[test]
    fn fixed_header_flags() {
        // (packet type, the only valid flags)
        let rules =
            [(1, 0), (2, 0), (4, 0), (5, 0), (6, 2), (7, 0), (8, 2), (9, 0), (10, 2), (11, 0), (12, 0)];
        let rules = rules.into_iter().chain([(13, 0), (14, 0)]);
        for (packet_type, valid) in rules {
            for flags in 0..16u8 {
                if flags == valid {
                    continue;
                }
                let err = dec(&[packet_type << 4 | flags], V3).unwrap_err();
                assert_eq!(err, DecodeError::MalformedPacket("reserved fixed header flags set"));
            }
        }
        assert_eq!(dec(&[0xF1], V5), Err(DecodeError::MalformedPacket("reserved fixed header flags set")));
        assert_eq!(dec(&[0x00, 0], V3), Err(DecodeError::InvalidPacketType(0)));
        assert_eq!(dec(&[0x0F], V5), Err(DecodeError::InvalidPacketType(0)));
        // MQTT 3.1 sets DUP on retransmitted PUBREL, SUBSCRIBE and UNSUBSCRIBE.
        let pubrel = [0x6A, 2, 0, 1];
        assert_eq!(one(&pubrel, ProtocolVersion::V3_1), Packet::PubRel(PubResp::new(1)));
        malformed(dec(&pubrel, V3));
    }

    // --- CONNECT rules. ---

    #[test]
    fn connect_protocol_name_and_level() {
        let with = |name: &[u8], level: u8| {
            let mut body = vec![0, name.len() as u8];
            body.extend_from_slice(name);
            body.extend_from_slice(&[level, 2, 0, 60, 0, 1, b'a']);
            framed(0x10, &body)
        };
        assert_eq!(dec(&with(b"MQTT", 6), V5), Err(DecodeError::UnsupportedProtocolVersion(6)));
        assert_eq!(dec(&with(b"MQTT", 3), V5), Err(DecodeError::UnsupportedProtocolVersion(3)));
        assert_eq!(dec(&with(b"MQIsdp", 4), V3), Err(DecodeError::UnsupportedProtocolVersion(4)));
        assert_eq!(dec(&with(b"MQTX", 4), V3), Err(DecodeError::InvalidProtocolName));
        assert_eq!(dec(&with(b"mqtt", 4), V3), Err(DecodeError::InvalidProtocolName));
        assert_eq!(DecodeError::UnsupportedProtocolVersion(6).reason_code(), ReasonCode(0x84));
        assert!(dec(&with(b"MQTT", 4), V5).unwrap().is_some());
    }

    #[test]
    fn connect_flag_rules() {
        let client_a = b"\x00\x01a";
        assert!(dec(&v3_connect(0x02, client_a), V3).unwrap().is_some());
        malformed(dec(&v3_connect(0x03, client_a), V3));
        // Will QoS 3, and will QoS or retain without the will flag.
        malformed(dec(&v3_connect(0x1C, b"\x00\x01a\x00\x01t\x00\x00"), V3));
        malformed(dec(&v3_connect(0x08, client_a), V3));
        malformed(dec(&v3_connect(0x10, client_a), V3));
        malformed(dec(&v3_connect(0x20, client_a), V3));
        // Password without user name: malformed in 3.1.1, allowed in 5.0.
        malformed(dec(&v3_connect(0x40, b"\x00\x01a\x00\x02pw"), V3));
        let Packet::Connect(c) = one(&v5_connect(0x40, b"\x00\x01a\x00\x02pw"), V5) else {
            panic!("no CONNECT")
        };
        assert_eq!((c.username, c.password), (None, Some(Bytes::from_static(b"pw"))));
    }

    #[test]
    fn connect_will() {
        let Packet::Connect(c) = one(&v3_connect(0x2C, b"\x00\x01a\x00\x03a/b\x00\x01!"), V3) else {
            panic!("no CONNECT")
        };
        let will = c.will.expect("a will");
        assert_eq!(
            (will.topic.as_str(), &will.payload[..], will.qos, will.retain),
            ("a/b", &b"!"[..], QoS::AtLeastOnce, true)
        );
        assert_eq!(
            dec(&v3_connect(0x04, b"\x00\x01a\x00\x03a/#\x00\x00"), V3),
            Err(DecodeError::TopicNameInvalid)
        );
        assert_eq!(
            dec(&v3_connect(0x04, b"\x00\x01a\x00\x00\x00\x00"), V3),
            Err(DecodeError::TopicNameInvalid)
        );
        // 5.0 puts will properties before the will topic.
        let Packet::Connect(c) =
            one(&v5_connect(0x04, b"\x00\x01a\x05\x18\x00\x00\x00\x09\x00\x01t\x00\x00"), V5)
        else {
            panic!("no CONNECT")
        };
        assert_eq!(c.will.expect("a will").properties.will_delay_interval, Some(9));
    }

    #[test]
    fn connect_leftover_and_truncated_fields_are_malformed() {
        malformed(dec(&v3_connect(0x02, b"\x00\x01ab"), V3));
        malformed(dec(&v3_connect(0x02, b"\x00\x05a"), V3));
        malformed(dec(&v3_connect(0x82, b"\x00\x01a"), V3));
        malformed(dec(&framed(0x10, b"\x00\x04MQ"), V3));
        malformed(dec(&framed(0x10, b"\x00\x04MQTT\x04\x02\x00"), V3));
        // A property length running past the packet.
        malformed(dec(&framed(0x10, b"\x00\x04MQTT\x05\x02\x00\x3C\x09\x00\x01a"), V5));
    }

    #[test]
    fn strings_with_nul_are_rejected() {
        assert_eq!(dec(&v3_connect(0x02, b"\x00\x02a\x00"), V3), Err(DecodeError::InvalidUtf8));
        assert_eq!(dec(&framed(0x30, b"\x00\x03a\x00b"), V3), Err(DecodeError::InvalidUtf8));
        assert_eq!(dec(&framed(0x30, b"\x00\x02\xC0\x80"), V3), Err(DecodeError::InvalidUtf8));
        assert_eq!(DecodeError::InvalidUtf8.reason_code(), ReasonCode::MALFORMED_PACKET);
    }

    // --- PUBLISH rules. ---

    #[test]
    fn publish_rules() {
        malformed(dec(&[0x36], V3));
        malformed(dec(&[0x37, 5, 0, 1, b't', 0, 1], V5));
        malformed(dec(&[0x38], V3));
        protocol_error(dec(&[0x32, 5, 0, 1, b't', 0, 0], V3));
        assert_eq!(dec(&framed(0x30, b"\x00\x03a/+"), V3), Err(DecodeError::TopicNameInvalid));
        assert_eq!(dec(&framed(0x30, b"\x00\x01#"), V5), Err(DecodeError::TopicNameInvalid));
        assert_eq!(dec(&framed(0x30, b"\x00\x00"), V3), Err(DecodeError::TopicNameInvalid));
        protocol_error(dec(&framed(0x30, b"\x00\x00\x00"), V5));
        let Packet::Publish(p) = one(&framed(0x30, b"\x00\x00\x03\x23\x00\x07"), V5) else {
            panic!("no PUBLISH")
        };
        assert_eq!((p.topic.as_str(), p.properties.topic_alias), ("", Some(7)));
        protocol_error(dec(&framed(0x30, b"\x00\x01t\x03\x23\x00\x00"), V5));
        // A QoS 1 PUBLISH cut inside its packet identifier.
        malformed(dec(&framed(0x32, b"\x00\x01t\x00"), V3));
        // A property that PUBLISH may not carry.
        malformed(dec(&framed(0x30, b"\x00\x01t\x02\x24\x01"), V5));
        let Packet::Publish(p) = one(&[0x3B, 5, 0, 1, b't', 0, 1], V3) else { panic!("no PUBLISH") };
        assert!(
            p.dup && p.retain && p.qos == QoS::AtLeastOnce && p.packet_id == Some(1) && p.payload.is_empty()
        );
    }

    // --- SUBSCRIBE and UNSUBSCRIBE rules. ---

    #[test]
    fn subscribe_rules() {
        protocol_error(dec(&[0x82, 2, 0, 1], V3));
        protocol_error(dec(&[0x82, 3, 0, 1, 0], V5));
        protocol_error(dec(&framed(0x82, b"\x00\x00\x00\x01a\x00"), V3));
        malformed(dec(&framed(0x82, b"\x00\x01\x00\x00\x00"), V3));
        malformed(dec(&framed(0x82, b"\x00\x01\x00\x01a"), V3));
        for bad_options in [0x03, 0x04, 0x80, 0x40] {
            malformed(dec(&framed(0x82, &[0, 1, 0, 1, b'a', bad_options]), V3));
        }
        for bad_options in [0x03, 0x30, 0x40, 0x80] {
            malformed(dec(&framed(0x82, &[0, 1, 0, 0, 1, b'a', bad_options]), V5));
        }
        protocol_error(dec(&framed(0x82, b"\x00\x01\x00\x00\x0A$share/g/a\x04"), V5));
        assert!(dec(&framed(0x82, b"\x00\x01\x00\x00\x0A$share/g/a\x00"), V5).unwrap().is_some());
        // Filters are not validated beyond non-emptiness: SUBACK 0x8F is the answer to "a#".
        assert!(dec(&framed(0x82, b"\x00\x01\x00\x02a#\x00"), V3).unwrap().is_some());
        // Subscription identifier 0, and duplicated.
        protocol_error(dec(&framed(0x82, b"\x00\x01\x02\x0B\x00\x00\x01a\x00"), V5));
        protocol_error(dec(&framed(0x82, b"\x00\x01\x04\x0B\x01\x0B\x02\x00\x01a\x00"), V5));
    }

    #[test]
    fn unsubscribe_rules() {
        protocol_error(dec(&[0xA2, 2, 0, 1], V3));
        protocol_error(dec(&[0xA2, 3, 0, 1, 0], V5));
        protocol_error(dec(&framed(0xA2, b"\x00\x00\x00\x01a"), V3));
        malformed(dec(&framed(0xA2, b"\x00\x01\x00\x00"), V3));
        malformed(dec(&framed(0xA2, b"\x00\x01\x00\x02a"), V3));
        malformed(dec(&framed(0xA2, b"\x00\x01\x02\x1F\x00\x00\x01a"), V5));
        let Packet::Unsubscribe(u) = one(&framed(0xA2, b"\x00\x01\x00\x01a\x00\x01b"), V3) else {
            panic!("no UNSUBSCRIBE")
        };
        assert_eq!(u.filters, ["a", "b"]);
    }

    // --- Deterministic fuzzing: runs on stable in CI, unlike the cargo-fuzz target in `fuzz/`. ---

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

    /// Decodes everything in `bytes`; every packet must re-encode and decode to itself. Returns how many
    /// packets were decoded.
    fn check_stream(bytes: &[u8], version: ProtocolVersion) -> usize {
        let mut buf = BytesMut::from(bytes);
        let mut decoded = 0;
        loop {
            let before = buf.clone();
            match decode(&mut buf, version, 1 << 20) {
                Ok(None) => {
                    assert_eq!(buf, before, "Ok(None) consumed bytes");
                    return decoded;
                }
                Err(_) => return decoded,
                Ok(Some(packet)) => {
                    decoded += 1;
                    assert!(buf.len() < before.len());
                    let mut encoded = BytesMut::new();
                    if let Err(e) = encode(&packet, version, &mut encoded) {
                        panic!("{packet:?} decoded from {before:?} does not encode: {e}");
                    }
                    let again = decode(&mut encoded, version, usize::MAX);
                    assert_eq!(again, Ok(Some(packet)), "round trip of {before:?}");
                    assert!(encoded.is_empty());
                }
            }
        }
    }

    /// Splits an encoded packet into its first byte and its body.
    fn split_frame(packet: &[u8]) -> (u8, &[u8]) {
        let (len, len_bytes) = parse_varint(&packet[1..]).unwrap().unwrap();
        (packet[0], &packet[1 + len_bytes..1 + len_bytes + len])
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
    fn pseudo_random_bytes_never_panic_and_round_trip() {
        let seeds: Vec<(ProtocolVersion, Vec<u8>)> = VERSIONS
            .into_iter()
            .flat_map(|version| {
                samples::all(version).into_iter().map(move |packet| {
                    let mut buf = BytesMut::new();
                    encode(&packet, version, &mut buf).unwrap();
                    (version, buf.to_vec())
                })
            })
            .collect();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut decoded = 0;
        for _ in 0..200_000 {
            let (seed_version, seed) = &seeds[rng.below(seeds.len())];
            // Mostly the seed's own version, sometimes another one: framings differ.
            let version = if rng.below(4) == 0 { VERSIONS[rng.below(3)] } else { *seed_version };
            let bytes = match rng.below(10) {
                // Noise, sometimes behind a plausible first byte.
                0 | 1 => {
                    let mut noise: Vec<u8> = (0..rng.below(48)).map(|_| rng.byte()).collect();
                    if let (Some(first), true) = (noise.first_mut(), rng.below(2) == 0) {
                        *first = seed[0];
                    }
                    noise
                }
                // The whole packet mutated, header included.
                2 | 3 => {
                    let mut bytes = seed.clone();
                    mutate(&mut rng, &mut bytes);
                    bytes
                }
                // The body mutated behind a correct fixed header, to reach deep into the parsers.
                4..=8 => {
                    let (first, body) = split_frame(seed);
                    let mut body = body.to_vec();
                    mutate(&mut rng, &mut body);
                    framed(first, &body)
                }
                // Two packets in a stream, the second mutated.
                _ => {
                    let (_, other) = &seeds[rng.below(seeds.len())];
                    let mut tail = other.clone();
                    mutate(&mut rng, &mut tail);
                    [seed.as_slice(), &tail].concat()
                }
            };
            decoded += check_stream(&bytes, version);
        }
        // The mutations must leave enough valid packets for the round trip to be exercised.
        assert!(decoded > 20_000, "only {decoded} packets decoded");
    }
}
