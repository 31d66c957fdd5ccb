//! Upstream clusters and routes: the model, its validation, and its storage in `config.sqlite`.
//!
//! Specs are stored as JSON (`kafka_upstreams.spec`, `kafka_routes.spec`) so that a field added later needs no
//! migration; what is read back is validated again, so a hand-edited row cannot start a broken route. Every
//! change bumps `config_version`, which the running gateway polls once a second (see [`super::Forwarder`]).

use std::fmt;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sqlx::{Row, SqlitePool};

use crate::mqtt::codec::topic;

/// Why a spec was refused or could not be stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value given by the user is not acceptable; the text says which and why.
    #[error("{0}")]
    Invalid(String),
    #[error("no upstream named {0:?}")]
    NoUpstream(String),
    #[error("no route named {0:?}")]
    NoRoute(String),
    #[error("a route named {0:?} already exists")]
    RouteExists(String),
    #[error("upstream {name:?} is used by route {route:?}; delete the route first")]
    UpstreamInUse { name: String, route: String },
    #[error("configuration database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored spec of {name:?} is unreadable: {source}")]
    Stored { name: String, source: serde_json::Error },
}

/// A named upstream Kafka cluster. `acks=all` and idempotence are always on and not configurable.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub name: String,
    /// `host:port` of one or more brokers.
    pub bootstrap: Vec<String>,
    /// TLS to the brokers (implied by `ca`).
    #[serde(default)]
    pub tls: bool,
    /// CA certificates (PEM) to verify the brokers by; the system's store when absent.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM), for brokers that require one.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    #[serde(default)]
    pub sasl: Option<Sasl>,
    #[serde(default)]
    pub compression: Compression,
    /// The largest record sent (librdkafka's `message.max.bytes`); larger ones are dead letters. librdkafka's
    /// 1,000,000 when absent. Raise it with the topic's `max.message.bytes`, then replay the dead letters.
    #[serde(default)]
    pub max_message_bytes: Option<u32>,
}

/// Hand-written so that the SASL password can never reach a log line through `{:?}`.
impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("bootstrap", &self.bootstrap)
            .field("tls", &self.tls)
            .field("ca", &self.ca)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("sasl", &self.sasl)
            .field("compression", &self.compression)
            .field("max_message_bytes", &self.max_message_bytes)
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sasl {
    pub mechanism: SaslMechanism,
    pub username: String,
    /// Never printed: not by `Debug`, not by the CLI, not in the status.
    pub password: String,
}

