//! MQTT 5.0 properties (§2.2.2): reading the property block of each packet type into its struct, and writing
//! it back.
//!
//! Reading happens in two steps: [`read_property`] decodes any identifier of the specification and checks the
//! value rules that hold wherever the property appears; the per-packet functions then accept only the
//! properties that packet may carry and reject duplicates. Writing emits only what is set.

use bytes::Bytes;

use super::error::{DecodeError, EncodeError};
use super::packet::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, QoS, SubscribeProperties, UserProperties, WillProperties,
};
use super::topic::valid_topic_name;
use super::wire::{Counter, MAX_VARINT, Reader, Sink, put_binary, put_string, put_varint};

// Property identifiers, §2.2.2.2.
const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
const SERVER_KEEP_ALIVE: u8 = 0x13;
const AUTHENTICATION_METHOD: u8 = 0x15;
const AUTHENTICATION_DATA: u8 = 0x16;
const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
const WILL_DELAY_INTERVAL: u8 = 0x18;
const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
const RESPONSE_INFORMATION: u8 = 0x1A;
const SERVER_REFERENCE: u8 = 0x1C;
const REASON_STRING: u8 = 0x1F;
const RECEIVE_MAXIMUM: u8 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const TOPIC_ALIAS: u8 = 0x23;
const MAXIMUM_QOS: u8 = 0x24;
const RETAIN_AVAILABLE: u8 = 0x25;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;
const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// One property as read off the wire, before it is assigned to a field of a packet's properties struct.
#[derive(Debug)]
enum Property {
    PayloadFormatIndicator(u8),
    MessageExpiryInterval(u32),
    ContentType(String),
    ResponseTopic(String),
    CorrelationData(Bytes),
    SubscriptionIdentifier(u32),
    SessionExpiryInterval(u32),
    AssignedClientIdentifier(String),
    ServerKeepAlive(u16),
    AuthenticationMethod(String),
    AuthenticationData(Bytes),
    RequestProblemInformation(bool),
    WillDelayInterval(u32),
    RequestResponseInformation(bool),
    ResponseInformation(String),
    ServerReference(String),
    ReasonString(String),
    ReceiveMaximum(u16),
    TopicAliasMaximum(u16),
    TopicAlias(u16),
    MaximumQoS(QoS),
    RetainAvailable(bool),
    User(String, String),
    MaximumPacketSize(u32),
    WildcardSubscriptionAvailable(bool),
    SubscriptionIdentifierAvailable(bool),
    SharedSubscriptionAvailable(bool),
}

/// §2.2.2.2: an identifier that is not valid for the packet type is malformed.
const NOT_ALLOWED: DecodeError = DecodeError::MalformedPacket("property not allowed in this packet");

