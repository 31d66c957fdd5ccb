//! Upstream clusters and routes: the model, its validation, and its storage in `config.sqlite`.
//!
//! Specs are stored as JSON (`kafka_upstreams.spec`, `kafka_routes.spec`) so that a field added later needs no
//! migration; what is read back is validated again, so a hand-edited row cannot start a broken route. Every
//! change bumps `config_version`, which the running gateway polls once a second (see [`super::run`]), and is
//! written to the audit log in the same transaction (`config_db::finish`, as for users and rules). Every change is
//! a `BEGIN IMMEDIATE` transaction: it takes the write lock first (waiting up to the busy timeout), so that a check
//! it reads (the upstream exists, is unused) cannot be invalidated by another process before it writes, and never
//! fails with SQLITE_BUSY_SNAPSHOT on the upgrade from reading to writing.
//!
//! Validation names the field of each refused value ([`FieldError`]) and reports them all at once, so that the
//! console shows each reason beside its field; the CLI prints them joined.

use std::fmt;
use std::path::PathBuf;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sqlx::{Row, SqlitePool};

use crate::mqtt::codec::topic;
use crate::store::config_db::{Audited, finish};
use crate::timefmt::now_ms;

/// Why a spec was refused or could not be stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Values given by the user are not acceptable: each names its field and says why.
    #[error("{}", FieldError::join(.0))]
    Invalid(Vec<FieldError>),
    #[error("no upstream named {0:?}")]
    NoUpstream(String),
    #[error("an upstream named {0:?} already exists")]
    UpstreamExists(String),
    #[error("no route named {0:?}")]
    NoRoute(String),
    #[error("a route named {0:?} already exists")]
    RouteExists(String),
    #[error("route {name:?} is {kind}, not {wanted}")]
    WrongKind { name: String, kind: &'static str, wanted: &'static str },
    #[error("upstream {name:?} is used by route {route:?}; delete the route first")]
    UpstreamInUse { name: String, route: String },
    #[error("configuration database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored spec of {name:?} is unreadable: {source}")]
    Stored { name: String, source: serde_json::Error },
}

impl ConfigError {
    fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid(vec![FieldError { field, reason: reason.into() }])
    }

    /// The refused values by field, for a form that shows each reason beside its field: what validation refused,
    /// and a name that is taken or missing. Empty for errors that belong to no field.
    pub fn fields(&self) -> Vec<FieldError> {
        let one = |field, reason: String| vec![FieldError { field, reason }];
        match self {
            ConfigError::Invalid(fields) => fields.clone(),
            ConfigError::NoUpstream(_) => one("upstream", self.to_string()),
            ConfigError::UpstreamExists(_) | ConfigError::RouteExists(_) => one("name", self.to_string()),
            _ => Vec::new(),
        }
    }
}

/// One refused value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The field: the CLI's option without its dashes (`bootstrap`, `sasl_user`, `mqtt_topic`), the name of the
    /// console form's field.
    pub field: &'static str,
    /// Why, for the operator.
    pub reason: String,
}

impl FieldError {
    fn join(fields: &[FieldError]) -> String {
        fields.iter().map(|f| f.reason.as_str()).collect::<Vec<_>>().join("; ")
    }
}

/// Collects every refused value, one reason per field (the first), so that all are reported at once.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<FieldError>);

impl Problems {
    pub(crate) fn push(&mut self, field: &'static str, reason: impl Into<String>) {
        if !self.0.iter().any(|f| f.field == field) {
            self.0.push(FieldError { field, reason: reason.into() });
        }
    }

    /// The value, or `None` with the error's fields noted.
    pub(crate) fn check<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                let fields = e.fields();
                if fields.is_empty() {
                    self.push("", e.to_string());
                }
                for f in fields {
                    self.push(f.field, f.reason);
                }
                None
            }
        }
    }

    pub(crate) fn done(self) -> Result<(), ConfigError> {
        if self.0.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(self.0)) }
    }
}