impl fmt::Debug for Sasl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<secret>")
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    pub fn parse(s: &str) -> Result<SaslMechanism, ConfigError> {
        match s.to_ascii_uppercase().as_str() {
            "PLAIN" => Ok(SaslMechanism::Plain),
            "SCRAM-SHA-256" => Ok(SaslMechanism::ScramSha256),
            "SCRAM-SHA-512" => Ok(SaslMechanism::ScramSha512),
            _ => Err(ConfigError::Invalid(format!(
                "SASL mechanism {s:?}: use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    #[default]
    Lz4,
    Zstd,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    pub fn parse(s: &str) -> Result<Compression, ConfigError> {
        match s {
            "none" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "snappy" => Ok(Compression::Snappy),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            _ => Err(ConfigError::Invalid(format!("compression {s:?}: use none, gzip, snappy, lz4 or zstd"))),
        }
    }
}

impl Upstream {
    pub fn validate(&self) -> Result<(), ConfigError> {
        valid_name("upstream", &self.name)?;
        if self.bootstrap.is_empty() {
            return Err(ConfigError::Invalid("--bootstrap needs at least one HOST:PORT".into()));
        }
        for server in &self.bootstrap {
            let port = server.rsplit_once(':').and_then(|(host, port)| {
                (!host.is_empty() && !host.contains(',')).then(|| port.parse::<u16>().ok()).flatten()
            });
            if port.is_none_or(|p| p == 0) {
                return Err(ConfigError::Invalid(format!("bootstrap server {server:?} is not HOST:PORT")));
            }
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(ConfigError::Invalid(
                "a client certificate needs its key, and a key its certificate".into(),
            ));
        }
        if let Some(sasl) = &self.sasl
            && (sasl.username.is_empty() || sasl.password.is_empty())
        {
            return Err(ConfigError::Invalid("SASL needs a user name and a password".into()));
        }
        // Within librdkafka's bounds, and not above a consumer's default fetch.max.bytes.
        if let Some(n) = self.max_message_bytes
            && !(1000..=50_000_000).contains(&n)
        {
            return Err(ConfigError::Invalid(format!("--max-message-bytes {n}: use 1000 to 50000000")));
        }
        Ok(())
    }

    /// TLS is on when asked for, or implied by a CA or a client certificate.
    pub fn uses_tls(&self) -> bool {
        self.tls || self.ca.is_some() || self.client_cert.is_some()
    }
}

/// A route as stored: uplink (MQTT → Kafka) or downlink (Kafka → MQTT).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RouteSpec {
    Uplink(Uplink),
    Downlink(Downlink),
}

impl RouteSpec {
    pub fn name(&self) -> &str {
        match self {
            RouteSpec::Uplink(u) => &u.name,
            RouteSpec::Downlink(d) => &d.name,
        }
    }

    pub fn upstream(&self) -> &str {
        match self {
            RouteSpec::Uplink(u) => &u.upstream,
            RouteSpec::Downlink(d) => &d.upstream,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            RouteSpec::Uplink(_) => "uplink",
            RouteSpec::Downlink(_) => "downlink",
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            RouteSpec::Uplink(u) => u.validate(),
            RouteSpec::Downlink(d) => d.validate(),
        }
    }
}

/// MQTT → Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uplink {
    pub name: String,
    pub upstream: String,
    /// MQTT topic filter of what is forwarded.
    pub filter: String,
    /// Kafka topic, with `{N}` for MQTT topic level N (from 1): `plant.{2}`.
    pub topic: String,
    #[serde(default)]
    pub key: KeySpec,
    #[serde(default)]
    pub format: ValueFormat,
    /// Messages accepted before this time (unix ms) are not forwarded: `--from now` is the time the route was
    /// added, `--from oldest` is 0.
    pub from_ms: i64,
    /// `--from now`: the route's cursor starts at the end of the journal when the gateway first runs it.
    #[serde(default)]
    pub from_now: bool,
    /// Log and show a lag alarm once the oldest unforwarded message is older than this.
    #[serde(default = "default_lag_alarm")]
    pub lag_alarm_secs: u64,
}

fn default_lag_alarm() -> u64 {
    60
}

/// What the Kafka record key is; records with the same key keep their order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeySpec {
    /// The MQTT topic.
    #[default]
    Topic,
    /// The publisher's client id.
    Client,
    /// MQTT topic level N, counted from 1.
    Level(usize),
}

impl KeySpec {
    pub fn parse(s: &str) -> Result<KeySpec, ConfigError> {
        match s {
            "topic" => Ok(KeySpec::Topic),
            "client" => Ok(KeySpec::Client),
            _ => match s.strip_prefix("level:").and_then(|n| n.parse::<usize>().ok()) {
                Some(n) if n >= 1 => Ok(KeySpec::Level(n)),
                _ => Err(ConfigError::Invalid(format!(
                    "--key {s:?}: use topic, client or level:N (N counted from 1)"
                ))),
            },
        }
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySpec::Topic => f.write_str("topic"),
            KeySpec::Client => f.write_str("client"),
            KeySpec::Level(n) => write!(f, "level:{n}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueFormat {
    /// The MQTT payload as it is.
    #[default]
    Raw,
    /// A JSON envelope: topic, payload (text, or base64), properties, timestamp.
    Json,
    /// Sparkplug B decoded to JSON, metric aliases resolved and `is_historical` kept
    /// (`sparkplug::payload_json`). A message that is not Sparkplug B (another topic, a payload that does not
    /// decode) is a dead letter: the Kafka topic keeps one schema, and nothing is lost silently.
    Sparkplug,
}

impl ValueFormat {
    pub fn parse(s: &str) -> Result<ValueFormat, ConfigError> {
        match s {
            "raw" => Ok(ValueFormat::Raw),
            "json" => Ok(ValueFormat::Json),
            "sparkplug" => Ok(ValueFormat::Sparkplug),
            _ => Err(ConfigError::Invalid(format!("--format {s:?}: use raw, json or sparkplug"))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ValueFormat::Raw => "raw",
            ValueFormat::Json => "json",
            ValueFormat::Sparkplug => "sparkplug",
        }
    }
}

impl Uplink {
    pub fn validate(&self) -> Result<(), ConfigError> {
        valid_name("route", &self.name)?;
        valid_name("upstream", &self.upstream)?;
        if !topic::valid_topic_filter(&self.filter) {
            return Err(ConfigError::Invalid(format!(
                "--filter {:?} is not a valid MQTT topic filter",
                self.filter
            )));
        }
        let template = TopicTemplate::parse(&self.topic)?;
        // A fixed topic can be checked now; a templated one is checked per message (dead letter if invalid).
        if template.is_fixed() {
            valid_kafka_topic(&self.topic)?;
        }
        Ok(())
    }
}

/// Kafka → MQTT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Downlink {
    pub name: String,
    pub upstream: String,
    /// Kafka topic read.
    pub topic: String,
    /// MQTT topic published to: `{key}` is the record key, `{header:NAME}` a record header.
    pub mqtt_topic: String,
    #[serde(default)]
    pub qos: u8,
    #[serde(default)]
    pub retain: bool,
    /// The user the route publishes as: its access rules must allow each publish. `None`: the gateway itself
    /// (no rules apply), only for a gateway without users.
    #[serde(default)]
    pub as_user: Option<String>,
    /// Kafka consumer group; `weir-<gateway>-<route>` when not given.
    #[serde(default)]
    pub group: Option<String>,
}

impl Downlink {
    pub fn validate(&self) -> Result<(), ConfigError> {
        valid_name("route", &self.name)?;
        valid_name("upstream", &self.upstream)?;
        valid_kafka_topic(&self.topic)?;
        if self.qos > 2 {
            return Err(ConfigError::Invalid(format!("--qos {}: use 0, 1 or 2", self.qos)));
        }
        let probe = expand_downlink_topic(&self.mqtt_topic, Some(b"k"), &|_| Some(b"h".to_vec()))
            .map_err(ConfigError::Invalid)?;
        if !topic::valid_topic_name(&probe) {
            return Err(ConfigError::Invalid(format!(
                "--mqtt-topic {:?} does not make a valid MQTT topic name",
                self.mqtt_topic
            )));
        }
        Ok(())
    }
}

/// Fills a downlink's MQTT topic template from a record: `{key}` and `{header:NAME}`.
pub(crate) fn expand_downlink_topic(
    template: &str,
    key: Option<&[u8]>,
    header: &dyn Fn(&str) -> Option<Vec<u8>>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let (before, after) = rest.split_at(start);
        out.push_str(before);
        let Some(end) = after.find('}') else {
            return Err(format!("unclosed {{ in {template:?}"));
        };
        let name = after.get(1..end).unwrap_or("");
        let value = if name == "key" {
            key.map(<[u8]>::to_vec).ok_or_else(|| "the record has no key".to_owned())?
        } else if let Some(h) = name.strip_prefix("header:") {
            header(h).ok_or_else(|| format!("the record has no header {h:?}"))?
        } else {
            return Err(format!(
                "unknown placeholder {{{name}}} in {template:?}: use {{key}} or {{header:NAME}}"
            ));
        };
        let value = String::from_utf8(value).map_err(|_| "a placeholder's value is not UTF-8".to_owned())?;
        out.push_str(&value);
        rest = after.get(end + 1..).unwrap_or("");
    }
    out.push_str(rest);
    Ok(out)
}

/// A Kafka topic with `{N}` placeholders for MQTT topic levels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicTemplate {
    parts: Vec<TemplatePart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplatePart {
    Text(String),
    Level(usize),
}

impl TopicTemplate {
    pub(crate) fn parse(template: &str) -> Result<TopicTemplate, ConfigError> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(start) = rest.find('{') {
            let (before, after) = rest.split_at(start);
            if !before.is_empty() {
                parts.push(TemplatePart::Text(before.to_owned()));
            }
            let end = after
                .find('}')
                .ok_or_else(|| ConfigError::Invalid(format!("--topic {template:?}: unclosed {{")))?;
            let level = after.get(1..end).and_then(|n| n.parse::<usize>().ok()).filter(|&n| n >= 1);
            let Some(level) = level else {
                return Err(ConfigError::Invalid(format!(
                    "--topic {template:?}: placeholders are {{N}}, MQTT topic level N counted from 1"
                )));
            };
            parts.push(TemplatePart::Level(level));
            rest = after.get(end + 1..).unwrap_or("");
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Text(rest.to_owned()));
        }
        if parts.is_empty() {
            return Err(ConfigError::Invalid("--topic must not be empty".into()));
        }
        Ok(TopicTemplate { parts })
    }

    pub(crate) fn is_fixed(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, TemplatePart::Text(_)))
    }

    /// The Kafka topic for an MQTT topic; an error names what is wrong (it becomes a dead letter's reason).
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))] // used by the uplink (feature `kafka`)
    pub(crate) fn expand(&self, mqtt_topic: &str) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                TemplatePart::Text(t) => out.push_str(t),
                TemplatePart::Level(n) => match mqtt_topic.split('/').nth(n - 1) {
                    Some(level) => out.push_str(level),
                    None => return Err(format!("the MQTT topic {mqtt_topic:?} has no level {n}")),
                },
            }
        }
        valid_kafka_topic(&out).map_err(|e| e.to_string())?;
        Ok(out)
    }
}