/// Reads one property. Identifiers are variable byte integers in the grammar, but every defined one fits in
/// a single byte, so any byte that is not a known identifier (including a continuation byte) is malformed.
fn read_property(r: &mut Reader) -> Result<Property, DecodeError> {
    let id = r.u8()?;
    Ok(match id {
        PAYLOAD_FORMAT_INDICATOR => Property::PayloadFormatIndicator(u8::from(read_flag(r)?)),
        MESSAGE_EXPIRY_INTERVAL => Property::MessageExpiryInterval(r.u32()?),
        CONTENT_TYPE => Property::ContentType(r.string()?),
        RESPONSE_TOPIC => {
            let topic = r.string()?;
            if !valid_topic_name(&topic) {
                return Err(DecodeError::ProtocolError("response topic is not a valid topic name"));
            }
            Property::ResponseTopic(topic)
        }
        CORRELATION_DATA => Property::CorrelationData(r.binary()?),
        SUBSCRIPTION_IDENTIFIER => {
            // A varint never exceeds 268,435,455, so the conversion cannot fail.
            let id = u32::try_from(r.varint()?).map_err(|_| DecodeError::MalformedPacket("varint"))?;
            if id == 0 {
                return Err(DecodeError::ProtocolError("subscription identifier 0"));
            }
            Property::SubscriptionIdentifier(id)
        }
        SESSION_EXPIRY_INTERVAL => Property::SessionExpiryInterval(r.u32()?),
        ASSIGNED_CLIENT_IDENTIFIER => Property::AssignedClientIdentifier(r.string()?),
        SERVER_KEEP_ALIVE => Property::ServerKeepAlive(r.u16()?),
        AUTHENTICATION_METHOD => Property::AuthenticationMethod(r.string()?),
        AUTHENTICATION_DATA => Property::AuthenticationData(r.binary()?),
        REQUEST_PROBLEM_INFORMATION => Property::RequestProblemInformation(read_flag(r)?),
        WILL_DELAY_INTERVAL => Property::WillDelayInterval(r.u32()?),
        REQUEST_RESPONSE_INFORMATION => Property::RequestResponseInformation(read_flag(r)?),
        RESPONSE_INFORMATION => Property::ResponseInformation(r.string()?),
        SERVER_REFERENCE => Property::ServerReference(r.string()?),
        REASON_STRING => Property::ReasonString(r.string()?),
        RECEIVE_MAXIMUM => Property::ReceiveMaximum(non_zero_u16(r, "receive maximum 0")?),
        TOPIC_ALIAS_MAXIMUM => Property::TopicAliasMaximum(r.u16()?),
        TOPIC_ALIAS => Property::TopicAlias(non_zero_u16(r, "topic alias 0")?),
        MAXIMUM_QOS => Property::MaximumQoS(if read_flag(r)? { QoS::AtLeastOnce } else { QoS::AtMostOnce }),
        RETAIN_AVAILABLE => Property::RetainAvailable(read_flag(r)?),
        USER_PROPERTY => Property::User(r.string()?, r.string()?),
        MAXIMUM_PACKET_SIZE => {
            let size = r.u32()?;
            if size == 0 {
                return Err(DecodeError::ProtocolError("maximum packet size 0"));
            }
            Property::MaximumPacketSize(size)
        }
        WILDCARD_SUBSCRIPTION_AVAILABLE => Property::WildcardSubscriptionAvailable(read_flag(r)?),
        SUBSCRIPTION_IDENTIFIER_AVAILABLE => Property::SubscriptionIdentifierAvailable(read_flag(r)?),
        SHARED_SUBSCRIPTION_AVAILABLE => Property::SharedSubscriptionAvailable(read_flag(r)?),
        _ => return Err(DecodeError::MalformedPacket("unknown property identifier")),
    })
}

/// A byte that the specification allows to be only 0 or 1; anything else is a protocol error.
fn read_flag(r: &mut Reader) -> Result<bool, DecodeError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::ProtocolError("property value other than 0 or 1")),
    }
}

fn non_zero_u16(r: &mut Reader, rule: &'static str) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::ProtocolError(rule)),
        value => Ok(value),
    }
}

/// Stores a property that may appear at most once.
fn once<T>(slot: &mut Option<T>, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::ProtocolError("property appears twice"));
    }
    *slot = Some(value);
    Ok(())
}

/// Stores a property that may repeat (user properties; subscription identifiers in PUBLISH).
fn push<T>(list: &mut Vec<T>, value: T) -> Result<(), DecodeError> {
    list.push(value);
    Ok(())
}

/// Reads the property length and hands each property of the block to `accept`. A property running past the
/// block's end is malformed, as is a block running past the packet's end.
fn read_block(
    r: &mut Reader,
    mut accept: impl FnMut(Property) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let len = r.varint()?;
    let mut block = Reader::new(r.take(len)?);
    while !block.is_empty() {
        accept(read_property(&mut block)?)?;
    }
    Ok(())
}

