//! Presence: what the router tells the store about each client's connection, so that wills and presence survive
//! the gateway's own failure (a kill -9, a power cut), and the configured birth and death messages.
//!
//! The router reports every attach and detach as a [`PresenceChange`] ([`super::Durable::presence`]); the store
//! keeps the last one per client (with the will of a connected client) and a history of them. At start-up it
//! hands back each client's last [`PresenceRecord`]: a client still `online` there was connected when the gateway
//! died.

use super::Will;
use super::message::{ClientId, Message};
use crate::auth::Identity;
use crate::mqtt::codec::{QoS, topic};

/// The reason given for clients that were connected when the gateway stopped uncleanly.
pub const GATEWAY_RESTART: &str = "gateway restart";

/// A client's state as `$SYS/weir/clients/<id>/presence` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceState {
    Online,
    /// Disconnected normally.
    Offline,
    /// The connection was lost (keep alive, socket error, takeover, the gateway's own failure).
    Lost,
}

impl PresenceState {
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceState::Online => "online",
            PresenceState::Offline => "offline",
            PresenceState::Lost => "lost",
        }
    }

    pub fn parse(text: &str) -> Option<PresenceState> {
        match text {
            "online" => Some(PresenceState::Online),
            "offline" => Some(PresenceState::Offline),
            "lost" => Some(PresenceState::Lost),
            _ => None,
        }
    }
}

/// One attach or detach, as the store records it (the last per client, and in the history).
#[derive(Debug, Clone)]
pub struct PresenceChange {
    pub client_id: ClientId,
    pub state: PresenceState,
    pub reason: Option<String>,
    /// Unix ms.
    pub ts: i64,
    pub username: Option<String>,
    /// The connection's address.
    pub peer: Option<String>,
    /// While online: the will to publish if the gateway dies with the client connected (clean sessions too).
    pub will: Option<Will>,
}

/// A client's last presence as the store kept it across a restart.
#[derive(Debug, Clone)]
pub struct PresenceRecord {
    pub client_id: ClientId,
    pub state: PresenceState,
    pub reason: Option<String>,
    /// Unix ms.
    pub ts: i64,
    pub username: Option<String>,
    pub peer: Option<String>,
    /// Online at the crash: its will, not yet published.
    pub will: Option<Will>,
}

/// The retained presence message of a client.
pub(super) fn presence_message(
    client: &ClientId,
    state: PresenceState,
    reason: Option<&str>,
    ts: i64,
) -> Message {
    let payload = serde_json::json!({ "state": state.as_str(), "reason": reason, "ts": ts }).to_string();
    let topic = format!("$SYS/weir/clients/{}/presence", super::router::escape_level(client.as_str()));
    Message::new(&topic, payload, QoS::AtLeastOnce, true)
}

/// Which message a [`PresenceRule`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceEvent {
    /// When a matching client connects.
    Birth,
    /// When it disconnects normally (DISCONNECT): a lost client gets its will instead.
    Death,
}

impl PresenceEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceEvent::Birth => "birth",
            PresenceEvent::Death => "death",
        }
    }

    pub fn parse(text: &str) -> Option<PresenceEvent> {
        match text {
            "birth" => Some(PresenceEvent::Birth),
            "death" => Some(PresenceEvent::Death),
            _ => None,
        }
    }
}

/// Which clients a [`PresenceRule`] is for. User names and client ids are patterns where `*` stands for any
/// run of characters and `?` for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMatch {
    User(String),
    Role(String),
    Client(String),
}

/// A configured birth or death message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceRule {
    pub matcher: ClientMatch,
    pub event: PresenceEvent,
    /// `%c` the client id, `%u` the user name.
    pub topic: String,
    /// `%c`, `%u`, `%t` the time in unix ms, `%T` the time in RFC 3339, `%%` a percent sign.
    pub payload: String,
    pub qos: QoS,
    pub retain: bool,
}

impl PresenceRule {
    /// Whether the rule is for this client; `roles` are the user's roles in the rules in force.
    pub fn matches(&self, who: &Identity, roles: &[String]) -> bool {
        match &self.matcher {
            ClientMatch::User(pattern) => who.username.as_deref().is_some_and(|u| glob(pattern, u)),
            ClientMatch::Role(role) => roles.iter().any(|r| r == role),
            ClientMatch::Client(pattern) => glob(pattern, &who.client_id),
        }
    }

    /// The message for this client at `now_ms`; `None` when the topic needs a user name the client has not, or
    /// is not a valid topic name once filled in (a wildcard, or a `$` topic).
    pub fn message(&self, who: &Identity, now_ms: i64) -> Option<Message> {
        if self.topic.contains("%u") && who.username.is_none() {
            return None;
        }
        let topic = expand(&self.topic, who, now_ms);
        if !topic::valid_topic_name(&topic) || topic.starts_with('$') {
            return None;
        }
        let mut message = Message::new(&topic, expand(&self.payload, who, now_ms), self.qos, self.retain);
        message.origin = Some(ClientId::new(&who.client_id));
        Some(message)
    }
}

/// Fills in a template's placeholders (see [`PresenceRule::payload`]); unknown ones are left as written.
pub fn expand(template: &str, who: &Identity, now_ms: i64) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('c') => out.push_str(&who.client_id),
            Some('u') => out.push_str(who.username.as_deref().unwrap_or_default()),
            Some('t') => out.push_str(&now_ms.to_string()),
            Some('T') => out.push_str(&crate::timefmt::format(now_ms)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Matches `text` against a pattern where `*` is any run of characters and `?` any one character.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Iterative matching with backtracking to the last `*`: linear in practice, no recursion.
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || Some(&c) == t.get(ti) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.iter().skip(pi).all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(user: Option<&str>, client: &str) -> Identity {
        Identity { username: user.map(str::to_owned), client_id: client.to_owned() }
    }

    #[test]
    fn globs_match_like_shell_patterns() {
        for (pattern, text, expected) in [
            ("*", "", true),
            ("sensor-*", "sensor-7", true),
            ("sensor-*", "pump-7", false),
            ("s?n*r-*", "sensor-12", true),
            ("*-7", "sensor-7", true),
            ("*-7", "sensor-77", false),
            ("a*b*c", "aXbYbZc", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob(pattern, text), expected, "{pattern} {text}");
        }
    }

    #[test]
    fn templates_fill_in_client_user_and_time() {
        let w = who(Some("alice"), "dev/1");
        assert_eq!(expand("%c|%u|%t|%%|%x|%", &w, 42), "dev/1|alice|42|%|%x|%");
        assert!(expand("%T", &w, 0).starts_with("1970-01-01"));
    }

    #[test]
    fn a_rule_makes_no_message_on_an_invalid_topic() {
        let rule = PresenceRule {
            matcher: ClientMatch::Client("*".into()),
            event: PresenceEvent::Birth,
            topic: "devices/%u/birth".into(),
            payload: "{\"ts\":%t}".into(),
            qos: QoS::AtLeastOnce,
            retain: true,
        };
        assert!(rule.message(&who(None, "c"), 1).is_none(), "no user name");
        assert!(rule.message(&who(Some("a+b"), "c"), 1).is_none(), "a wildcard");
        let message = rule.message(&who(Some("alice"), "c"), 7).unwrap();
        assert_eq!(&*message.topic, "devices/alice/birth");
        assert_eq!(&message.payload[..], b"{\"ts\":7}");
        assert!(rule.matches(&who(None, "c"), &[]));
    }
}
