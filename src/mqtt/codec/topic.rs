//! Topic names, topic filters and shared subscriptions (§4.7 and §4.8.2 of MQTT 5.0; §4.7 of 3.1.1).
//!
//! Pure string functions: the decoder uses them to reject what the specification calls malformed, and the
//! broker uses them to route. A topic name is what a PUBLISH is sent to (`a/b/c`); a topic filter is what a
//! subscription asks for and may contain the wildcards `+` (exactly one level) and `#` (any number of levels,
//! only at the end).

/// The longest topic a two-byte length prefix can carry.
const MAX_TOPIC_LEN: usize = 65_535;

/// The prefix that turns a filter into a shared subscription (MQTT 5.0 §4.8.2; widely used with 3.1.1 too).
const SHARE_PREFIX: &str = "$share/";

/// Whether `name` may be published to: non-empty, at most 65,535 bytes, no wildcard and no U+0000.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_TOPIC_LEN && !name.contains(['+', '#', '\0'])
}

/// Whether `filter` may be subscribed to: non-empty, at most 65,535 bytes, no U+0000, `+` only as a whole
/// level and `#` only as the whole last level.
///
/// A shared subscription (`$share/group/filter`) passes too, since `$share` and the group are ordinary
/// levels; use [`parse_shared`] to check the parts that are specific to it.
pub fn valid_topic_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > MAX_TOPIC_LEN || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        let valid = match level {
            "#" => is_last,
            "+" => true,
            _ => !level.contains(['+', '#']),
        };
        if !valid {
            return false;
        }
    }
    true
}

/// A shared subscription split into its parts: messages matching `filter` go to one member of `group`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    /// The share name: non-empty, without `/`, `+` or `#`.
    pub group: &'a str,
    /// The topic filter the group subscribes to; valid per [`valid_topic_filter`].
    pub filter: &'a str,
}

/// Why a filter that starts with `$share/` is not a valid shared subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SharedFilterError {
    /// `$share/group` with nothing after the group: there is no filter to share.
    #[error("shared subscription has no topic filter")]
    MissingFilter,
    /// The share name is empty (`$share//a`) or contains a wildcard.
    #[error("invalid share name")]
    InvalidGroup,
    /// The part after the share name is not a valid topic filter.
    #[error("invalid topic filter in shared subscription")]
    InvalidFilter,
}

/// Recognises a shared subscription `$share/{group}/{filter}`.
///
/// `None` when `filter` is an ordinary filter (including plain `$share`, which is just a topic level);
/// `Some(Err)` when it starts with `$share/` but is not a valid shared subscription, which MQTT 5.0 treats as
/// a protocol error and a broker should answer with SUBACK 0x8F for that filter.
pub fn parse_shared(filter: &str) -> Option<Result<SharedFilter<'_>, SharedFilterError>> {
    let rest = filter.strip_prefix(SHARE_PREFIX)?;
    Some(split_shared(rest))
}

fn split_shared(rest: &str) -> Result<SharedFilter<'_>, SharedFilterError> {
    let (group, filter) = rest.split_once('/').ok_or(SharedFilterError::MissingFilter)?;
    if group.is_empty() || group.contains(['+', '#']) {
        return Err(SharedFilterError::InvalidGroup);
    }
    if !valid_topic_filter(filter) {
        return Err(SharedFilterError::InvalidFilter);
    }
    Ok(SharedFilter { group, filter })
}

