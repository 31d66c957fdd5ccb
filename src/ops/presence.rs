//! Presence: the history of connects, disconnects and losses (with uptime figures), read from the journal, and
//! the configured birth and death messages (rules in `config.sqlite`: parse, add, delete, list, and compiled
//! for the broker).

use std::collections::BTreeMap;

use sqlx::SqlitePool;

use super::{Actor, Ops, OpsError};
use crate::mqtt::broker::{ClientMatch, PresenceEvent, PresenceRule};
use crate::mqtt::codec::QoS;
use crate::store::config_db::{self, Audited, PresenceRuleRow};
use crate::store::presence::{self, PresenceEventRow};
use crate::timefmt;

/// Which part of the history: a client (all if `None`) and a time range as the operator wrote it.
#[derive(Debug, Clone, Default)]
pub struct PresenceSelection {
    pub client: Option<String>,
    /// From this time on: `2026-11-25T10:00:00Z`, `2026-11-25`, unix milliseconds, or `15m` / `2h` / `7d` ago.
    pub since: Option<String>,
    /// Before this time (same forms); now if absent.
    pub until: Option<String>,
}

impl PresenceSelection {
    /// The range in unix ms, resolved against `now`.
    fn range(&self, now: i64) -> Result<(Option<i64>, Option<i64>), OpsError> {
        let time = |t: &Option<String>| {
            t.as_deref().map(|t| timefmt::parse(t, now)).transpose().map_err(OpsError::Invalid)
        };
        Ok((time(&self.since)?, time(&self.until)?))
    }
}

/// One client's uptime over a range.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Uptime {
    pub client_id: String,
    /// Milliseconds online within the range.
    pub online_ms: i64,
    /// Of the range's length (0 to 1).
    pub fraction: f64,
    pub connects: u64,
    /// Disconnections without a DISCONNECT, and the gateway's own failures.
    pub losses: u64,
    /// Online at the end of the range.
    pub online_now: bool,
}

/// Connects, disconnects and losses, newest first (oldest first if `oldest_first`), at most `limit`.
pub async fn history(
    journal: &SqlitePool,
    selection: &PresenceSelection,
    limit: usize,
    oldest_first: bool,
) -> Result<Vec<PresenceEventRow>, OpsError> {
    let (since, until) = selection.range(timefmt::now_ms())?;
    Ok(presence::events(journal, selection.client.as_deref(), since, until, limit, oldest_first).await?)
}

/// Per client, the time online within the range (since defaults to a day ago, until to now). A client counts as
/// online from its connect to its disconnect or loss; when the gateway itself died, until the restart marked it
/// lost (the gateway cannot tell when it died).
pub async fn uptime(journal: &SqlitePool, selection: &PresenceSelection) -> Result<Vec<Uptime>, OpsError> {
    let now = timefmt::now_ms();
    let (since, until) = selection.range(now)?;
    let until = until.unwrap_or(now).min(now);
    let since = since.unwrap_or(until - 24 * 3600 * 1000);
    if since >= until {
        return Err(OpsError::Invalid("the range is empty: --since must come before --until".into()));
    }
    let client = selection.client.as_deref();
    // Per client: online since (if online), online ms, connects, losses.
    let mut state: BTreeMap<String, (Option<i64>, i64, u64, u64)> = BTreeMap::new();
    for e in presence::last_before(journal, client, since).await? {
        state.insert(e.client_id, ((e.state == "online").then_some(since), 0, 0, 0));
    }
    let events = presence::events(journal, client, Some(since), Some(until), usize::MAX, true).await?;
    for e in events {
        let entry = state.entry(e.client_id).or_insert((None, 0, 0, 0));
        if let Some(from) = entry.0.take() {
            entry.1 += e.ts - from;
        }
        match e.state.as_str() {
            "online" => {
                entry.0 = Some(e.ts);
                entry.2 += 1;
            }
            "lost" => entry.3 += 1,
            _ => {}
        }
    }
    let span = (until - since) as f64;
    Ok(state
        .into_iter()
        .map(|(client_id, (online_since, mut online_ms, connects, losses))| {
            if let Some(from) = online_since {
                online_ms += until - from;
            }
            Uptime {
                client_id,
                online_ms,
                fraction: online_ms as f64 / span,
                connects,
                losses,
                online_now: online_since.is_some(),
            }
        })
        .collect())
}

/// A birth or death rule with the id it is stored under.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PresenceRuleEntry {
    pub id: i64,
    /// `user:PATTERN`, `role:NAME` or `client:PATTERN`.
    pub matcher: String,
    /// `birth` or `death`.
    pub event: String,
    pub topic: String,
    pub payload: String,
    pub qos: u8,
    pub retain: bool,
}

/// A birth or death rule as the CLI and the console take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPresenceRule {
    /// `user:PATTERN`, `role:NAME` or `client:PATTERN` (`*` any run of characters, `?` one).
    pub matcher: String,
    /// `birth` or `death`.
    pub event: String,
    pub topic: String,
    pub payload: String,
    pub qos: u8,
    pub retain: bool,
}

