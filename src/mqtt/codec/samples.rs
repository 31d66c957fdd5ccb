//! Test-only: valid packets of every type, as each protocol version can express them. Shared by the round-trip
//! tests and as seeds for the deterministic fuzz test.

use bytes::Bytes;

use super::packet::*;

fn user() -> UserProperties {
    vec![("region".into(), "eu".into()), ("region".into(), "us".into()), ("".into(), "".into())]
}

/// A CONNECT with every field set that `protocol` can carry.
pub(super) fn full_connect(protocol: ProtocolVersion) -> Connect {
    let v5 = protocol.is_v5();
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: "client-\u{e9}".into(),
        will: Some(Will {
            topic: "clients/gone".into(),
            payload: Bytes::from_static(b"\x00bye\xFF"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: if v5 {
                WillProperties {
                    will_delay_interval: Some(30),
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(3600),
                    content_type: Some("text/plain".into()),
                    response_topic: Some("replies/x".into()),
                    correlation_data: Some(Bytes::from_static(b"corr")),
                    user_properties: user(),
                }
            } else {
                WillProperties::default()
            },
        }),
        username: Some("user".into()),
        password: Some(Bytes::from_static(b"p\x00ss")),
        properties: if v5 {
            ConnectProperties {
                session_expiry_interval: Some(u32::MAX),
                receive_maximum: Some(20),
                maximum_packet_size: Some(1 << 20),
                topic_alias_maximum: Some(10),
                request_response_information: Some(true),
                request_problem_information: Some(false),
                user_properties: user(),
                authentication_method: Some("SCRAM-SHA-256".into()),
                authentication_data: Some(Bytes::from_static(b"client-first")),
            }
        } else {
            ConnectProperties::default()
        },
    }
}

/// The smallest CONNECT: empty client id, nothing optional.
pub(super) fn minimal_connect(protocol: ProtocolVersion) -> Connect {
    Connect {
        protocol,
        clean_start: false,
        keep_alive: 0,
        client_id: String::new(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

fn ack_properties() -> AckProperties {
    AckProperties { reason_string: Some("because".into()), user_properties: user() }
}

/// Packets of every type that `version` can express and that decode back to themselves.
pub(super) fn all(version: ProtocolVersion) -> Vec<Packet> {
    let mut packets = vec![
        Packet::Connect(Box::new(full_connect(version))),
        Packet::Connect(Box::new(minimal_connect(version))),
        Packet::ConnAck(ConnAck::default()),
        Packet::ConnAck(ConnAck { session_present: version != ProtocolVersion::V3_1, ..ConnAck::default() }),
        Packet::ConnAck(ConnAck { reason: ReasonCode::NOT_AUTHORIZED, ..ConnAck::default() }),
        Packet::Publish(Publish {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"hello"),
            ..Publish::default()
        }),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "sensors/\u{1F321}/t".into(),
            packet_id: Some(u16::MAX),
            payload: Bytes::from(vec![0xA5; 300]),
            ..Publish::default()
        }),
        Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            topic: "/".into(),
            packet_id: Some(1),
            ..Publish::default()
        }),
        Packet::PubAck(PubResp::new(1)),
        Packet::PubRec(PubResp::new(2)),
        Packet::PubRel(PubResp::new(3)),
        Packet::PubComp(PubResp::new(u16::MAX)),
        Packet::Subscribe(Subscribe {
            packet_id: 10,
            filters: vec![
                SubscribeFilter { filter: "a/+/c".into(), options: SubscriptionOptions::default() },
                SubscribeFilter {
                    filter: "#".into(),
                    options: SubscriptionOptions { qos: QoS::ExactlyOnce, ..Default::default() },
                },
            ],
            properties: SubscribeProperties::default(),
        }),
        Packet::SubAck(SubAck {
            packet_id: 10,
            reasons: vec![
                ReasonCode::GRANTED_QOS_0,
                ReasonCode::GRANTED_QOS_1,
                ReasonCode::GRANTED_QOS_2,
                ReasonCode::UNSPECIFIED_ERROR,
            ],
            properties: AckProperties::default(),
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 11,
            filters: vec!["a/+/c".into(), "$share/g/x".into()],
            user_properties: Vec::new(),
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect::default()),
    ];
    if version == ProtocolVersion::V5 {
        packets.extend(v5_only());
    } else {
        packets.push(Packet::UnsubAck(UnsubAck { packet_id: 11, ..UnsubAck::default() }));
        for reason in [0x84, 0x85, 0x88, 0x86] {
            packets.push(Packet::ConnAck(ConnAck { reason: ReasonCode(reason), ..ConnAck::default() }));
        }
    }
    packets
}

