//! Parsers for Mosquitto's `password_file` and `acl_file`, for `weir import mosquitto`.
//!
//! Both take the file's text and return plain data (users with their hashes, Weir [`Rule`]s); reading the
//! files and storing the result is the importer's job. Errors name the 1-based line, so an administrator can
//! fix the file and try again; nothing is imported from a file with an error.
//!
//! # Password file
//!
//! One `username:hash` per line; blank lines and lines starting with `#` are skipped. Hashes are kept as they
//! are (`$6$...` and `$7$...` from `mosquitto_passwd`, or Argon2 PHC strings) and verified by
//! [`password::verify`], which asks for an upgrade to argon2id at each user's first
//! successful login. A hash of an unknown scheme (a plaintext password, `crypt` formats) is an error naming the
//! line, as is a username given twice.
//!
//! # ACL file
//!
//! | Mosquitto line | Weir rule |
//! | --- | --- |
//! | `topic [access] F` before any `user` line | [`Subject::Anonymous`] (clients without a username) |
//! | `topic [access] F` after `user NAME` | [`Subject::User`]`(NAME)` |
//! | `pattern [access] F` (anywhere) | [`Subject::Anyone`], and also [`Subject::Anonymous`] when `F` has no `%u` |
//! | access `read` | allow [`Action::Subscribe`] (subscribing and receiving) |
//! | access `write` | allow [`Action::Publish`] |
//! | access `readwrite`, or none | allow [`Action::Both`] |
//! | access `deny` | deny [`Action::Both`] |
//!
//! `%u` and `%c` keep their meaning in Weir filters. Anonymous clients get patterns without `%u` because
//! Mosquitto applies patterns to every client and skips only those with `%u` for clients without a username.
//! As in Mosquitto, the filter is the rest of the line (it may contain spaces), a `topic` line with a single
//! word uses it as the filter with `readwrite` access, and other keywords are an error.
//!
//! Where Weir's decisions differ from Mosquitto's on the same file:
//!
//! - **Deny precedence.** Mosquitto checks a user's own lines (denials first) and only then the patterns, so a
//!   user's `topic` grant beats a `pattern deny`. In Weir any matching denial wins, wherever it came from.
//! - **Dangerous names.** When an ACL file has patterns, Mosquitto refuses every access to a client whose
//!   username or client id contains `+` or `#`. Weir only makes the `%u`/`%c` rules not match for such a client
//!   (and also for `/`, a leading `$` or an empty value); its other rules still apply.
//! - **Subscriptions.** Mosquitto's ACL file accepts every SUBSCRIBE and checks "read" on each delivery. Weir
//!   does the same for a filter that is partly readable, but refuses outright a subscription of which nothing
//!   is readable.

use std::collections::HashMap;

use super::acl::{Action, Effect, Rule, Subject};
use super::password::{self, PasswordError, Scheme};
use crate::mqtt::codec::topic;

/// One user from a password file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordEntry {
    /// Where it was, for messages about it.
    pub line: usize,
    pub username: String,
    /// The stored hash, unchanged; it parses as `scheme`.
    pub hash: String,
    pub scheme: Scheme,
}

/// The rules from an ACL file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclImport {
    /// In file order.
    pub rules: Vec<Rule>,
    /// Usernames with a `user` section, in file order, so the importer can point out those that have no
    /// password (they could never log in).
    pub users: Vec<String>,
    /// Lines that import but probably do not do what their author meant.
    pub warnings: Vec<Warning>,
}

/// A line that imports but deserves a second look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub line: usize,
    pub message: String,
}

/// A line that could not be imported, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct MosquittoError {
    /// 1-based.
    pub line: usize,
    pub kind: MosquittoErrorKind,
}

