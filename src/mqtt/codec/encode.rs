//! Packets to bytes, in the framing of a protocol version.
//!
//! Each packet body is written by one function generic over [`Sink`]: run once with a [`Counter`] to learn
//! the remaining length, then once into the buffer after a single `reserve`. No temporary buffers, so a
//! PUBLISH payload is copied exactly once, into the output.
//!
//! Fields that do not exist in the target version (properties, most reason codes before 5.0) are left out.

use bytes::BytesMut;

use super::decode::MAX_REMAINING_LENGTH;
use super::error::EncodeError;
use super::packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, ProtocolVersion, PubResp, Publish, QoS, ReasonCode, SubAck,
    Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
use super::properties::{WriteProperties, put_properties};
use super::wire::{Counter, Sink, put_binary, put_string, put_varint, varint_len};

/// Appends `packet` to `buf`, framed for `version`; on error `buf` is left as it was.
///
/// CONNECT is framed by its own `protocol` field, as the decoder reads it. In 3.1.1 and 3.1, a CONNACK's
/// reason code becomes the nearest return code and a SUBACK's error codes become 0x80; 5.0-only packets
/// (AUTH) are an error.
pub fn encode(packet: &Packet, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let first = first_byte(packet, version)?;
    let mut counter = Counter::default();
    write_body(packet, version, &mut counter)?;
    let remaining = counter.0;
    if remaining > MAX_REMAINING_LENGTH {
        return Err(EncodeError::PacketTooLarge(remaining));
    }
    let start = buf.len();
    buf.reserve(1 + varint_len(remaining) + remaining);
    Sink::put_u8(buf, first);
    let written = put_varint(buf, remaining).and_then(|()| write_body(packet, version, buf));
    if written.is_err() {
        // Unreachable in practice (the counting pass ran the same code), but never leave half a packet.
        buf.truncate(start);
    }
    written
}

/// Packet type and flags, and the checks that concern them.
fn first_byte(packet: &Packet, version: ProtocolVersion) -> Result<u8, EncodeError> {
    Ok(match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => publish_first_byte(p)?,
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) if version.is_v5() => 0xF0,
        Packet::Auth(_) => return Err(EncodeError::UnsupportedPacket { packet: packet.name(), version }),
    })
}

/// DUP is written only for QoS 1 and 2: it must be 0 at QoS 0 [MQTT-3.3.1-2], which can happen legitimately
/// when a broker downgrades a retransmitted message to a subscriber's QoS.
fn publish_first_byte(p: &Publish) -> Result<u8, EncodeError> {
    match (p.qos, p.packet_id) {
        (QoS::AtMostOnce, Some(_)) => return Err(EncodeError::UnexpectedPacketId),
        (QoS::AtLeastOnce | QoS::ExactlyOnce, None) => return Err(EncodeError::MissingPacketId),
        _ => {}
    }
    let dup = p.dup && p.qos != QoS::AtMostOnce;
    Ok(0x30 | (u8::from(dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain))
}

fn write_body<S: Sink>(packet: &Packet, version: ProtocolVersion, s: &mut S) -> Result<(), EncodeError> {
    let v5 = version.is_v5();
    match packet {
        Packet::Connect(c) => write_connect(c, s),
        Packet::ConnAck(c) => write_connack(c, version, s),
        Packet::Publish(p) => write_publish(p, v5, s),
        Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
            write_pub_resp(p, v5, s)
        }
        Packet::Subscribe(p) => write_subscribe(p, v5, s),
        Packet::SubAck(p) => write_suback(p, v5, s),
        Packet::Unsubscribe(p) => write_unsubscribe(p, v5, s),
        Packet::UnsubAck(p) => write_unsuback(p, v5, s),
        Packet::PingReq | Packet::PingResp => Ok(()),
        Packet::Disconnect(p) => write_disconnect(p, v5, s),
        Packet::Auth(p) => write_auth(p, s),
    }
}

fn write_connect<S: Sink>(c: &Connect, s: &mut S) -> Result<(), EncodeError> {
    let name = match c.protocol {
        ProtocolVersion::V3_1 => "MQIsdp",
        ProtocolVersion::V3_1_1 | ProtocolVersion::V5 => "MQTT",
    };
    let v5 = c.protocol.is_v5();
    put_string(s, name)?;
    s.put_u8(c.protocol.level());
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(will) = &c.will {
        flags |= 0b100 | ((will.qos as u8) << 3) | (u8::from(will.retain) << 5);
    }
    flags |= u8::from(c.password.is_some()) << 6;
    flags |= u8::from(c.username.is_some()) << 7;
    s.put_u8(flags);
    s.put_u16(c.keep_alive);
    if v5 {
        put_properties(s, &c.properties)?;
    }
    put_string(s, &c.client_id)?;
    if let Some(will) = &c.will {
        if v5 {
            put_properties(s, &will.properties)?;
        }
        put_string(s, &will.topic)?;
        put_binary(s, &will.payload)?;
    }
    if let Some(username) = &c.username {
        put_string(s, username)?;
    }
    if let Some(password) = &c.password {
        put_binary(s, password)?;
    }
    Ok(())
}