/// A named upstream Kafka cluster. `acks=all` and idempotence are always on and not configurable.
///
/// Certificates and the client key are files (the CLI's `--ca FILE`) or PEM text kept here (pasted into the
/// console), never both: text needs no file beside the database, so a change is one transaction, and a backup of
/// `config.sqlite` holds it.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
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
    /// The same as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_pem: Option<String>,
    /// A secret: never shown, never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_pem: Option<String>,
    #[serde(default)]
    pub sasl: Option<Sasl>,
    #[serde(default)]
    pub compression: Compression,
    /// The largest record sent (librdkafka's `message.max.bytes`); larger ones are dead letters. librdkafka's
    /// 1,000,000 when absent. Raise it with the topic's `max.message.bytes`, then replay the dead letters.
    #[serde(default)]
    pub max_message_bytes: Option<u32>,
}

/// Hand-written so that the SASL password and the client key can never reach a log line through `{:?}`.
impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("bootstrap", &self.bootstrap)
            .field("tls", &self.tls)
            .field("ca", &self.ca)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("ca_pem", &Redacted::pem(&self.ca_pem))
            .field("client_cert_pem", &Redacted::pem(&self.client_cert_pem))
            .field("client_key_pem", &Redacted::secret(&self.client_key_pem))
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
            .field("password", &Redacted::Secret)
            .finish()
    }
}

/// What a hand-written `Debug` shows in place of text that must not reach a log line: [`Upstream`]'s, [`Sasl`]'s
/// and `ops::SetUpstream`'s, so that each says the same and none has a way of its own to get it wrong.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Redacted {
    /// A password or a private key: only that it is set.
    Secret,
    /// PEM text that is no secret (a certificate): its size, enough to tell one from another.
    Pem(usize),
}

impl Redacted {
    pub(crate) fn secret(text: &Option<String>) -> Option<Redacted> {
        text.as_ref().map(|_| Redacted::Secret)
    }

    pub(crate) fn pem(text: &Option<String>) -> Option<Redacted> {
        text.as_ref().map(|pem| Redacted::Pem(pem.len()))
    }
}

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Redacted::Secret => f.write_str("<secret>"),
            Redacted::Pem(bytes) => write!(f, "<{bytes} bytes>"),
        }
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
            _ => Err(ConfigError::invalid(
                "sasl_mechanism",
                format!("SASL mechanism {s:?}: use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
            )),
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
            _ => Err(ConfigError::invalid(
                "compression",
                format!("compression {s:?}: use none, gzip, snappy, lz4 or zstd"),
            )),
        }
    }
}

/// The largest PEM text accepted for a certificate chain or a key.
const MAX_PEM: usize = 64 * 1024;

impl Upstream {
    /// Every refused value, by field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Problems::default();
        problems.check(valid_name("name", "upstream", &self.name));
        if self.bootstrap.is_empty() {
            problems.push("bootstrap", "bootstrap servers: at least one HOST:PORT is needed");
        }
        for server in &self.bootstrap {
            let port = server.rsplit_once(':').and_then(|(host, port)| {
                let plain = !host.is_empty() && !host.contains([',', ' ', '/']);
                plain.then(|| port.parse::<u16>().ok()).flatten()
            });
            if port.is_none_or(|p| p == 0) {
                problems.push("bootstrap", format!("bootstrap server {server:?} is not HOST:PORT"));
            }
        }
        if self.ca.is_some() && self.ca_pem.is_some() {
            problems.push("ca", "the CA is a file or PEM text, not both");
        }
        if self.client_cert.is_some() && self.client_cert_pem.is_some() {
            problems.push("client_cert", "the client certificate is a file or PEM text, not both");
        }
        if self.client_key.is_some() && self.client_key_pem.is_some() {
            problems.push("client_key", "the client key is a file or PEM text, not both");
        }
        if let Some(pem) = &self.ca_pem {
            problems.check(check_certificates("ca", "CA", pem));
        }
        if let Some(pem) = &self.client_cert_pem {
            problems.check(check_certificates("client_cert", "client certificate", pem));
        }
        if let Some(pem) = &self.client_key_pem {
            problems.check(check_private_key(pem));
        }
        let has_cert = self.client_cert.is_some() || self.client_cert_pem.is_some();
        let has_key = self.client_key.is_some() || self.client_key_pem.is_some();
        if has_cert && !has_key {
            problems.push("client_key", "a client certificate needs its key");
        }
        if has_key && !has_cert {
            problems.push("client_cert", "a client key needs its certificate");
        }
        if let Some(sasl) = &self.sasl {
            if sasl.username.is_empty() {
                problems.push("sasl_user", "SASL needs a user name");
            }
            if sasl.password.is_empty() {
                problems.push("sasl_password", "SASL needs a password");
            }
        }
        // Within librdkafka's bounds, and not above a consumer's default fetch.max.bytes.
        if let Some(n) = self.max_message_bytes
            && !(1000..=50_000_000).contains(&n)
        {
            problems.push("max_message_bytes", format!("max message bytes {n}: use 1000 to 50000000"));
        }
        problems.done()
    }

    /// TLS is on when asked for, or implied by a CA or a client certificate.
    pub fn uses_tls(&self) -> bool {
        self.tls
            || self.ca.is_some()
            || self.ca_pem.is_some()
            || self.client_cert.is_some()
            || self.client_cert_pem.is_some()
    }
}