/// What is wrong with a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MosquittoErrorKind {
    /// A password file line without `:`.
    #[error("expected username:hash")]
    MissingSeparator,
    /// A password file line starting with `:`.
    #[error("empty username")]
    EmptyUsername,
    /// The hash is of an unknown scheme or malformed.
    #[error("{0}")]
    Hash(PasswordError),
    /// The username already appeared.
    #[error("user {username:?} already defined on line {first_line}")]
    DuplicateUser { username: String, first_line: usize },
    /// An ACL line starting with something other than `topic`, `pattern`, `user` or `#`.
    #[error("unknown keyword {0:?} (expected topic, pattern or user)")]
    UnknownKeyword(String),
    /// `topic` or `pattern` with nothing after it.
    #[error("missing topic filter")]
    MissingFilter,
    /// An access type other than `read`, `write`, `readwrite` or `deny`.
    #[error("invalid access {0:?} (expected read, write, readwrite or deny)")]
    InvalidAccess(String),
    /// The filter is not a valid MQTT topic filter.
    #[error("invalid topic filter {0:?}")]
    InvalidFilter(String),
    /// `user` with no name after it.
    #[error("missing username after user")]
    MissingUsername,
}

/// Parses a Mosquitto `password_file`.
pub fn parse_password_file(text: &str) -> Result<Vec<PasswordEntry>, MosquittoError> {
    let mut entries = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (line, content) in numbered_lines(text) {
        let error = |kind| MosquittoError { line, kind };
        let (username, hash) =
            content.split_once(':').ok_or_else(|| error(MosquittoErrorKind::MissingSeparator))?;
        if username.is_empty() {
            return Err(error(MosquittoErrorKind::EmptyUsername));
        }
        let scheme = password::scheme(hash).map_err(|e| error(MosquittoErrorKind::Hash(e)))?;
        if let Some(&first_line) = seen.get(username) {
            return Err(error(MosquittoErrorKind::DuplicateUser {
                username: username.to_owned(),
                first_line,
            }));
        }
        seen.insert(username.to_owned(), line);
        entries.push(PasswordEntry { line, username: username.to_owned(), hash: hash.to_owned(), scheme });
    }
    Ok(entries)
}

/// Parses a Mosquitto `acl_file` into Weir rules (see the module documentation for the mapping).
pub fn parse_acl_file(text: &str) -> Result<AclImport, MosquittoError> {
    let mut import = AclImport::default();
    let mut user: Option<String> = None;
    for (line, content) in numbered_lines(text) {
        let error = |kind| MosquittoError { line, kind };
        let (keyword, rest) = split_word(content);
        match keyword {
            "user" => {
                if rest.is_empty() {
                    return Err(error(MosquittoErrorKind::MissingUsername));
                }
                if !import.users.iter().any(|u| u == rest) {
                    import.users.push(rest.to_owned());
                }
                user = Some(rest.to_owned());
            }
            "topic" | "pattern" => {
                let (effect, action, filter) = parse_access(rest).map_err(error)?;
                if !topic::valid_topic_filter(filter) {
                    return Err(error(MosquittoErrorKind::InvalidFilter(filter.to_owned())));
                }
                let rule = |subject| Rule::new(subject, effect, action, filter);
                if keyword == "topic" {
                    import.rules.push(rule(user.clone().map_or(Subject::Anonymous, Subject::User)));
                } else {
                    import.rules.push(rule(Subject::Anyone));
                    if !filter.contains("%u") {
                        import.rules.push(rule(Subject::Anonymous));
                    }
                    if !filter.contains("%u") && !filter.contains("%c") {
                        import.warnings.push(Warning {
                            line,
                            message: format!(
                                "pattern {filter:?} has no %u or %c: it applies to every client"
                            ),
                        });
                    }
                }
            }
            other => return Err(error(MosquittoErrorKind::UnknownKeyword(other.to_owned()))),
        }
    }
    Ok(import)
}