/// Whether a message published to `topic` is delivered to a subscription on `filter`.
///
/// `+` matches exactly one level, which may be empty (`+/+` matches `/`); `#` matches the level it stands in
/// for, everything below it, and its parent (`a/#` matches `a`). Topics starting with `$` (such as `$SYS/...`)
/// are server-specific and are not matched by a filter whose first level is a wildcard [MQTT-4.7.2-1].
///
/// Both arguments are assumed valid (see [`valid_topic_name`] and [`valid_topic_filter`]); pass the inner
/// filter of a shared subscription, not `$share/...`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && matches!(filter.split('/').next(), Some("+" | "#")) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(valid_topic_name("a"));
        assert!(valid_topic_name("/"));
        assert!(valid_topic_name("sport/tennis/player1"));
        assert!(valid_topic_name("$SYS/broker"));
        assert!(valid_topic_name(" "));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name("a/+"));
        assert!(!valid_topic_name("a/#"));
        assert!(!valid_topic_name("a+b"));
        assert!(!valid_topic_name("a\0b"));
        assert!(valid_topic_name(&"a".repeat(65_535)));
        assert!(!valid_topic_name(&"a".repeat(65_536)));
    }

    #[test]
    fn topic_filters() {
        // Examples from §4.7.1.
        for ok in
            ["#", "+", "sport/tennis/#", "sport/+", "+/tennis/#", "sport/+/player1", "/+", "+/+", "a//b", "/"]
        {
            assert!(valid_topic_filter(ok), "{ok} should be valid");
        }
        for bad in ["", "sport/tennis#", "sport/tennis/#/ranking", "sport+", "#/a", "a/#b", "a/b+", "a\0"] {
            assert!(!valid_topic_filter(bad), "{bad} should be invalid");
        }
        assert!(!valid_topic_filter(&"a".repeat(65_536)));
    }

    #[test]
    fn shared_filters() {
        assert_eq!(parse_shared("a/b"), None);
        assert_eq!(parse_shared("$share"), None);
        assert_eq!(parse_shared("$sharex/g/a"), None);
        assert_eq!(parse_shared("$share/g/a/+"), Some(Ok(SharedFilter { group: "g", filter: "a/+" })));
        assert_eq!(parse_shared("$share/g/#"), Some(Ok(SharedFilter { group: "g", filter: "#" })));
        assert_eq!(parse_shared("$share/g//"), Some(Ok(SharedFilter { group: "g", filter: "/" })));
        assert_eq!(parse_shared("$share/"), Some(Err(SharedFilterError::MissingFilter)));
        assert_eq!(parse_shared("$share/g"), Some(Err(SharedFilterError::MissingFilter)));
        assert_eq!(parse_shared("$share//a"), Some(Err(SharedFilterError::InvalidGroup)));
        assert_eq!(parse_shared("$share/+/a"), Some(Err(SharedFilterError::InvalidGroup)));
        assert_eq!(parse_shared("$share/g#/a"), Some(Err(SharedFilterError::InvalidGroup)));
        assert_eq!(parse_shared("$share/g/"), Some(Err(SharedFilterError::InvalidFilter)));
        assert_eq!(parse_shared("$share/g/a#"), Some(Err(SharedFilterError::InvalidFilter)));
    }

    #[test]
    fn matching_table() {
        let table: &[(&str, &str, bool)] = &[
            // §4.7.1.2: multi-level wildcard.
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            ("sport/tennis/player1/#", "sport/tennis/player1/ranking", true),
            ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true),
            ("sport/tennis/#", "sport/tennis", true),
            ("sport/tennis/#", "sport/tennisplayer1", false),
            ("sport/#", "sport", true),
            ("#", "sport/tennis", true),
            ("#", "/", true),
            // §4.7.1.3: single-level wildcard.
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player2", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("+/+", "/", true),
            ("+", "", true),
            ("a/+/b", "a//b", true),
            ("+/tennis/#", "sport/tennis", true),
            ("+/tennis/#", "sport/tennis/x/y", true),
            ("+/tennis/#", "sport/golf", false),
            // Exact matches and near misses.
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("a/b", "A/b", false),
            ("a//b", "a/b", false),
            // §4.7.2: topics beginning with `$`.
            ("#", "$SYS/broker/uptime", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("+", "$SYS", false),
            ("$SYS/#", "$SYS/monitor/Clients", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("$SYS/#", "$SYS", true),
            ("a/#", "a/$SYS", true),
            ("+/$x", "a/$x", true),
        ];
        for &(filter, topic, expected) in table {
            assert_eq!(matches(filter, topic), expected, "{filter} vs {topic}");
        }
    }
}