/// Kafka's own rule: 1 to 249 characters of `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub(crate) fn valid_kafka_topic(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "{name:?} is not a valid Kafka topic (1 to 249 of a-z A-Z 0-9 . _ -)"
        )))
    }
}

/// Names appear in cursor names (`kafka:<route>`), `$SYS` topics and group ids: keep them plain.
fn valid_name(what: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!("{what} name {name:?}: 1 to 64 of a-z A-Z 0-9 . _ -")))
    }
}

/// A route and whether it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRoute {
    pub spec: RouteSpec,
    pub paused: bool,
}

/// Everything the forwarder runs from, read at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardConfig {
    pub upstreams: Vec<Upstream>,
    pub routes: Vec<StoredRoute>,
}

impl ForwardConfig {
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

/// The stored upstreams and routes. Invalid rows are left out with an error in the log, not fatal.
pub async fn load(pool: &SqlitePool) -> Result<ForwardConfig, ConfigError> {
    let mut config = ForwardConfig::default();
    for row in sqlx::query("SELECT name, spec FROM kafka_upstreams ORDER BY name").fetch_all(pool).await? {
        let name: String = row.try_get(0)?;
        match serde_json::from_str::<Upstream>(row.try_get::<&str, _>(1)?) {
            Ok(u) if u.validate().is_ok() => config.upstreams.push(u),
            Ok(_) => tracing::error!(upstream = %name, "stored Kafka upstream is invalid; ignored"),
            Err(e) => tracing::error!(upstream = %name, "stored Kafka upstream is unreadable ({e}); ignored"),
        }
    }
    for row in
        sqlx::query("SELECT name, spec, paused FROM kafka_routes ORDER BY name").fetch_all(pool).await?
    {
        let name: String = row.try_get(0)?;
        match serde_json::from_str::<RouteSpec>(row.try_get::<&str, _>(1)?) {
            Ok(spec) if spec.validate().is_ok() => {
                config.routes.push(StoredRoute { spec, paused: row.try_get::<bool, _>(2)? })
            }
            Ok(_) => tracing::error!(route = %name, "stored Kafka route is invalid; ignored"),
            Err(e) => tracing::error!(route = %name, "stored Kafka route is unreadable ({e}); ignored"),
        }
    }
    Ok(config)
}

/// Adds or replaces an upstream.
pub async fn set_upstream(pool: &SqlitePool, upstream: &Upstream) -> Result<(), ConfigError> {
    upstream.validate()?;
    let spec = serde_json::to_string(upstream)
        .map_err(|source| ConfigError::Stored { name: upstream.name.clone(), source })?;
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::query(
        "INSERT INTO kafka_upstreams (name, spec, updated) VALUES (?, ?, ?) \
         ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated = excluded.updated",
    )
    .bind(&upstream.name)
    .bind(spec)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    bump(&mut tx).await?;
    tx.commit().await?;
    Ok(())
}

pub async fn delete_upstream(pool: &SqlitePool, name: &str) -> Result<(), ConfigError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    for row in sqlx::query("SELECT name, spec FROM kafka_routes").fetch_all(&mut *tx).await? {
        let route: String = row.try_get(0)?;
        if let Ok(spec) = serde_json::from_str::<RouteSpec>(row.try_get::<&str, _>(1)?)
            && spec.upstream() == name
        {
            return Err(ConfigError::UpstreamInUse { name: name.to_owned(), route });
        }
    }
    let deleted =
        sqlx::query("DELETE FROM kafka_upstreams WHERE name = ?").bind(name).execute(&mut *tx).await?;
    if deleted.rows_affected() == 0 {
        return Err(ConfigError::NoUpstream(name.to_owned()));
    }
    bump(&mut tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Adds a route; its upstream must exist.
pub async fn add_route(pool: &SqlitePool, spec: &RouteSpec) -> Result<(), ConfigError> {
    spec.validate()?;
    let json = serde_json::to_string(spec)
        .map_err(|source| ConfigError::Stored { name: spec.name().to_owned(), source })?;
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let upstream: Option<String> = sqlx::query_scalar("SELECT name FROM kafka_upstreams WHERE name = ?")
        .bind(spec.upstream())
        .fetch_optional(&mut *tx)
        .await?;
    if upstream.is_none() {
        return Err(ConfigError::NoUpstream(spec.upstream().to_owned()));
    }
    let now = now_ms();
    let inserted = sqlx::query(
        "INSERT INTO kafka_routes (name, kind, spec, paused, created, updated) VALUES (?, ?, ?, 0, ?, ?) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(spec.name())
    .bind(spec.kind())
    .bind(json)
    .bind(now)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(ConfigError::RouteExists(spec.name().to_owned()));
    }
    bump(&mut tx).await?;
    tx.commit().await?;
    Ok(())
}

pub async fn set_paused(pool: &SqlitePool, name: &str, paused: bool) -> Result<(), ConfigError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let updated = sqlx::query("UPDATE kafka_routes SET paused = ?, updated = ? WHERE name = ?")
        .bind(paused)
        .bind(now_ms())
        .bind(name)
        .execute(&mut *tx)
        .await?;
    if updated.rows_affected() == 0 {
        return Err(ConfigError::NoRoute(name.to_owned()));
    }
    bump(&mut tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes a route, its dead letters and its offset hints. Its journal cursor is removed by the running
/// gateway (or at the next start), which releases the backlog it held.
pub async fn delete_route(pool: &SqlitePool, name: &str) -> Result<(), ConfigError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let deleted = sqlx::query("DELETE FROM kafka_routes WHERE name = ?").bind(name).execute(&mut *tx).await?;
    if deleted.rows_affected() == 0 {
        return Err(ConfigError::NoRoute(name.to_owned()));
    }
    sqlx::query("DELETE FROM kafka_dead_letters WHERE route = ?").bind(name).execute(&mut *tx).await?;
    sqlx::query("DELETE FROM kafka_route_offsets WHERE route = ?").bind(name).execute(&mut *tx).await?;
    bump(&mut tx).await?;
    tx.commit().await?;
    Ok(())
}

/// This gateway's id in the records it writes.
pub async fn gateway_id(pool: &SqlitePool) -> Result<String, ConfigError> {
    Ok(sqlx::query_scalar("SELECT gateway FROM kafka_gateway WHERE id = 1").fetch_one(pool).await?)
}

// Every change is a `BEGIN IMMEDIATE` transaction: it takes the write lock first (waiting up to the busy
// timeout), so that a check it reads (the upstream exists, is unused) cannot be invalidated by another process
// before it writes, and never fails with SQLITE_BUSY_SNAPSHOT on the upgrade from reading to writing.
async fn bump(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE config_version SET version = version + 1").execute(&mut **tx).await?;
    Ok(())
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uplink() -> Uplink {
        Uplink {
            name: "r1".into(),
            upstream: "main".into(),
            filter: "plant/#".into(),
            topic: "plant.{2}".into(),
            key: KeySpec::Topic,
            format: ValueFormat::Raw,
            from_ms: 0,
            from_now: false,
            lag_alarm_secs: 60,
        }
    }

    #[test]
    fn templates_expand_levels_and_refuse_what_kafka_would() {
        let t = TopicTemplate::parse("plant.{2}").unwrap();
        assert_eq!(t.expand("plant/line1/temp").unwrap(), "plant.line1");
        assert!(t.expand("plant").unwrap_err().contains("no level 2"));
        assert!(t.expand("plant/line 1").unwrap_err().contains("not a valid Kafka topic"));
        assert!(TopicTemplate::parse("a.{x}").is_err());
        assert!(TopicTemplate::parse("a.{0}").is_err());
        assert!(TopicTemplate::parse("a.{1").is_err());
        assert!(TopicTemplate::parse("fixed").unwrap().is_fixed());
    }

    #[test]
    fn routes_and_upstreams_are_validated() {
        assert!(uplink().validate().is_ok());
        assert!(Uplink { filter: "a/#/b".into(), ..uplink() }.validate().is_err());
        assert!(Uplink { topic: "bad topic".into(), ..uplink() }.validate().is_err());
        assert!(Uplink { name: "a/b".into(), ..uplink() }.validate().is_err());
        assert_eq!(KeySpec::parse("level:3").unwrap(), KeySpec::Level(3));
        assert!(KeySpec::parse("level:0").is_err());
        let up = Upstream {
            name: "main".into(),
            bootstrap: vec!["k1:9092".into()],
            tls: false,
            ca: None,
            client_cert: None,
            client_key: None,
            sasl: Some(Sasl {
                mechanism: SaslMechanism::ScramSha512,
                username: "u".into(),
                password: "hunter2".into(),
            }),
            compression: Compression::Zstd,
            max_message_bytes: None,
        };
        assert!(up.validate().is_ok());
        assert!(Upstream { max_message_bytes: Some(10), ..up.clone() }.validate().is_err());
        assert_eq!(ValueFormat::parse("sparkplug").unwrap().as_str(), "sparkplug");
        assert!(!format!("{up:?}").contains("hunter2"), "Debug never shows the password");
        assert!(Upstream { bootstrap: vec!["k1".into()], ..up.clone() }.validate().is_err());
        assert!(Upstream { bootstrap: vec![], ..up.clone() }.validate().is_err());
        assert!(Upstream { client_cert: Some("c.pem".into()), ..up }.validate().is_err());
    }

    #[test]
    fn downlink_topics_come_from_key_and_headers() {
        let header = |name: &str| (name == "device").then(|| b"d7".to_vec());
        assert_eq!(
            expand_downlink_topic("cmd/{key}/{header:device}", Some(b"k1"), &header).unwrap(),
            "cmd/k1/d7"
        );
        assert!(expand_downlink_topic("cmd/{key}", None, &header).is_err());
        assert!(expand_downlink_topic("cmd/{header:nope}", None, &header).is_err());
        let d = Downlink {
            name: "d".into(),
            upstream: "main".into(),
            topic: "commands".into(),
            mqtt_topic: "cmd/{key}".into(),
            qos: 1,
            retain: false,
            as_user: None,
            group: None,
        };
        assert!(d.validate().is_ok());
        assert!(Downlink { mqtt_topic: "cmd/#".into(), ..d.clone() }.validate().is_err());
        assert!(Downlink { qos: 3, ..d }.validate().is_err());
    }
}