/// `[access] filter` after `topic` or `pattern`.
fn parse_access(rest: &str) -> Result<(Effect, Action, &str), MosquittoErrorKind> {
    let (first, after) = split_word(rest);
    if first.is_empty() {
        return Err(MosquittoErrorKind::MissingFilter);
    }
    if after.is_empty() {
        // `topic foo/bar`: no access given, the one word is the filter (Mosquitto does the same, even for
        // `topic read`).
        return Ok((Effect::Allow, Action::Both, first));
    }
    let (effect, action) = match first {
        "read" => (Effect::Allow, Action::Subscribe),
        "write" => (Effect::Allow, Action::Publish),
        "readwrite" => (Effect::Allow, Action::Both),
        "deny" => (Effect::Deny, Action::Both),
        other => return Err(MosquittoErrorKind::InvalidAccess(other.to_owned())),
    };
    Ok((effect, action, after))
}

/// The lines worth parsing, trimmed, with their 1-based numbers: blank lines and `#` comments left out.
fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
}

/// The first whitespace-separated word and the trimmed rest.
fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim();
    match text.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (text, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::acl::{Acl, SubscribeDecision};

    fn rule(subject: Subject, effect: Effect, action: Action, filter: &str) -> Rule {
        Rule::new(subject, effect, action, filter)
    }

    #[test]
    fn password_file() {
        // Hashes made with mosquitto_passwd 2.0.11 (see the password module's tests for the commands).
        let text = "\
# Weir test users, made with mosquitto_passwd
plc1:$7$101$q55UyFttirtQuZ1l$XFH5jKTwsZhemob6xRFbsZRQ1Sc3NKyZ3QqeOEVkBe6aiYjoQZajZVxhyNV3lTtEqURoGsbs6oXXNx8QDH7fww==

legacy:$6$56iYXZm3K2CuoiAS$zqHNY+HvpOTCHXlokJs2MxJuh9RGqM7X668RkwcnRaOJK9Nty7yFmiBUpziTk5D5oxfKZX6E8dON7F4KA1smeA==\r
hmi:$7$1000$fKPyBK+4k8Izm7a9$EymNIP63cBNgbpI33yJ+1aD1n4MmpYKUeSjoZQ/0qUUHdXfAcBsQNxe3KmnUBbiRG9Ae6rkJkmIHH+AZ9GhR6g==
";
        let entries = parse_password_file(text).unwrap();
        let summary: Vec<(usize, &str, Scheme)> =
            entries.iter().map(|e| (e.line, e.username.as_str(), e.scheme)).collect();
        assert_eq!(
            summary,
            [
                (2, "plc1", Scheme::MosquittoPbkdf2),
                (4, "legacy", Scheme::MosquittoSha512),
                (5, "hmi", Scheme::MosquittoPbkdf2)
            ]
        );
        assert!(!entries[1].hash.ends_with('\r'));
        let verified = password::verify(&entries[0].hash, b"S3cure-Pump#4").unwrap();
        assert!(verified.ok && verified.needs_upgrade);
        assert!(parse_password_file("").unwrap().is_empty());
        assert!(parse_password_file("# only a comment\n\n").unwrap().is_empty());
    }

    #[test]
    fn password_file_errors_name_the_line() {
        let good = "ok:$6$AQID$".to_string() + &"A".repeat(86) + "==";
        let cases: Vec<(String, usize, MosquittoErrorKind)> = vec![
            (format!("{good}\nnocolon\n"), 2, MosquittoErrorKind::MissingSeparator),
            (format!("# c\n\n:{}\n", &good[3..]), 3, MosquittoErrorKind::EmptyUsername),
            (format!("{good}\nbob:plaintext\n"), 2, MosquittoErrorKind::Hash(PasswordError::UnknownScheme)),
            (format!("{good}\nbob:\n"), 2, MosquittoErrorKind::Hash(PasswordError::UnknownScheme)),
            (
                format!("{good}\n{good}\n"),
                2,
                MosquittoErrorKind::DuplicateUser { username: "ok".into(), first_line: 1 },
            ),
        ];
        for (text, line, kind) in cases {
            assert_eq!(parse_password_file(&text), Err(MosquittoError { line, kind }), "{text}");
        }
        let error = parse_password_file("a:$7$x$y$z").unwrap_err();
        assert_eq!(error.line, 1);
        assert!(matches!(
            error.kind,
            MosquittoErrorKind::Hash(PasswordError::Malformed { scheme: "$7$", .. })
        ));
        assert_eq!(
            parse_password_file("\n\nbob:secret").unwrap_err().to_string(),
            "line 3: unknown password hash scheme (expected $argon2id$, $6$ or $7$)"
        );
    }

    #[test]
    fn mosquitto_aclfile_example() {
        // aclfile.example as shipped with Mosquitto.
        let text = "\
# This affects access control for clients with no username.
topic read $SYS/#

# This only affects clients with username \"roger\".
user roger
topic foo/bar

# This affects all clients.
pattern write $SYS/broker/connection/%c/state
";
        let import = parse_acl_file(text).unwrap();
        assert_eq!(
            import.rules,
            [
                rule(Subject::Anonymous, Effect::Allow, Action::Subscribe, "$SYS/#"),
                rule(Subject::User("roger".into()), Effect::Allow, Action::Both, "foo/bar"),
                rule(Subject::Anyone, Effect::Allow, Action::Publish, "$SYS/broker/connection/%c/state"),
                rule(Subject::Anonymous, Effect::Allow, Action::Publish, "$SYS/broker/connection/%c/state"),
            ]
        );
        assert_eq!(import.users, ["roger"]);
        assert!(import.warnings.is_empty());

        let acl = Acl::new(import.rules, []).unwrap();
        let anon = crate::auth::Identity::anonymous("bridge-1");
        let roger = crate::auth::Identity::user("roger", "r1");
        let other = crate::auth::Identity::user("sam", "s1");
        assert!(acl.can_read(&anon, "$SYS/broker/uptime"));
        assert!(!acl.can_read(&roger, "$SYS/broker/uptime"));
        assert!(acl.can_publish(&roger, "foo/bar"));
        assert!(acl.can_read(&roger, "foo/bar"));
        assert!(!acl.can_publish(&other, "foo/bar"));
        for who in [&anon, &roger, &other] {
            let own = format!("$SYS/broker/connection/{}/state", who.client_id);
            assert!(acl.can_publish(who, &own), "{who:?}");
            assert!(!acl.can_publish(who, "$SYS/broker/connection/someone-else/state"), "{who:?}");
        }
    }

    #[test]
    fn realistic_acl_file() {
        let text = "\
# Plant floor ACLs, exported from the old broker
topic read public/#

pattern readwrite devices/%c/#
pattern read users/%u/inbox
  # an indented comment
user scada
topic read plant/#
topic deny plant/safety/#
topic write plant/+/setpoint

user historian
topic read #
topic read $SYS/#

user  plc 7
topic readwrite plant/line 7/status
pattern write alarms/all
topic plant/line7/cmd
";
        let import = parse_acl_file(text).unwrap();
        let scada = || Subject::User("scada".into());
        assert_eq!(
            import.rules,
            [
                rule(Subject::Anonymous, Effect::Allow, Action::Subscribe, "public/#"),
                rule(Subject::Anyone, Effect::Allow, Action::Both, "devices/%c/#"),
                rule(Subject::Anonymous, Effect::Allow, Action::Both, "devices/%c/#"),
                rule(Subject::Anyone, Effect::Allow, Action::Subscribe, "users/%u/inbox"),
                rule(scada(), Effect::Allow, Action::Subscribe, "plant/#"),
                rule(scada(), Effect::Deny, Action::Both, "plant/safety/#"),
                rule(scada(), Effect::Allow, Action::Publish, "plant/+/setpoint"),
                rule(Subject::User("historian".into()), Effect::Allow, Action::Subscribe, "#"),
                rule(Subject::User("historian".into()), Effect::Allow, Action::Subscribe, "$SYS/#"),
                rule(Subject::User("plc 7".into()), Effect::Allow, Action::Both, "plant/line 7/status"),
                rule(Subject::Anyone, Effect::Allow, Action::Publish, "alarms/all"),
                rule(Subject::Anonymous, Effect::Allow, Action::Publish, "alarms/all"),
                rule(Subject::User("plc 7".into()), Effect::Allow, Action::Both, "plant/line7/cmd"),
            ]
        );
        assert_eq!(import.users, ["scada", "historian", "plc 7"]);
        assert_eq!(
            import.warnings,
            [Warning {
                line: 18,
                message: "pattern \"alarms/all\" has no %u or %c: it applies to every client".into()
            }]
        );

        let acl = Acl::new(import.rules, []).unwrap();
        let scada = crate::auth::Identity::user("scada", "scada-01");
        assert!(acl.can_read(&scada, "plant/line7/temp"));
        assert!(!acl.can_read(&scada, "plant/safety/estop"));
        assert!(acl.can_publish(&scada, "plant/line7/setpoint"));
        assert!(acl.can_publish(&scada, "devices/scada-01/heartbeat"));
        assert_eq!(acl.can_subscribe(&scada, "plant/#"), SubscribeDecision::Filtered);
        assert!(
            !acl.can_read(&scada, "public/news"),
            "topic lines before any user are for anonymous clients"
        );
        let historian = crate::auth::Identity::user("historian", "h");
        assert_eq!(acl.can_subscribe(&historian, "#"), SubscribeDecision::Allowed);
        assert_eq!(acl.can_subscribe(&historian, "$SYS/#"), SubscribeDecision::Allowed);
        let anon = crate::auth::Identity::anonymous("sensor-3");
        assert!(acl.can_read(&anon, "public/news"));
        assert!(acl.can_publish(&anon, "devices/sensor-3/temp"));
        assert!(!acl.can_read(&anon, "users/%u/inbox"));
    }

    #[test]
    fn acl_file_errors_name_the_line() {
        let cases: &[(&str, usize, MosquittoErrorKind)] = &[
            ("topic read a\nfoo bar\n", 2, MosquittoErrorKind::UnknownKeyword("foo".into())),
            ("\n\ntopic\n", 3, MosquittoErrorKind::MissingFilter),
            ("pattern   \n", 1, MosquittoErrorKind::MissingFilter),
            ("topic maybe a/b\n", 1, MosquittoErrorKind::InvalidAccess("maybe".into())),
            ("user x\ntopic read a/#/b\n", 2, MosquittoErrorKind::InvalidFilter("a/#/b".into())),
            ("pattern write a+\n", 1, MosquittoErrorKind::InvalidFilter("a+".into())),
            ("topic a\nuser\n", 2, MosquittoErrorKind::MissingUsername),
            ("topic a\nuser   \n", 2, MosquittoErrorKind::MissingUsername),
        ];
        for (text, line, kind) in cases {
            assert_eq!(
                parse_acl_file(text),
                Err(MosquittoError { line: *line, kind: kind.clone() }),
                "{text:?}"
            );
        }
        assert_eq!(
            parse_acl_file("topic maybe a/b").unwrap_err().to_string(),
            "line 1: invalid access \"maybe\" (expected read, write, readwrite or deny)"
        );
    }

    #[test]
    fn single_word_topic_lines_are_readwrite_filters() {
        // As in Mosquitto: `topic read` alone grants readwrite on the topic "read".
        let import = parse_acl_file("topic read\ntopic deny\n").unwrap();
        assert_eq!(
            import.rules,
            [
                rule(Subject::Anonymous, Effect::Allow, Action::Both, "read"),
                rule(Subject::Anonymous, Effect::Allow, Action::Both, "deny"),
            ]
        );
    }
}
