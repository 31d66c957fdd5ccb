//! The Sparkplug 3.0 requirements of an MQTT server ("Sparkplug Aware", specification 10.1), as pure functions
//! the router calls: the router owns retained state, so it is the one that stores the copies.
//!
//! - NBIRTH and DBIRTH messages are republished retained on `$sparkplug/certificates/spBv1.0/<group>/NBIRTH/
//!   <edge node>` (and `.../DBIRTH/<edge node>/<device>`), so that a host application that connects later reads
//!   every current birth at once. They are recorded in the journal like any retained message, so they survive a
//!   restart; subscribers' access rules apply to them as to any topic.
//! - Clients may not publish under `$sparkplug/` ([`reserved_topic`], checked by the connection like `$SYS`).
//! - An NDEATH will gets the time it is actually delivered as its payload timestamp (10.1.4: "MAY"): it was
//!   registered at CONNECT, possibly days earlier.

use std::sync::Arc;

use super::message::Message;
use crate::sparkplug::payload;
use crate::sparkplug::topic::{self, MessageType, Topic};

/// Topics no client may publish to: the broker's `$SYS` tree and the Sparkplug certificates.
pub fn reserved_topic(topic: &str) -> bool {
    topic.starts_with("$SYS") || topic::is_reserved(topic)
}

/// The retained copy of a birth under `$sparkplug/certificates/`, or `None` if `message` is not an NBIRTH or
/// DBIRTH with a payload that decodes (a malformed birth certifies nothing).
pub(super) fn certificate(message: &Message) -> Option<Message> {
    let Some(Topic::Edge(edge)) = Topic::parse(&message.topic) else { return None };
    let certificate_topic = edge.certificate_topic()?;
    if message.payload.is_empty() || payload::decode_payload(&message.payload).is_err() {
        return None;
    }
    let mut copy = Message::new(&certificate_topic, message.payload.clone(), message.qos, true);
    copy.username = message.username.clone();
    copy.received = message.received;
    Some(copy)
}

/// Sets an NDEATH will's payload timestamp to now (unix ms); other messages, and payloads that do not decode,
/// are left as they are.
pub(super) fn stamp_death(message: &mut Message) {
    let is_death =
        matches!(Topic::parse(&message.topic), Some(Topic::Edge(e)) if e.kind == MessageType::NDeath);
    if !is_death {
        return;
    }
    let now = u64::try_from(crate::timefmt::now_ms()).unwrap_or(0);
    if let Some(stamped) = payload::with_timestamp(&message.payload, now) {
        message.payload = stamped.into();
    }
}

/// Shared, for the router's publish path.
pub(super) fn certificate_shared(message: &Arc<Message>) -> Option<Arc<Message>> {
    certificate(message).map(Arc::new)
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::mqtt::codec::QoS;
    use crate::sparkplug::proto::Payload;

    #[test]
    fn births_are_certified_and_nothing_else() {
        let birth = Payload { seq: Some(0), ..Payload::default() }.encode_to_vec();
        let m = Message::new("spBv1.0/G/NBIRTH/N", birth.clone(), QoS::AtMostOnce, false);
        let c = certificate(&m).unwrap();
        assert_eq!(&*c.topic, "$sparkplug/certificates/spBv1.0/G/NBIRTH/N");
        assert!(c.retain);
        assert_eq!(c.payload, m.payload);
        let m = Message::new("spBv1.0/G/DBIRTH/N/D", birth.clone(), QoS::AtLeastOnce, false);
        assert_eq!(&*certificate(&m).unwrap().topic, "$sparkplug/certificates/spBv1.0/G/DBIRTH/N/D");
        for topic in ["spBv1.0/G/NDATA/N", "a/NBIRTH/b", "spBv1.0/STATE/h"] {
            assert!(certificate(&Message::new(topic, birth.clone(), QoS::AtMostOnce, false)).is_none());
        }
        assert!(
            certificate(&Message::new("spBv1.0/G/NBIRTH/N", vec![0xFF], QoS::AtMostOnce, false)).is_none()
        );
        assert!(
            certificate(&Message::new("spBv1.0/G/NBIRTH/N", Vec::new(), QoS::AtMostOnce, false)).is_none()
        );
    }

    #[test]
    fn death_wills_are_stamped() {
        let death = Payload { timestamp: Some(1), ..Payload::default() }.encode_to_vec();
        let mut m = Message::new("spBv1.0/G/NDEATH/N", death.clone(), QoS::AtLeastOnce, false);
        stamp_death(&mut m);
        let ts = Payload::decode(&m.payload[..]).unwrap().timestamp.unwrap();
        assert!(ts > 1_600_000_000_000);
        let mut other = Message::new("spBv1.0/G/NDATA/N", death.clone(), QoS::AtLeastOnce, false);
        stamp_death(&mut other);
        assert_eq!(other.payload, death);
        assert!(
            reserved_topic("$sparkplug/certificates/x") && reserved_topic("$SYS/x") && !reserved_topic("a")
        );
    }
}