/// Packets whose fields only 5.0 can carry.
fn v5_only() -> Vec<Packet> {
    let publish_properties = PublishProperties {
        payload_format_indicator: Some(0),
        message_expiry_interval: Some(0),
        topic_alias: Some(3),
        response_topic: Some("r".into()),
        correlation_data: Some(Bytes::new()),
        user_properties: user(),
        subscription_identifiers: vec![1, 127, 128, 268_435_455],
        content_type: Some("application/json".into()),
    };
    let with_reason = |reason: u8| PubResp { packet_id: 7, reason: ReasonCode(reason), ..PubResp::default() };
    let with_properties = |reason: u8| PubResp { properties: ack_properties(), ..with_reason(reason) };
    vec![
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason: ReasonCode::SUCCESS,
            properties: ConnAckProperties {
                session_expiry_interval: Some(0),
                receive_maximum: Some(1),
                maximum_qos: Some(QoS::AtMostOnce),
                retain_available: Some(true),
                maximum_packet_size: Some(u32::MAX),
                assigned_client_identifier: Some("auto-1".into()),
                topic_alias_maximum: Some(0),
                reason_string: Some("ok".into()),
                user_properties: user(),
                wildcard_subscription_available: Some(false),
                subscription_identifiers_available: Some(true),
                shared_subscription_available: Some(false),
                server_keep_alive: Some(120),
                response_information: Some("resp/".into()),
                server_reference: Some("other:1883".into()),
                authentication_method: Some("SCRAM-SHA-256".into()),
                authentication_data: Some(Bytes::from_static(b"server-final")),
            },
        }),
        Packet::ConnAck(ConnAck { reason: ReasonCode::BANNED, ..ConnAck::default() }),
        Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            topic: "with/props".into(),
            packet_id: Some(5),
            properties: publish_properties.clone(),
            payload: Bytes::from_static(b"{}"),
            ..Publish::default()
        }),
        // An empty topic stands for the one the alias was set to.
        Packet::Publish(Publish {
            topic: String::new(),
            properties: PublishProperties { topic_alias: Some(3), ..PublishProperties::default() },
            ..Publish::default()
        }),
        Packet::PubAck(with_reason(0x10)),
        Packet::PubRec(with_properties(0x80)),
        Packet::PubRel(with_reason(0x92)),
        Packet::PubComp(with_properties(0)),
        Packet::Subscribe(Subscribe {
            packet_id: 12,
            filters: vec![
                SubscribeFilter {
                    filter: "a/#".into(),
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: RetainHandling::DoNotSend,
                    },
                },
                SubscribeFilter {
                    filter: "$share/group/b".into(),
                    options: SubscriptionOptions {
                        retain_handling: RetainHandling::SendAtNewSubscribe,
                        ..Default::default()
                    },
                },
            ],
            properties: SubscribeProperties { subscription_identifier: Some(99), user_properties: user() },
        }),
        Packet::SubAck(SubAck {
            packet_id: 12,
            reasons: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::TOPIC_FILTER_INVALID],
            properties: ack_properties(),
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 13,
            filters: vec!["x".into()],
            user_properties: user(),
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 13,
            reasons: vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED],
            properties: AckProperties::default(),
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 14,
            reasons: vec![ReasonCode::NOT_AUTHORIZED],
            properties: ack_properties(),
        }),
        Packet::Disconnect(Disconnect { reason: ReasonCode::DISCONNECT_WITH_WILL, ..Disconnect::default() }),
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::SERVER_MOVED,
            properties: DisconnectProperties {
                session_expiry_interval: Some(10),
                reason_string: Some("moving".into()),
                user_properties: user(),
                server_reference: Some("elsewhere".into()),
            },
        }),
        Packet::Auth(Auth::default()),
        Packet::Auth(Auth { reason: ReasonCode::CONTINUE_AUTHENTICATION, ..Auth::default() }),
        Packet::Auth(Auth {
            reason: ReasonCode::REAUTHENTICATE,
            properties: AuthProperties {
                authentication_method: Some("SCRAM-SHA-256".into()),
                authentication_data: Some(Bytes::from_static(b"data")),
                reason_string: Some("again".into()),
                user_properties: user(),
            },
        }),
    ]
}