/// One or more certificates, each one X.509 can read.
fn check_certificates(field: &'static str, what: &str, pem: &str) -> Result<(), ConfigError> {
    if pem.len() > MAX_PEM {
        return Err(ConfigError::invalid(field, format!("the {what} is larger than {} KiB", MAX_PEM / 1024)));
    }
    let mut count = 0;
    for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let der =
            der.map_err(|e| ConfigError::invalid(field, format!("the {what} is not valid PEM: {e}")))?;
        crate::pki::CertInfo::from_der(&der)
            .map_err(|e| ConfigError::invalid(field, format!("the {what} is not a certificate: {e}")))?;
        count += 1;
    }
    if count == 0 {
        return Err(ConfigError::invalid(
            field,
            format!("the {what} has no certificate (-----BEGIN CERTIFICATE-----) in it"),
        ));
    }
    Ok(())
}

/// An unencrypted private key (PKCS#8, PKCS#1 or SEC1), as librdkafka reads it without a key password.
fn check_private_key(pem: &str) -> Result<(), ConfigError> {
    let field = "client_key";
    if pem.len() > MAX_PEM {
        return Err(ConfigError::invalid(
            field,
            format!("the client key is larger than {} KiB", MAX_PEM / 1024),
        ));
    }
    if pem.contains("ENCRYPTED") {
        return Err(ConfigError::invalid(
            field,
            "the client key is encrypted; decrypt it with `openssl pkey -in key.pem -out plain.pem`",
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| {
        ConfigError::invalid(field, "the client key has no private key (-----BEGIN PRIVATE KEY-----) in it")
    })?;
    // Every key form librdkafka reads (PKCS#8, PKCS#1, SEC1) is one DER sequence.
    match x509_parser::der_parser::parse_der(key.secret_der()) {
        Ok((rest, object)) if rest.is_empty() && object.as_sequence().is_ok() => Ok(()),
        _ => {
            Err(ConfigError::invalid(field, "the client key is not a private key: its PEM holds no DER key"))
        }
    }
}

/// What a PEM text's first certificate is, to show instead of the text: its subject and expiry.
pub fn describe_certificate(pem: &str) -> String {
    match crate::pki::CertInfo::from_pem(pem) {
        Ok(info) => format!(
            "{}, expires {}",
            info.subject,
            crate::timefmt::format(crate::timefmt::unix_millis(info.not_after))
        ),
        Err(_) => "unreadable".to_owned(),
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

    pub fn kind(&self) -> &'static str {
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
                _ => Err(ConfigError::invalid(
                    "key",
                    format!("key {s:?}: use topic, client or level:N (N counted from 1)"),
                )),
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
            _ => Err(ConfigError::invalid("format", format!("format {s:?}: use raw, json or sparkplug"))),
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
    /// Every refused value, by field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Problems::default();
        problems.check(valid_name("name", "route", &self.name));
        problems.check(valid_name("upstream", "upstream", &self.upstream));
        if !topic::valid_topic_filter(&self.filter) {
            problems.push("filter", format!("{:?} is not a valid MQTT topic filter", self.filter));
        }
        // A fixed topic can be checked now; a templated one is checked per message (dead letter if invalid).
        if let Some(template) = problems.check(TopicTemplate::parse(&self.topic))
            && template.is_fixed()
        {
            problems.check(valid_kafka_topic("topic", &self.topic));
        }
        problems.done()
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
    /// Every refused value, by field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Problems::default();
        problems.check(valid_name("name", "route", &self.name));
        problems.check(valid_name("upstream", "upstream", &self.upstream));
        problems.check(valid_kafka_topic("topic", &self.topic));
        if self.qos > 2 {
            problems.push("qos", format!("QoS {}: use 0, 1 or 2", self.qos));
        }
        match expand_downlink_topic(&self.mqtt_topic, Some(b"k"), &|_| Some(b"h".to_vec())) {
            Ok(probe) if topic::valid_topic_name(&probe) => {}
            Ok(_) => problems
                .push("mqtt_topic", format!("{:?} does not make a valid MQTT topic name", self.mqtt_topic)),
            Err(e) => problems.push("mqtt_topic", e),
        }
        if self.as_user.as_ref().is_some_and(|u| u.is_empty() || u.len() > 256) {
            problems.push("as_user", "the user name must be 1 to 256 characters");
        }
        if self.group.as_ref().is_some_and(|g| g.is_empty() || g.len() > 255) {
            problems.push("group", "the consumer group must be 1 to 255 characters");
        }
        problems.done()
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
            let end = after.find('}').ok_or_else(|| {
                ConfigError::invalid("topic", format!("Kafka topic {template:?}: unclosed {{"))
            })?;
            let level = after.get(1..end).and_then(|n| n.parse::<usize>().ok()).filter(|&n| n >= 1);
            let Some(level) = level else {
                return Err(ConfigError::invalid(
                    "topic",
                    format!(
                        "Kafka topic {template:?}: placeholders are {{N}}, MQTT topic level N counted from 1"
                    ),
                ));
            };
            parts.push(TemplatePart::Level(level));
            rest = after.get(end + 1..).unwrap_or("");
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Text(rest.to_owned()));
        }
        if parts.is_empty() {
            return Err(ConfigError::invalid("topic", "the Kafka topic must not be empty"));
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
        valid_kafka_topic("topic", &out).map_err(|e| e.to_string())?;
        Ok(out)
    }
}

/// Kafka's own rule: 1 to 249 characters of `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub(crate) fn valid_kafka_topic(field: &'static str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            field,
            format!("{name:?} is not a valid Kafka topic (1 to 249 of a-z A-Z 0-9 . _ -)"),
        ))
    }
}