/// Checks a rule: the subject, the event, the QoS, and that the topic template is a valid topic name (wildcards
/// and `$` topics refused) once `%c` and `%u` are filled in.
pub fn parse_presence_rule(rule: &NewPresenceRule) -> Result<PresenceRule, OpsError> {
    let matcher = match rule.matcher.split_once(':') {
        Some(("user", p)) if !p.is_empty() => ClientMatch::User(p.to_owned()),
        Some(("role", p)) if !p.is_empty() => ClientMatch::Role(p.to_owned()),
        Some(("client", p)) if !p.is_empty() => ClientMatch::Client(p.to_owned()),
        _ => {
            return Err(OpsError::Invalid(format!(
                "match {:?}: use user:PATTERN, role:NAME or client:PATTERN",
                rule.matcher
            )));
        }
    };
    let event = PresenceEvent::parse(&rule.event)
        .ok_or_else(|| OpsError::Invalid(format!("event {:?}: use birth or death", rule.event)))?;
    let qos = QoS::from_u8(rule.qos)
        .ok_or_else(|| OpsError::Invalid(format!("qos {}: use 0, 1 or 2", rule.qos)))?;
    let sample = rule.topic.replace("%c", "c").replace("%u", "u");
    if !crate::mqtt::codec::topic::valid_topic_name(&sample)
        || sample.starts_with('$')
        || sample.contains('%')
    {
        return Err(OpsError::Invalid(format!(
            "topic {:?}: a topic name (no wildcards, not a $ topic) where %c and %u stand for the client id and user",
            rule.topic
        )));
    }
    Ok(PresenceRule {
        matcher,
        event,
        topic: rule.topic.clone(),
        payload: rule.payload.clone(),
        qos,
        retain: rule.retain,
    })
}

/// The rules of `config.sqlite` as the broker applies them; rules that no longer parse are left out, logged.
pub async fn load_rules(config_db: &SqlitePool) -> Result<Vec<PresenceRule>, OpsError> {
    let mut rules = Vec::new();
    for row in config_db::list_presence_rules(config_db).await? {
        match parse_presence_rule(&new_rule(&row)) {
            Ok(rule) => rules.push(rule),
            Err(e) => tracing::warn!(id = row.id, "presence rule left out: {e}"),
        }
    }
    Ok(rules)
}

fn new_rule(row: &PresenceRuleRow) -> NewPresenceRule {
    NewPresenceRule {
        matcher: format!("{}:{}", row.match_kind, row.pattern),
        event: row.event.clone(),
        topic: row.topic.clone(),
        payload: row.payload.clone(),
        qos: row.qos,
        retain: row.retain,
    }
}

impl Ops {
    /// Adds a birth or death rule; the running gateway applies it within a second. Returns its id.
    pub async fn add_presence_rule(&self, rule: &NewPresenceRule, actor: &Actor) -> Result<i64, OpsError> {
        let parsed = parse_presence_rule(rule)?;
        let (match_kind, pattern) = match parsed.matcher {
            ClientMatch::User(p) => ("user", p),
            ClientMatch::Role(p) => ("role", p),
            ClientMatch::Client(p) => ("client", p),
        };
        let row = PresenceRuleRow {
            id: 0,
            match_kind: match_kind.to_owned(),
            pattern,
            event: parsed.event.as_str().to_owned(),
            topic: parsed.topic,
            payload: parsed.payload,
            qos: parsed.qos as u8,
            retain: parsed.retain,
            created: 0,
        };
        Ok(config_db::insert_presence_rule(self.security.pool(), &row, actor.as_str()).await?)
    }

    pub async fn delete_presence_rule(&self, id: i64, actor: &Actor) -> Result<(), OpsError> {
        let detail = format!("#{id}");
        let audited = Audited { actor: actor.as_str(), action: "presence.rule.delete", detail: &detail };
        match config_db::delete_presence_rule(self.security.pool(), id, audited).await? {
            true => Ok(()),
            false => Err(OpsError::Invalid(format!("no presence rule #{id}"))),
        }
    }

    pub async fn list_presence_rules(&self) -> Result<Vec<PresenceRuleEntry>, OpsError> {
        Ok(config_db::list_presence_rules(self.security.pool())
            .await?
            .into_iter()
            .map(|row| PresenceRuleEntry {
                id: row.id,
                matcher: format!("{}:{}", row.match_kind, row.pattern),
                event: row.event,
                topic: row.topic,
                payload: row.payload,
                qos: row.qos,
                retain: row.retain,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(matcher: &str, event: &str, topic: &str, qos: u8) -> NewPresenceRule {
        NewPresenceRule {
            matcher: matcher.into(),
            event: event.into(),
            topic: topic.into(),
            payload: "{}".into(),
            qos,
            retain: false,
        }
    }

    #[test]
    fn presence_rules_are_checked_with_clear_refusals() {
        let parsed = parse_presence_rule(&rule("client:sensor-*", "birth", "plant/%c/state", 1)).unwrap();
        assert_eq!(parsed.matcher, ClientMatch::Client("sensor-*".into()));
        assert_eq!(parsed.event, PresenceEvent::Birth);
        for (r, expected) in [
            (rule("group:x", "birth", "a", 0), "match"),
            (rule("user:", "birth", "a", 0), "match"),
            (rule("user:a", "hello", "a", 0), "event"),
            (rule("user:a", "death", "a", 3), "qos"),
            (rule("user:a", "death", "a/#", 0), "topic"),
            (rule("user:a", "death", "$SYS/x", 0), "topic"),
            (rule("user:a", "death", "a/%x", 0), "topic"),
        ] {
            let e = parse_presence_rule(&r).unwrap_err().to_string();
            assert!(e.starts_with(expected), "{e}");
        }
    }
}