/// Session present is written only with success: a refusal must not claim a session [MQTT-3.2.2-4/-6]. MQTT
/// 3.1 has no such flag at all.
fn write_connack<S: Sink>(c: &ConnAck, version: ProtocolVersion, s: &mut S) -> Result<(), EncodeError> {
    let session_present =
        c.session_present && c.reason == ReasonCode::SUCCESS && version != ProtocolVersion::V3_1;
    s.put_u8(u8::from(session_present));
    if version.is_v5() {
        s.put_u8(c.reason.0);
        put_properties(s, &c.properties)
    } else {
        s.put_u8(v3_connack_return_code(c.reason));
        Ok(())
    }
}

/// The 3.1.1 CONNACK return code closest to a 5.0 reason code. Anything without a specific counterpart is
/// "server unavailable", the only generic refusal 3.1.1 has.
fn v3_connack_return_code(reason: ReasonCode) -> u8 {
    match reason {
        ReasonCode::SUCCESS => 0,
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION => 1,
        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID => 2,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD => 4,
        ReasonCode::NOT_AUTHORIZED | ReasonCode::BANNED | ReasonCode::BAD_AUTHENTICATION_METHOD => 5,
        _ => 3,
    }
}

fn write_publish<S: Sink>(p: &Publish, v5: bool, s: &mut S) -> Result<(), EncodeError> {
    put_string(s, &p.topic)?;
    if let Some(id) = p.packet_id {
        s.put_u16(id);
    }
    if v5 {
        put_properties(s, &p.properties)?;
    }
    s.put_slice(&p.payload);
    Ok(())
}

/// The short forms of §3.4.2.1: the packet id alone for success without properties, the reason code alone
/// for a failure without properties.
fn write_pub_resp<S: Sink>(p: &PubResp, v5: bool, s: &mut S) -> Result<(), EncodeError> {
    s.put_u16(p.packet_id);
    if !v5 {
        return Ok(());
    }
    let no_properties = is_empty(&p.properties);
    if p.reason != ReasonCode::SUCCESS || !no_properties {
        s.put_u8(p.reason.0);
    }
    if !no_properties {
        put_properties(s, &p.properties)?;
    }
    Ok(())
}

fn write_subscribe<S: Sink>(p: &Subscribe, v5: bool, s: &mut S) -> Result<(), EncodeError> {
    s.put_u16(p.packet_id);
    if v5 {
        put_properties(s, &p.properties)?;
    }
    for filter in &p.filters {
        put_string(s, &filter.filter)?;
        s.put_u8(if v5 { v5_subscription_options(&filter.options) } else { filter.options.qos as u8 });
    }
    Ok(())
}

fn v5_subscription_options(o: &SubscriptionOptions) -> u8 {
    (o.qos as u8)
        | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | ((o.retain_handling as u8) << 4)
}

fn write_suback<S: Sink>(p: &SubAck, v5: bool, s: &mut S) -> Result<(), EncodeError> {
    s.put_u16(p.packet_id);
    if v5 {
        put_properties(s, &p.properties)?;
    }
    for reason in &p.reasons {
        // 3.1.1 knows only the granted QoS and one failure code.
        s.put_u8(if v5 || reason.0 <= 2 { reason.0 } else { 0x80 });
    }
    Ok(())
}

fn write_unsubscribe<S: Sink>(p: &Unsubscribe, v5: bool, s: &mut S) -> Result<(), EncodeError> {
    s.put_u16(p.packet_id);
    if v5 {
        put_properties(s, &p.user_properties)?;
    }
    for filter in &p.filters {
        put_string(s, filter)?;
    }
    Ok(())
}

/// A 3.1.1 UNSUBACK is the packet id alone.
fn write_unsuback<S: Sink>(p: &UnsubAck, v5: bool, s: &mut S) -> Result<(), EncodeError> {
    s.put_u16(p.packet_id);
    if v5 {
        put_properties(s, &p.properties)?;
        for reason in &p.reasons {
            s.put_u8(reason.0);
        }
    }
    Ok(())
}