/// Names appear in cursor names (`kafka:<route>`), `$SYS` topics and group ids: keep them plain.
fn valid_name(field: &'static str, what: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(field, format!("{what} name {name:?}: 1 to 64 of a-z A-Z 0-9 . _ -")))
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

/// Writes the upstream that `build` makes of the one stored under `name` (`None` if there is none), in one
/// transaction with its audit entry: read, build, validate, write. `build` refuses what the caller does not
/// want (adding over an existing name, changing a missing one) with its own error; nothing is written then.
pub async fn write_upstream(
    pool: &SqlitePool,
    name: &str,
    build: impl FnOnce(Option<Upstream>) -> Result<Upstream, ConfigError>,
    audited: Audited<'_>,
) -> Result<Upstream, ConfigError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let stored: Option<String> = sqlx::query_scalar("SELECT spec FROM kafka_upstreams WHERE name = ?")
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
    let stored = stored
        .map(|json| serde_json::from_str::<Upstream>(&json))
        .transpose()
        .map_err(|source| ConfigError::Stored { name: name.to_owned(), source })?;
    let upstream = build(stored)?;
    if upstream.name != name {
        return Err(ConfigError::invalid("name", "an upstream cannot be renamed"));
    }
    upstream.validate()?;
    let spec = serde_json::to_string(&upstream)
        .map_err(|source| ConfigError::Stored { name: upstream.name.clone(), source })?;
    sqlx::query(
        "INSERT INTO kafka_upstreams (name, spec, updated) VALUES (?, ?, ?) \
         ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated = excluded.updated",
    )
    .bind(&upstream.name)
    .bind(spec)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    finish(tx, audited).await?;
    Ok(upstream)
}

/// Adds or replaces an upstream.
pub async fn set_upstream(
    pool: &SqlitePool,
    upstream: &Upstream,
    audited: Audited<'_>,
) -> Result<(), ConfigError> {
    write_upstream(pool, &upstream.name, |_| Ok(upstream.clone()), audited).await.map(drop)
}