pub(super) fn read_connect(r: &mut Reader) -> Result<ConnectProperties, DecodeError> {
    let mut p = ConnectProperties::default();
    read_block(r, |prop| match prop {
        Property::SessionExpiryInterval(v) => once(&mut p.session_expiry_interval, v),
        Property::ReceiveMaximum(v) => once(&mut p.receive_maximum, v),
        Property::MaximumPacketSize(v) => once(&mut p.maximum_packet_size, v),
        Property::TopicAliasMaximum(v) => once(&mut p.topic_alias_maximum, v),
        Property::RequestResponseInformation(v) => once(&mut p.request_response_information, v),
        Property::RequestProblemInformation(v) => once(&mut p.request_problem_information, v),
        Property::User(k, v) => push(&mut p.user_properties, (k, v)),
        Property::AuthenticationMethod(v) => once(&mut p.authentication_method, v),
        Property::AuthenticationData(v) => once(&mut p.authentication_data, v),
        _ => Err(NOT_ALLOWED),
    })?;
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(DecodeError::ProtocolError("authentication data without authentication method"));
    }
    Ok(p)
}

pub(super) fn read_will(r: &mut Reader) -> Result<WillProperties, DecodeError> {
    let mut p = WillProperties::default();
    read_block(r, |prop| match prop {
        Property::WillDelayInterval(v) => once(&mut p.will_delay_interval, v),
        Property::PayloadFormatIndicator(v) => once(&mut p.payload_format_indicator, v),
        Property::MessageExpiryInterval(v) => once(&mut p.message_expiry_interval, v),
        Property::ContentType(v) => once(&mut p.content_type, v),
        Property::ResponseTopic(v) => once(&mut p.response_topic, v),
        Property::CorrelationData(v) => once(&mut p.correlation_data, v),
        Property::User(k, v) => push(&mut p.user_properties, (k, v)),
        _ => Err(NOT_ALLOWED),
    })?;
    Ok(p)
}

pub(super) fn read_connack(r: &mut Reader) -> Result<ConnAckProperties, DecodeError> {
    let mut p = ConnAckProperties::default();
    read_block(r, |prop| match prop {
        Property::SessionExpiryInterval(v) => once(&mut p.session_expiry_interval, v),
        Property::ReceiveMaximum(v) => once(&mut p.receive_maximum, v),
        Property::MaximumQoS(v) => once(&mut p.maximum_qos, v),
        Property::RetainAvailable(v) => once(&mut p.retain_available, v),
        Property::MaximumPacketSize(v) => once(&mut p.maximum_packet_size, v),
        Property::AssignedClientIdentifier(v) => once(&mut p.assigned_client_identifier, v),
        Property::TopicAliasMaximum(v) => once(&mut p.topic_alias_maximum, v),
        Property::ReasonString(v) => once(&mut p.reason_string, v),
        Property::User(k, v) => push(&mut p.user_properties, (k, v)),
        Property::WildcardSubscriptionAvailable(v) => once(&mut p.wildcard_subscription_available, v),
        Property::SubscriptionIdentifierAvailable(v) => once(&mut p.subscription_identifiers_available, v),
        Property::SharedSubscriptionAvailable(v) => once(&mut p.shared_subscription_available, v),
        Property::ServerKeepAlive(v) => once(&mut p.server_keep_alive, v),
        Property::ResponseInformation(v) => once(&mut p.response_information, v),
        Property::ServerReference(v) => once(&mut p.server_reference, v),
        Property::AuthenticationMethod(v) => once(&mut p.authentication_method, v),
        Property::AuthenticationData(v) => once(&mut p.authentication_data, v),
        _ => Err(NOT_ALLOWED),
    })?;
    Ok(p)
}