/// Empty for 3.1.1 and for a 5.0 normal disconnection without properties; otherwise the reason code and the
/// properties, with the property length written even when it is 0. The shorter form (reason code alone) is also
/// valid, but some client libraries (rumqttc 0.25) fail to parse it and report a lost connection instead of
/// the reason: be conservative in what we send.
fn write_disconnect<S: Sink>(p: &Disconnect, v5: bool, s: &mut S) -> Result<(), EncodeError> {
    if !v5 || (p.reason == ReasonCode::NORMAL_DISCONNECTION && is_empty(&p.properties)) {
        return Ok(());
    }
    s.put_u8(p.reason.0);
    put_properties(s, &p.properties)
}

/// Empty for success without properties; otherwise AUTH needs both the reason code and the property length.
fn write_auth<S: Sink>(p: &Auth, s: &mut S) -> Result<(), EncodeError> {
    if p.reason == ReasonCode::SUCCESS && is_empty(&p.properties) {
        return Ok(());
    }
    s.put_u8(p.reason.0);
    put_properties(s, &p.properties)
}

/// Whether a property block would be empty, measured rather than inspected field by field so that it can
/// never disagree with what would be written.
fn is_empty<P: WriteProperties>(props: &P) -> bool {
    let mut counter = Counter::default();
    // An error here means a field is too long to write; it is reported when the block is written.
    props.write(&mut counter).is_ok() && counter.0 == 0
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::decode::decode;
    use super::super::packet::*;
    use super::super::samples;
    use super::*;

    const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
    const V5: ProtocolVersion = ProtocolVersion::V5;

    fn enc(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
        let mut buf = BytesMut::new();
        encode(packet, version, &mut buf).unwrap();
        buf.to_vec()
    }

    fn enc_err(packet: &Packet, version: ProtocolVersion) -> EncodeError {
        let mut buf = BytesMut::from(&b"keep"[..]);
        let err = encode(packet, version, &mut buf).unwrap_err();
        assert_eq!(&buf[..], b"keep", "buffer changed on error");
        err
    }

    #[test]
    fn every_packet_type_round_trips_in_every_version() {
        let versions = [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1, ProtocolVersion::V5];
        for version in versions {
            let packets = samples::all(version);
            let mut buf = BytesMut::new();
            for packet in &packets {
                encode(packet, version, &mut buf).unwrap();
            }
            // Back to back in one buffer, as they would arrive on a connection.
            for packet in &packets {
                assert_eq!(
                    decode(&mut buf, version, usize::MAX).unwrap().as_ref(),
                    Some(packet),
                    "{version:?}"
                );
            }
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn minimal_v311_connect_bytes() {
        let connect = Connect {
            clean_start: true,
            keep_alive: 60,
            client_id: "a".into(),
            ..samples::minimal_connect(V3)
        };
        let expected = [0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0x3C, 0, 1, b'a'];
        // The CONNECT's own protocol decides the framing, not the version argument.
        assert_eq!(enc(&Packet::Connect(Box::new(connect.clone())), V5), expected);
        let v31 = Connect { protocol: ProtocolVersion::V3_1, ..connect };
        let expected = [0x10, 0x0F, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 0x3C, 0, 1, b'a'];
        assert_eq!(enc(&Packet::Connect(Box::new(v31)), V3), expected);
    }

    #[test]
    fn v3_connect_leaves_out_properties() {
        let v5 = samples::full_connect(V5);
        let v3 = Connect { protocol: V3, ..v5.clone() };
        let bytes = enc(&Packet::Connect(Box::new(v3)), V3);
        let Some(Packet::Connect(decoded)) = decode(&mut BytesMut::from(&bytes[..]), V3, usize::MAX).unwrap()
        else {
            panic!("no CONNECT")
        };
        assert_eq!(decoded.properties, ConnectProperties::default());
        assert_eq!(decoded.will.map(|w| w.properties), Some(WillProperties::default()));
        assert_eq!(decoded.password, v5.password);
        // Flags: user name, password, will retain, will QoS 2, will, clean start.
        assert_eq!(bytes[9], 0b1111_0110);
    }

    #[test]
    fn v5_publish_bytes() {
        let publish = Publish {
            qos: QoS::AtLeastOnce,
            topic: "a/b".into(),
            packet_id: Some(10),
            properties: PublishProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                user_properties: vec![("k".into(), "v".into())],
                ..Default::default()
            },
            payload: Bytes::from_static(b"hi"),
            ..Publish::default()
        };
        #[rustfmt::skip]
        let expected = [
            0x32, 0x18,
            0, 3, b'a', b'/', b'b',
            0, 10,
            14,
            0x01, 1,
            0x02, 0, 0, 0, 60,
            0x26, 0, 1, b'k', 0, 1, b'v',
            b'h', b'i',
        ];
        assert_eq!(enc(&Packet::Publish(publish.clone()), V5), expected);
        // 3.1.1: no property length at all.
        assert_eq!(enc(&Packet::Publish(publish), V3), [0x32, 9, 0, 3, b'a', b'/', b'b', 0, 10, b'h', b'i']);
    }

    #[test]
    fn publish_header_flags_and_packet_id() {
        let qos0 = Publish { dup: true, retain: true, topic: "t".into(), ..Publish::default() };
        // DUP is dropped at QoS 0, where it must not be set.
        assert_eq!(enc(&Packet::Publish(qos0.clone()), V3), [0x31, 3, 0, 1, b't']);
        let qos2 = Publish { qos: QoS::ExactlyOnce, packet_id: Some(1), ..qos0.clone() };
        assert_eq!(enc(&Packet::Publish(qos2.clone()), V3)[0], 0x3D);
        assert_eq!(
            enc_err(&Packet::Publish(Publish { packet_id: None, ..qos2 }), V3),
            EncodeError::MissingPacketId
        );
        assert_eq!(
            enc_err(&Packet::Publish(Publish { packet_id: Some(1), ..qos0 }), V5),
            EncodeError::UnexpectedPacketId
        );
    }

    #[test]
    fn v3_connack_return_codes() {
        let table = [
            (0x00, 0),
            (0x84, 1),
            (0x85, 2),
            (0x86, 4),
            (0x87, 5),
            (0x8A, 5),
            (0x8C, 5),
            (0x80, 3),
            (0x88, 3),
            (0x89, 3),
            (0x97, 3),
            (0x9F, 3),
        ];
        for (reason, code) in table {
            let connack = Packet::ConnAck(ConnAck { reason: ReasonCode(reason), ..ConnAck::default() });
            assert_eq!(enc(&connack, V3), [0x20, 2, 0, code], "reason {reason:#x}");
        }
        let present = |reason| ConnAck { session_present: true, reason, ..ConnAck::default() };
        assert_eq!(enc(&Packet::ConnAck(present(ReasonCode::SUCCESS)), V3), [0x20, 2, 1, 0]);
        assert_eq!(enc(&Packet::ConnAck(present(ReasonCode::NOT_AUTHORIZED)), V3), [0x20, 2, 0, 5]);
        assert_eq!(
            enc(&Packet::ConnAck(present(ReasonCode::SUCCESS)), ProtocolVersion::V3_1),
            [0x20, 2, 0, 0]
        );
        assert_eq!(enc(&Packet::ConnAck(present(ReasonCode::SUCCESS)), V5), [0x20, 3, 1, 0, 0]);
        assert_eq!(enc(&Packet::ConnAck(present(ReasonCode::BANNED)), V5), [0x20, 3, 0, 0x8A, 0]);
    }

    #[test]
    fn ack_short_forms() {
        let ack = |reason: u8, reason_string: Option<&str>| PubResp {
            packet_id: 0x0102,
            reason: ReasonCode(reason),
            properties: AckProperties { reason_string: reason_string.map(Into::into), ..Default::default() },
        };
        assert_eq!(enc(&Packet::PubAck(ack(0, None)), V5), [0x40, 2, 1, 2]);
        assert_eq!(enc(&Packet::PubRec(ack(0x10, None)), V5), [0x50, 3, 1, 2, 0x10]);
        assert_eq!(enc(&Packet::PubRel(ack(0, Some("x"))), V5), [0x62, 8, 1, 2, 0, 4, 0x1F, 0, 1, b'x']);
        assert_eq!(enc(&Packet::PubComp(ack(0x92, Some("x"))), V3), [0x70, 2, 1, 2]);
    }

    #[test]
    fn v3_suback_unsuback_and_disconnect() {
        let reasons = [0, 1, 2, 0x80, 0x87, 0x8F, 0x10].map(ReasonCode).to_vec();
        let suback = SubAck { packet_id: 1, reasons, properties: AckProperties::default() };
        assert_eq!(
            enc(&Packet::SubAck(suback.clone()), V3),
            [0x90, 9, 0, 1, 0, 1, 2, 0x80, 0x80, 0x80, 0x80]
        );
        assert_eq!(enc(&Packet::SubAck(suback), V5), [0x90, 10, 0, 1, 0, 0, 1, 2, 0x80, 0x87, 0x8F, 0x10]);

        let unsuback =
            UnsubAck { packet_id: 1, reasons: vec![ReasonCode(0x11)], properties: Default::default() };
        assert_eq!(enc(&Packet::UnsubAck(unsuback.clone()), V3), [0xB0, 2, 0, 1]);
        assert_eq!(enc(&Packet::UnsubAck(unsuback), V5), [0xB0, 4, 0, 1, 0, 0x11]);

        let disconnect = Disconnect { reason: ReasonCode(0x8E), ..Default::default() };
        assert_eq!(enc(&Packet::Disconnect(disconnect.clone()), V3), [0xE0, 0]);
        assert_eq!(enc(&Packet::Disconnect(disconnect), V5), [0xE0, 2, 0x8E, 0]);
        assert_eq!(enc(&Packet::Disconnect(Disconnect::default()), V5), [0xE0, 0]);
        assert_eq!(enc(&Packet::PingReq, V3), [0xC0, 0]);
        assert_eq!(enc(&Packet::PingResp, V5), [0xD0, 0]);
    }

    #[test]
    fn subscribe_bytes() {
        let subscribe = Subscribe {
            packet_id: 1,
            filters: vec![SubscribeFilter {
                filter: "a/b".into(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            }],
            properties: SubscribeProperties::default(),
        };
        assert_eq!(
            enc(&Packet::Subscribe(subscribe.clone()), V3),
            [0x82, 8, 0, 1, 0, 3, b'a', b'/', b'b', 1]
        );
        assert_eq!(enc(&Packet::Subscribe(subscribe), V5), [0x82, 9, 0, 1, 0, 0, 3, b'a', b'/', b'b', 0x2D]);
        let unsubscribe =
            Unsubscribe { packet_id: 2, filters: vec!["a".into()], user_properties: Vec::new() };
        assert_eq!(enc(&Packet::Unsubscribe(unsubscribe.clone()), V3), [0xA2, 5, 0, 2, 0, 1, b'a']);
        assert_eq!(enc(&Packet::Unsubscribe(unsubscribe), V5), [0xA2, 6, 0, 2, 0, 0, 1, b'a']);
    }

    #[test]
    fn auth() {
        assert_eq!(enc(&Packet::Auth(Auth::default()), V5), [0xF0, 0]);
        let cont = Auth { reason: ReasonCode::CONTINUE_AUTHENTICATION, ..Auth::default() };
        assert_eq!(enc(&Packet::Auth(cont.clone()), V5), [0xF0, 2, 0x18, 0]);
        assert_eq!(
            enc_err(&Packet::Auth(cont), V3),
            EncodeError::UnsupportedPacket { packet: "AUTH", version: V3 }
        );
    }

    #[test]
    fn values_that_do_not_fit() {
        let long = "a".repeat(65_536);
        let publish = Publish { topic: long.clone(), ..Publish::default() };
        assert_eq!(enc_err(&Packet::Publish(publish), V3), EncodeError::StringTooLong(65_536));
        let connect = Connect { password: Some(Bytes::from(long.clone())), ..samples::minimal_connect(V5) };
        assert_eq!(enc_err(&Packet::Connect(Box::new(connect)), V5), EncodeError::BinaryTooLong(65_536));
        let ack = PubResp {
            packet_id: 1,
            reason: ReasonCode::SUCCESS,
            properties: AckProperties { reason_string: Some(long), ..Default::default() },
        };
        assert_eq!(enc_err(&Packet::PubAck(ack), V5), EncodeError::StringTooLong(65_536));

        // A zeroed allocation is not touched: the size check comes before any copy.
        let payload = Bytes::from(vec![0; MAX_REMAINING_LENGTH - 2]);
        let publish = Publish { topic: "t".into(), payload, ..Publish::default() };
        assert_eq!(
            enc_err(&Packet::Publish(publish), V3),
            EncodeError::PacketTooLarge(MAX_REMAINING_LENGTH + 1)
        );
    }

    #[test]
    fn publish_length_is_exact() {
        let publish =
            Publish { topic: "t".into(), payload: Bytes::from(vec![7; 10_000]), ..Publish::default() };
        let mut buf = BytesMut::new();
        encode(&Packet::Publish(publish), V5, &mut buf).unwrap();
        assert_eq!(buf.len(), 1 + 2 + 3 + 1 + 10_000);
    }
}