pub async fn delete_upstream(pool: &SqlitePool, name: &str, audited: Audited<'_>) -> Result<(), ConfigError> {
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
    finish(tx, audited).await?;
    Ok(())
}

/// Writes the route that `build` makes of the one stored under `name` (`None` if there is none), in one
/// transaction with its audit entry; its upstream must exist. A changed route keeps its paused state (and its
/// journal cursor: the running gateway restarts it where it was).
pub async fn write_route(
    pool: &SqlitePool,
    name: &str,
    build: impl FnOnce(Option<StoredRoute>) -> Result<RouteSpec, ConfigError>,
    audited: Audited<'_>,
) -> Result<StoredRoute, ConfigError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let row = sqlx::query("SELECT spec, paused FROM kafka_routes WHERE name = ?")
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
    let stored = match row {
        Some(row) => Some(StoredRoute {
            spec: serde_json::from_str(row.try_get::<&str, _>(0)?)
                .map_err(|source| ConfigError::Stored { name: name.to_owned(), source })?,
            paused: row.try_get(1)?,
        }),
        None => None,
    };
    let paused = stored.as_ref().is_some_and(|r| r.paused);
    let spec = build(stored)?;
    if spec.name() != name {
        return Err(ConfigError::invalid("name", "a route cannot be renamed"));
    }
    spec.validate()?;
    let json = serde_json::to_string(&spec)
        .map_err(|source| ConfigError::Stored { name: spec.name().to_owned(), source })?;
    let upstream: Option<String> = sqlx::query_scalar("SELECT name FROM kafka_upstreams WHERE name = ?")
        .bind(spec.upstream())
        .fetch_optional(&mut *tx)
        .await?;
    if upstream.is_none() {
        return Err(ConfigError::NoUpstream(spec.upstream().to_owned()));
    }
    let now = now_ms();
    sqlx::query(
        "INSERT INTO kafka_routes (name, kind, spec, paused, created, updated) VALUES (?, ?, ?, 0, ?, ?) \
         ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, spec = excluded.spec, updated = excluded.updated",
    )
    .bind(spec.name())
    .bind(spec.kind())
    .bind(json)
    .bind(now)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    finish(tx, audited).await?;
    Ok(StoredRoute { spec, paused })
}

/// Adds a route; its upstream must exist.
pub async fn add_route(pool: &SqlitePool, spec: &RouteSpec, audited: Audited<'_>) -> Result<(), ConfigError> {
    let build = |stored: Option<StoredRoute>| match stored {
        Some(_) => Err(ConfigError::RouteExists(spec.name().to_owned())),
        None => Ok(spec.clone()),
    };
    write_route(pool, spec.name(), build, audited).await.map(drop)
}

pub async fn set_paused(
    pool: &SqlitePool,
    name: &str,
    paused: bool,
    audited: Audited<'_>,
) -> Result<(), ConfigError> {
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
    finish(tx, audited).await?;
    Ok(())
}

/// Deletes a route, its dead letters and its offset hints. Its journal cursor is removed by the running
/// gateway (or at the next start), which releases the backlog it held.
pub async fn delete_route(pool: &SqlitePool, name: &str, audited: Audited<'_>) -> Result<(), ConfigError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let deleted = sqlx::query("DELETE FROM kafka_routes WHERE name = ?").bind(name).execute(&mut *tx).await?;
    if deleted.rows_affected() == 0 {
        return Err(ConfigError::NoRoute(name.to_owned()));
    }
    sqlx::query("DELETE FROM kafka_dead_letters WHERE route = ?").bind(name).execute(&mut *tx).await?;
    sqlx::query("DELETE FROM kafka_route_offsets WHERE route = ?").bind(name).execute(&mut *tx).await?;
    finish(tx, audited).await?;
    Ok(())
}

/// This gateway's id in the records it writes.
pub async fn gateway_id(pool: &SqlitePool) -> Result<String, ConfigError> {
    Ok(sqlx::query_scalar("SELECT gateway FROM kafka_gateway WHERE id = 1").fetch_one(pool).await?)
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
            sasl: Some(Sasl {
                mechanism: SaslMechanism::ScramSha512,
                username: "u".into(),
                password: "hunter2".into(),
            }),
            compression: Compression::Zstd,
            ..Upstream::default()
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
