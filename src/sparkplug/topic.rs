//! The Sparkplug B topic namespace (specification 4.1): `spBv1.0/<group>/<type>/<edge node>[/<device>]` and
//! `spBv1.0/STATE/<host application>`, and the broker's `$sparkplug/certificates/...` copies of births.

use std::fmt;

/// The namespace element of every Sparkplug B topic.
pub const NAMESPACE: &str = "spBv1.0";
/// Where a Sparkplug-aware broker republishes births (specification 10.1.3); clients may not publish below.
pub const CERTIFICATES: &str = "$sparkplug/certificates";
/// The first level reserved to the broker.
pub const RESERVED_ROOT: &str = "$sparkplug";

/// The message type level of an edge node's or device's topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum MessageType {
    NBirth,
    NDeath,
    DBirth,
    DDeath,
    NData,
    DData,
    NCmd,
    DCmd,
}

impl MessageType {
    fn parse(level: &str) -> Option<MessageType> {
        Some(match level {
            "NBIRTH" => MessageType::NBirth,
            "NDEATH" => MessageType::NDeath,
            "DBIRTH" => MessageType::DBirth,
            "DDEATH" => MessageType::DDeath,
            "NDATA" => MessageType::NData,
            "DDATA" => MessageType::DData,
            "NCMD" => MessageType::NCmd,
            "DCMD" => MessageType::DCmd,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::NBirth => "NBIRTH",
            MessageType::NDeath => "NDEATH",
            MessageType::DBirth => "DBIRTH",
            MessageType::DDeath => "DDEATH",
            MessageType::NData => "NDATA",
            MessageType::DData => "DDATA",
            MessageType::NCmd => "NCMD",
            MessageType::DCmd => "DCMD",
        }
    }

    /// Device messages carry a device level; node messages do not.
    pub fn is_device(self) -> bool {
        matches!(self, MessageType::DBirth | MessageType::DDeath | MessageType::DData | MessageType::DCmd)
    }

    /// Births are what the broker republishes under `$sparkplug/certificates`.
    pub fn is_birth(self) -> bool {
        matches!(self, MessageType::NBirth | MessageType::DBirth)
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A topic of the Sparkplug B namespace, borrowed from the topic name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic<'a> {
    /// An edge node's or device's message: decoded as a protobuf [`super::proto::Payload`].
    Edge(EdgeTopic<'a>),
    /// A host application's `STATE`: a JSON payload (Sparkplug 3.0).
    State { host: &'a str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeTopic<'a> {
    pub group: &'a str,
    pub kind: MessageType,
    pub node: &'a str,
    /// Present exactly for device message types.
    pub device: Option<&'a str>,
}

impl<'a> Topic<'a> {
    /// Parses a topic name; `None` if it is not in the Sparkplug B namespace or breaks its shape (wrong number
    /// of levels, an unknown message type, an empty identifier, a device level on a node message or none on a
    /// device message). Such topics are then ordinary MQTT topics to the gateway.
    pub fn parse(topic: &'a str) -> Option<Topic<'a>> {
        let rest = topic.strip_prefix(NAMESPACE)?.strip_prefix('/')?;
        let mut levels = rest.split('/');
        let first = levels.next()?;
        if first == "STATE" {
            let host = levels.next().filter(|h| valid_id(h))?;
            return levels.next().is_none().then_some(Topic::State { host });
        }
        let group = Some(first).filter(|g| valid_id(g))?;
        let kind = MessageType::parse(levels.next()?)?;
        let node = levels.next().filter(|n| valid_id(n))?;
        let device = levels.next();
        if levels.next().is_some() || device.is_some() != kind.is_device() {
            return None;
        }
        if device.is_some_and(|d| !valid_id(d)) {
            return None;
        }
        Some(Topic::Edge(EdgeTopic { group, kind, node, device }))
    }
}

impl EdgeTopic<'_> {
    /// Where the broker keeps the retained copy of this birth (specification 10.1.3), `None` for other types.
    pub fn certificate_topic(&self) -> Option<String> {
        if !self.kind.is_birth() {
            return None;
        }
        let mut topic = format!("{CERTIFICATES}/{NAMESPACE}/{}/{}/{}", self.group, self.kind, self.node);
        if let Some(device) = self.device {
            topic.push('/');
            topic.push_str(device);
        }
        Some(topic)
    }
}

/// The topic of a command to an edge node.
pub fn node_command_topic(group: &str, node: &str) -> String {
    format!("{NAMESPACE}/{group}/NCMD/{node}")
}

/// Whether a topic is reserved to the broker: clients may not publish there (like `$SYS`).
pub fn is_reserved(topic: &str) -> bool {
    topic.strip_prefix(RESERVED_ROOT).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Identifiers are non-empty and free of the MQTT wildcards (a topic name has no `/` within a level).
fn valid_id(id: &str) -> bool {
    !id.is_empty() && !id.contains(['+', '#'])
}

/// Whether `id` may be used as a group, edge node or device identifier in a topic the gateway builds.
pub fn valid_identifier(id: &str) -> bool {
    valid_id(id) && !id.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_topics_parse_by_their_shape() {
        assert_eq!(
            Topic::parse("spBv1.0/Plant1/NBIRTH/Edge1"),
            Some(Topic::Edge(EdgeTopic {
                group: "Plant1",
                kind: MessageType::NBirth,
                node: "Edge1",
                device: None
            }))
        );
        assert_eq!(
            Topic::parse("spBv1.0/G/DDATA/N/D"),
            Some(Topic::Edge(EdgeTopic {
                group: "G",
                kind: MessageType::DData,
                node: "N",
                device: Some("D")
            }))
        );
        assert_eq!(Topic::parse("spBv1.0/STATE/scada"), Some(Topic::State { host: "scada" }));
        for bad in [
            "spBv1.0",
            "spBv1.0/",
            "spBv1.0/G/NBIRTH",
            "spBv1.0/G/NBIRTH/N/D",
            "spBv1.0/G/DBIRTH/N",
            "spBv1.0/G/XDATA/N",
            "spBv1.0//NDATA/N",
            "spBv1.0/G/NDATA/",
            "spBv1.0/G/DDATA/N/",
            "spBv1.0/STATE",
            "spBv1.0/STATE/h/x",
            "spAv1.0/G/NDATA/N",
            "spBv1.0x/G/NDATA/N",
            "x/spBv1.0/G/NDATA/N",
        ] {
            assert_eq!(Topic::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn births_have_certificate_topics() {
        let Some(Topic::Edge(t)) = Topic::parse("spBv1.0/G/DBIRTH/N/D") else { panic!("no parse") };
        assert_eq!(t.certificate_topic().as_deref(), Some("$sparkplug/certificates/spBv1.0/G/DBIRTH/N/D"));
        let Some(Topic::Edge(t)) = Topic::parse("spBv1.0/G/NBIRTH/N") else { panic!("no parse") };
        assert_eq!(t.certificate_topic().as_deref(), Some("$sparkplug/certificates/spBv1.0/G/NBIRTH/N"));
        let Some(Topic::Edge(t)) = Topic::parse("spBv1.0/G/NDATA/N") else { panic!("no parse") };
        assert_eq!(t.certificate_topic(), None);
    }

    #[test]
    fn the_sparkplug_root_is_reserved() {
        assert!(is_reserved("$sparkplug"));
        assert!(is_reserved("$sparkplug/certificates/spBv1.0/G/NBIRTH/N"));
        assert!(!is_reserved("$sparkplugx/a"));
        assert!(!is_reserved("spBv1.0/G/NBIRTH/N"));
    }
}