pub(super) fn read_publish(r: &mut Reader) -> Result<PublishProperties, DecodeError> {
    let mut p = PublishProperties::default();
    read_block(r, |prop| match prop {
        Property::PayloadFormatIndicator(v) => once(&mut p.payload_format_indicator, v),
        Property::MessageExpiryInterval(v) => once(&mut p.message_expiry_interval, v),
        Property::TopicAlias(v) => once(&mut p.topic_alias, v),
        Property::ResponseTopic(v) => once(&mut p.response_topic, v),
        Property::CorrelationData(v) => once(&mut p.correlation_data, v),
        Property::User(k, v) => push(&mut p.user_properties, (k, v)),
        Property::SubscriptionIdentifier(v) => push(&mut p.subscription_identifiers, v),
        Property::ContentType(v) => once(&mut p.content_type, v),
        _ => Err(NOT_ALLOWED),
    })?;
    Ok(p)
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK.
pub(super) fn read_ack(r: &mut Reader) -> Result<AckProperties, DecodeError> {
    let mut p = AckProperties::default();
    read_block(r, |prop| match prop {
        Property::ReasonString(v) => once(&mut p.reason_string, v),
        Property::User(k, v) => push(&mut p.user_properties, (k, v)),
        _ => Err(NOT_ALLOWED),
    })?;
    Ok(p)
}

pub(super) fn read_subscribe(r: &mut Reader) -> Result<SubscribeProperties, DecodeError> {
    let mut p = SubscribeProperties::default();
    read_block(r, |prop| match prop {
        Property::SubscriptionIdentifier(v) => once(&mut p.subscription_identifier, v),
        Property::User(k, v) => push(&mut p.user_properties, (k, v)),
        _ => Err(NOT_ALLOWED),
    })?;
    Ok(p)
}

/// UNSUBSCRIBE carries only user properties.
pub(super) fn read_unsubscribe(r: &mut Reader) -> Result<UserProperties, DecodeError> {
    let mut p = UserProperties::new();
    read_block(r, |prop| match prop {
        Property::User(k, v) => push(&mut p, (k, v)),
        _ => Err(NOT_ALLOWED),
    })?;
    Ok(p)
}

pub(super) fn read_disconnect(r: &mut Reader) -> Result<DisconnectProperties, DecodeError> {
    let mut p = DisconnectProperties::default();
    read_block(r, |prop| match prop {
        Property::SessionExpiryInterval(v) => once(&mut p.session_expiry_interval, v),
        Property::ReasonString(v) => once(&mut p.reason_string, v),
        Property::User(k, v) => push(&mut p.user_properties, (k, v)),
        Property::ServerReference(v) => once(&mut p.server_reference, v),
        _ => Err(NOT_ALLOWED),
    })?;
    Ok(p)
}

pub(super) fn read_auth(r: &mut Reader) -> Result<AuthProperties, DecodeError> {
    let mut p = AuthProperties::default();
    read_block(r, |prop| match prop {
        Property::AuthenticationMethod(v) => once(&mut p.authentication_method, v),
        Property::AuthenticationData(v) => once(&mut p.authentication_data, v),
        Property::ReasonString(v) => once(&mut p.reason_string, v),
        Property::User(k, v) => push(&mut p.user_properties, (k, v)),
        _ => Err(NOT_ALLOWED),
    })?;
    Ok(p)
}

/// A properties struct that can write its property block (without the length prefix).
pub(super) trait WriteProperties {
    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError>;
}

/// Writes a property block: its length, then the properties. Measures first, with the same code.
pub(super) fn put_properties<S: Sink, P: WriteProperties>(s: &mut S, props: &P) -> Result<(), EncodeError> {
    let mut counter = Counter::default();
    props.write(&mut counter)?;
    put_varint(s, counter.0)?;
    props.write(s)
}

fn put_u8_prop<S: Sink>(s: &mut S, id: u8, value: Option<u8>) {
    if let Some(v) = value {
        s.put_u8(id);
        s.put_u8(v);
    }
}

fn put_bool_prop<S: Sink>(s: &mut S, id: u8, value: Option<bool>) {
    put_u8_prop(s, id, value.map(u8::from));
}

fn put_u16_prop<S: Sink>(s: &mut S, id: u8, value: Option<u16>) {
    if let Some(v) = value {
        s.put_u8(id);
        s.put_u16(v);
    }
}

fn put_u32_prop<S: Sink>(s: &mut S, id: u8, value: Option<u32>) {
    if let Some(v) = value {
        s.put_u8(id);
        s.put_u32(v);
    }
}

fn put_string_prop<S: Sink>(s: &mut S, id: u8, value: Option<&String>) -> Result<(), EncodeError> {
    if let Some(v) = value {
        s.put_u8(id);
        put_string(s, v)?;
    }
    Ok(())
}

fn put_binary_prop<S: Sink>(s: &mut S, id: u8, value: Option<&Bytes>) -> Result<(), EncodeError> {
    if let Some(v) = value {
        s.put_u8(id);
        put_binary(s, v)?;
    }
    Ok(())
}

fn put_subscription_identifier<S: Sink>(s: &mut S, id: u32) -> Result<(), EncodeError> {
    let value = usize::try_from(id).map_err(|_| EncodeError::VariableByteIntegerTooLarge(id))?;
    if value > MAX_VARINT {
        return Err(EncodeError::VariableByteIntegerTooLarge(id));
    }
    s.put_u8(SUBSCRIPTION_IDENTIFIER);
    put_varint(s, value)
}

fn put_user_properties<S: Sink>(s: &mut S, props: &UserProperties) -> Result<(), EncodeError> {
    for (key, value) in props {
        s.put_u8(USER_PROPERTY);
        put_string(s, key)?;
        put_string(s, value)?;
    }
    Ok(())
}

impl WriteProperties for ConnectProperties {
    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_u32_prop(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_u16_prop(s, RECEIVE_MAXIMUM, self.receive_maximum);
        put_u32_prop(s, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        put_u16_prop(s, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_bool_prop(s, REQUEST_RESPONSE_INFORMATION, self.request_response_information);
        put_bool_prop(s, REQUEST_PROBLEM_INFORMATION, self.request_problem_information);
        put_string_prop(s, AUTHENTICATION_METHOD, self.authentication_method.as_ref())?;
        put_binary_prop(s, AUTHENTICATION_DATA, self.authentication_data.as_ref())?;
        put_user_properties(s, &self.user_properties)
    }
}

impl WriteProperties for WillProperties {
    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_u32_prop(s, WILL_DELAY_INTERVAL, self.will_delay_interval);
        put_u8_prop(s, PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        put_u32_prop(s, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_string_prop(s, CONTENT_TYPE, self.content_type.as_ref())?;
        put_string_prop(s, RESPONSE_TOPIC, self.response_topic.as_ref())?;
        put_binary_prop(s, CORRELATION_DATA, self.correlation_data.as_ref())?;
        put_user_properties(s, &self.user_properties)
    }
}

impl WriteProperties for ConnAckProperties {
    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_u32_prop(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_u16_prop(s, RECEIVE_MAXIMUM, self.receive_maximum);
        // Absence means QoS 2; the value 2 itself is a protocol error on the wire, so a client could not accept it.
        let maximum_qos = self.maximum_qos.filter(|&q| q != QoS::ExactlyOnce);
        put_u8_prop(s, MAXIMUM_QOS, maximum_qos.map(|q| q as u8));
        put_bool_prop(s, RETAIN_AVAILABLE, self.retain_available);
        put_u32_prop(s, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        put_string_prop(s, ASSIGNED_CLIENT_IDENTIFIER, self.assigned_client_identifier.as_ref())?;
        put_u16_prop(s, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_string_prop(s, REASON_STRING, self.reason_string.as_ref())?;
        put_bool_prop(s, WILDCARD_SUBSCRIPTION_AVAILABLE, self.wildcard_subscription_available);
        put_bool_prop(s, SUBSCRIPTION_IDENTIFIER_AVAILABLE, self.subscription_identifiers_available);
        put_bool_prop(s, SHARED_SUBSCRIPTION_AVAILABLE, self.shared_subscription_available);
        put_u16_prop(s, SERVER_KEEP_ALIVE, self.server_keep_alive);
        put_string_prop(s, RESPONSE_INFORMATION, self.response_information.as_ref())?;
        put_string_prop(s, SERVER_REFERENCE, self.server_reference.as_ref())?;
        put_string_prop(s, AUTHENTICATION_METHOD, self.authentication_method.as_ref())?;
        put_binary_prop(s, AUTHENTICATION_DATA, self.authentication_data.as_ref())?;
        put_user_properties(s, &self.user_properties)
    }
}

impl WriteProperties for PublishProperties {
    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_u8_prop(s, PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        put_u32_prop(s, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_u16_prop(s, TOPIC_ALIAS, self.topic_alias);
        put_string_prop(s, RESPONSE_TOPIC, self.response_topic.as_ref())?;
        put_binary_prop(s, CORRELATION_DATA, self.correlation_data.as_ref())?;
        for &id in &self.subscription_identifiers {
            put_subscription_identifier(s, id)?;
        }
        put_string_prop(s, CONTENT_TYPE, self.content_type.as_ref())?;
        put_user_properties(s, &self.user_properties)
    }
}

impl WriteProperties for AckProperties {
    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_string_prop(s, REASON_STRING, self.reason_string.as_ref())?;
        put_user_properties(s, &self.user_properties)
    }
}

impl WriteProperties for SubscribeProperties {
    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        if let Some(id) = self.subscription_identifier {
            put_subscription_identifier(s, id)?;
        }
        put_user_properties(s, &self.user_properties)
    }
}

/// UNSUBSCRIBE's property block holds only user properties.
impl WriteProperties for UserProperties {
    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_user_properties(s, self)
    }
}

impl WriteProperties for DisconnectProperties {
    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_u32_prop(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_string_prop(s, REASON_STRING, self.reason_string.as_ref())?;
        put_string_prop(s, SERVER_REFERENCE, self.server_reference.as_ref())?;
        put_user_properties(s, &self.user_properties)
    }
}

impl WriteProperties for AuthProperties {
    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_string_prop(s, AUTHENTICATION_METHOD, self.authentication_method.as_ref())?;
        put_binary_prop(s, AUTHENTICATION_DATA, self.authentication_data.as_ref())?;
        put_string_prop(s, REASON_STRING, self.reason_string.as_ref())?;
        put_user_properties(s, &self.user_properties)
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;

    /// Wraps `props` (without a length prefix) in a block and reads it with `read`.
    fn read_with<T>(read: fn(&mut Reader) -> Result<T, DecodeError>, props: &[u8]) -> Result<T, DecodeError> {
        let mut block = BytesMut::new();
        put_varint(&mut block, props.len()).unwrap();
        block.extend_from_slice(props);
        let mut r = Reader::new(block.freeze());
        let value = read(&mut r)?;
        assert!(r.is_empty());
        Ok(value)
    }

    fn protocol_error<T: std::fmt::Debug>(result: Result<T, DecodeError>) -> bool {
        matches!(result, Err(DecodeError::ProtocolError(_)))
    }

    fn malformed<T: std::fmt::Debug>(result: Result<T, DecodeError>) -> bool {
        matches!(result, Err(DecodeError::MalformedPacket(_)))
    }

    #[test]
    fn every_publish_property_round_trips() {
        let props = PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(3600),
            topic_alias: Some(7),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "v2".into())],
            subscription_identifiers: vec![1, 268_435_455],
            content_type: Some("text/plain".into()),
        };
        let mut buf = BytesMut::new();
        put_properties(&mut buf, &props).unwrap();
        let mut r = Reader::new(buf.freeze());
        assert_eq!(read_publish(&mut r).unwrap(), props);
        assert!(r.is_empty());
    }

    #[test]
    fn every_connack_property_round_trips() {
        let props = ConnAckProperties {
            session_expiry_interval: Some(1),
            receive_maximum: Some(2),
            maximum_qos: Some(QoS::AtLeastOnce),
            retain_available: Some(false),
            maximum_packet_size: Some(3),
            assigned_client_identifier: Some("id".into()),
            topic_alias_maximum: Some(4),
            reason_string: Some("why".into()),
            user_properties: vec![("a".into(), "b".into())],
            wildcard_subscription_available: Some(true),
            subscription_identifiers_available: Some(false),
            shared_subscription_available: Some(true),
            server_keep_alive: Some(5),
            response_information: Some("info".into()),
            server_reference: Some("other".into()),
            authentication_method: Some("m".into()),
            authentication_data: Some(Bytes::from_static(b"d")),
        };
        let mut buf = BytesMut::new();
        put_properties(&mut buf, &props).unwrap();
        let mut r = Reader::new(buf.freeze());
        assert_eq!(read_connack(&mut r).unwrap(), props);
    }

    #[test]
    fn maximum_qos_2_is_written_as_absence() {
        let props = ConnAckProperties { maximum_qos: Some(QoS::ExactlyOnce), ..Default::default() };
        let mut buf = BytesMut::new();
        put_properties(&mut buf, &props).unwrap();
        assert_eq!(&buf[..], [0]);
    }

    #[test]
    fn duplicates_are_protocol_errors_except_user_property_and_publish_subscription_id() {
        assert!(protocol_error(read_with(read_publish, &[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2])));
        assert!(protocol_error(read_with(read_subscribe, &[0x0B, 1, 0x0B, 2])));
        let p = read_with(read_publish, &[0x0B, 1, 0x0B, 2]).unwrap();
        assert_eq!(p.subscription_identifiers, vec![1, 2]);
        let p = read_with(read_ack, &[0x26, 0, 1, b'k', 0, 0, 0x26, 0, 1, b'k', 0, 0]).unwrap();
        assert_eq!(p.user_properties.len(), 2);
    }

    #[test]
    fn value_rules() {
        assert!(protocol_error(read_with(read_publish, &[0x0B, 0])));
        assert!(protocol_error(read_with(read_connect, &[0x21, 0, 0])));
        assert!(protocol_error(read_with(read_connect, &[0x27, 0, 0, 0, 0])));
        assert!(protocol_error(read_with(read_publish, &[0x23, 0, 0])));
        assert!(protocol_error(read_with(read_publish, &[0x01, 2])));
        assert!(protocol_error(read_with(read_connect, &[0x17, 2])));
        assert!(protocol_error(read_with(read_connect, &[0x19, 2])));
        assert!(protocol_error(read_with(read_connack, &[0x24, 2])));
        assert!(protocol_error(read_with(read_connack, &[0x25, 2])));
        assert!(protocol_error(read_with(read_connack, &[0x28, 2])));
        assert!(protocol_error(read_with(read_connack, &[0x29, 2])));
        assert!(protocol_error(read_with(read_connack, &[0x2A, 2])));
        assert!(protocol_error(read_with(read_publish, &[0x08, 0, 3, b'a', b'/', b'+'])));
        assert!(protocol_error(read_with(read_connect, &[0x16, 0, 1, b'x'])));
        assert_eq!(read_with(read_connack, &[0x24, 0]).unwrap().maximum_qos, Some(QoS::AtMostOnce));
    }

    #[test]
    fn properties_outside_their_packet_are_malformed() {
        // Topic alias in CONNECT, session expiry in PUBLISH, reason string in SUBSCRIBE, will delay in CONNECT.
        assert!(malformed(read_with(read_connect, &[0x23, 0, 1])));
        assert!(malformed(read_with(read_publish, &[0x11, 0, 0, 0, 1])));
        assert!(malformed(read_with(read_subscribe, &[0x1F, 0, 0])));
        assert!(malformed(read_with(read_connect, &[0x18, 0, 0, 0, 1])));
        assert!(malformed(read_with(read_unsubscribe, &[0x0B, 1])));
        assert!(malformed(read_with(read_ack, &[0x15, 0, 0])));
        // Unknown identifiers, including a multi-byte one.
        assert!(malformed(read_with(read_ack, &[0x00])));
        assert!(malformed(read_with(read_ack, &[0x2B, 0])));
        assert!(malformed(read_with(read_ack, &[0x81, 0x00])));
    }

    #[test]
    fn property_crossing_its_block_is_malformed() {
        // Block length 2, but the message expiry interval needs 5 bytes.
        let mut r = Reader::new(Bytes::from_static(&[2, 0x02, 0, 0, 0, 1]));
        assert!(malformed(read_publish(&mut r)));
        // Block longer than what is left.
        let mut r = Reader::new(Bytes::from_static(&[9, 0x02, 0, 0, 0, 1]));
        assert!(malformed(read_publish(&mut r)));
    }

    #[test]
    fn subscription_identifier_beyond_varint_range_cannot_be_written() {
        let props = SubscribeProperties { subscription_identifier: Some(268_435_456), ..Default::default() };
        let mut buf = BytesMut::new();
        assert_eq!(
            put_properties(&mut buf, &props),
            Err(EncodeError::VariableByteIntegerTooLarge(268_435_456))
        );
    }
}
