//! The management operations on Kafka forwarding, one typed request and result per action: what `weir kafka
//! ...` and the console's Kafka page call. Results never carry a secret. Every change is one transaction with its
//! audit entry; a refusal names the field of each refused value ([`OpsError::fields`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use sqlx::{Row, SqlitePool};

use super::config::{
    self, Compression, ConfigError, Downlink, FieldError, KeySpec, Problems, Redacted, RouteSpec, Sasl,
    SaslMechanism, StoredRoute, Uplink, Upstream, ValueFormat,
};
use super::status;
use crate::store::config_db::Audited;
use crate::timefmt::now_ms;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("configuration database: {0}")]
    Database(#[from] sqlx::Error),
    /// A connection test did not reach the upstream.
    #[error("upstream {upstream}: {failure}")]
    Connection { upstream: String, failure: ConnectionFailure },
    /// This binary has no Kafka client (built without the cargo feature `kafka`).
    #[error("this weir is built without Kafka (the cargo feature `kafka`)")]
    NotBuilt,
    /// A request that cannot be carried out as asked (a dead letter that does not exist, a replay that failed).
    #[error("{0}")]
    Refused(String),
}

impl OpsError {
    /// The refused values by field, for a form that shows each reason beside its field; empty for errors that
    /// belong to no field.
    pub fn fields(&self) -> Vec<FieldError> {
        match self {
            OpsError::Config(e) => e.fields(),
            _ => Vec::new(),
        }
    }
}

/// `weir kafka upstream set`, and the console's upstream form.
#[derive(Clone, Default)]
pub struct SetUpstream {
    pub name: String,
    /// `HOST:PORT` list, separated by commas or white space, as given.
    pub bootstrap: String,
    pub tls: bool,
    /// Files (the CLI).
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// PEM text instead of files (the console).
    pub ca_pem: Option<String>,
    pub client_cert_pem: Option<String>,
    pub client_key_pem: Option<String>,
    /// With [`upstream_edit`]: drop the stored CA, or the stored client certificate and its key. Otherwise a
    /// certificate, key or password not given is kept as stored there.
    pub remove_ca: bool,
    pub remove_client_cert: bool,
    pub sasl_mechanism: Option<String>,
    pub sasl_user: Option<String>,
    /// Read from standard input by the CLI, never from the command line.
    pub sasl_password: Option<String>,
    pub compression: Option<String>,
    /// The largest record sent (librdkafka's `message.max.bytes`); librdkafka's default when `None`.
    pub max_message_bytes: Option<u32>,
}

/// Hand-written: the password and the client key never reach a log line through `{:?}`.
impl fmt::Debug for SetUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetUpstream")
            .field("name", &self.name)
            .field("bootstrap", &self.bootstrap)
            .field("tls", &self.tls)
            .field("ca", &self.ca)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("ca_pem", &Redacted::pem(&self.ca_pem))
            .field("client_cert_pem", &Redacted::pem(&self.client_cert_pem))
            .field("client_key_pem", &Redacted::secret(&self.client_key_pem))
            .field("remove_ca", &self.remove_ca)
            .field("remove_client_cert", &self.remove_client_cert)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_user", &self.sasl_user)
            .field("sasl_password", &Redacted::secret(&self.sasl_password))
            .field("compression", &self.compression)
            .field("max_message_bytes", &self.max_message_bytes)
            .finish()
    }
}

/// An upstream as shown: the SASL password and the client key are never included, only whether they are set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamView {
    pub name: String,
    pub bootstrap: Vec<String>,
    pub tls: bool,
    pub ca: Option<PathBuf>,
    /// A CA given as PEM text: its first certificate's subject and expiry.
    pub ca_pem: Option<String>,
    pub client_cert: Option<PathBuf>,
    /// A client certificate given as PEM text: its subject and expiry.
    pub client_cert_pem: Option<String>,
    /// A client key is set (file or text).
    pub client_key: bool,
    pub sasl_mechanism: Option<String>,
    pub sasl_user: Option<String>,
    pub compression: String,
    pub max_message_bytes: Option<u32>,
}

impl From<&Upstream> for UpstreamView {
    fn from(u: &Upstream) -> UpstreamView {
        UpstreamView {
            name: u.name.clone(),
            bootstrap: u.bootstrap.clone(),
            tls: u.uses_tls(),
            ca: u.ca.clone(),
            ca_pem: u.ca_pem.as_deref().map(config::describe_certificate),
            client_cert: u.client_cert.clone(),
            client_cert_pem: u.client_cert_pem.as_deref().map(config::describe_certificate),
            client_key: u.client_key.is_some() || u.client_key_pem.is_some(),
            sasl_mechanism: u.sasl.as_ref().map(|s| s.mechanism.as_str().to_owned()),
            sasl_user: u.sasl.as_ref().map(|s| s.username.clone()),
            compression: u.compression.as_str().to_owned(),
            max_message_bytes: u.max_message_bytes,
        }
    }
}

/// What a write does with an upstream already stored under the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Refused if there is one (the console's "add").
    Add,
    /// Replaced whole (`weir kafka upstream set`): what is not given is not kept.
    Replace,
    /// Changed (the console's "edit"): there must be one; secrets and certificates not given are kept.
    Edit,
}

/// `weir kafka upstream set`: adds or replaces an upstream.
pub async fn upstream_set(
    pool: &SqlitePool,
    request: SetUpstream,
    actor: &str,
) -> Result<UpstreamView, OpsError> {
    write_upstream(pool, request, Mode::Replace, actor).await
}

/// Adds an upstream; refused if the name is taken.
pub async fn upstream_add(
    pool: &SqlitePool,
    request: SetUpstream,
    actor: &str,
) -> Result<UpstreamView, OpsError> {
    write_upstream(pool, request, Mode::Add, actor).await
}

/// Changes a stored upstream. A password, client key or certificate left out is kept as it is (write-only
/// secrets are never shown, so a form cannot send them back); [`SetUpstream::remove_ca`] and
/// [`SetUpstream::remove_client_cert`] drop them.
pub async fn upstream_edit(
    pool: &SqlitePool,
    request: SetUpstream,
    actor: &str,
) -> Result<UpstreamView, OpsError> {
    write_upstream(pool, request, Mode::Edit, actor).await
}

async fn write_upstream(
    pool: &SqlitePool,
    request: SetUpstream,
    mode: Mode,
    actor: &str,
) -> Result<UpstreamView, OpsError> {
    let action = match mode {
        Mode::Add => "kafka.upstream.add",
        Mode::Replace => "kafka.upstream.set",
        Mode::Edit => "kafka.upstream.edit",
    };
    // Files are looked at before the transaction, which holds the database's write lock.
    let mut problems = Problems::default();
    for (field, file) in
        [("ca", &request.ca), ("client_cert", &request.client_cert), ("client_key", &request.client_key)]
    {
        if let Some(file) = file
            && !file.is_file()
        {
            problems.push(field, format!("{} is not a readable file", file.display()));
        }
    }
    let name = request.name.clone();
    let audited = Audited { actor, action, detail: &name };
    let build = |stored| build_upstream(request, stored, mode, problems);
    let upstream = config::write_upstream(pool, &name, build, audited).await?;
    Ok(UpstreamView::from(&upstream))
}

/// The upstream a request makes, given what is stored under its name; every refused value at once.
fn build_upstream(
    r: SetUpstream,
    stored: Option<Upstream>,
    mode: Mode,
    mut problems: Problems,
) -> Result<Upstream, ConfigError> {
    let kept = match (mode, stored) {
        (Mode::Add, Some(_)) => return Err(ConfigError::UpstreamExists(r.name)),
        (Mode::Edit, None) => return Err(ConfigError::NoUpstream(r.name)),
        (Mode::Edit, Some(stored)) => stored,
        _ => Upstream::default(),
    };
    let keep = mode == Mode::Edit;
    let compression = match r.compression.as_deref() {
        Some(c) => problems.check(Compression::parse(c)).unwrap_or_default(),
        None => Compression::default(),
    };
    let sasl = match (r.sasl_mechanism, r.sasl_user, r.sasl_password) {
        (None, None, None) => None,
        (Some(mechanism), user, password) => {
            problems.check(SaslMechanism::parse(&mechanism)).map(|mechanism| {
                // An edit that gives no password keeps the stored one.
                let stored = kept.sasl.as_ref().filter(|_| keep).map(|s| s.password.clone());
                let password = password.filter(|p| !p.is_empty()).or(stored).unwrap_or_default();
                Sasl { mechanism, username: user.unwrap_or_default(), password }
            })
        }
        (None, ..) => {
            problems.push(
                "sasl_mechanism",
                "SASL needs --sasl-mechanism, --sasl-user and --sasl-password-stdin together",
            );
            None
        }
    };
    let ca_given = r.ca.is_some() || r.ca_pem.is_some();
    let (ca, ca_pem) = match (ca_given, keep && !r.remove_ca) {
        (true, _) => (r.ca, r.ca_pem),
        (false, true) => (kept.ca, kept.ca_pem),
        (false, false) => (None, None),
    };
    let keep_client = keep && !r.remove_client_cert;
    let (client_cert, client_cert_pem) =
        match (r.client_cert.is_some() || r.client_cert_pem.is_some(), keep_client) {
            (true, _) => (r.client_cert, r.client_cert_pem),
            (false, true) => (kept.client_cert, kept.client_cert_pem),
            (false, false) => (None, None),
        };
    let (client_key, client_key_pem) =
        match (r.client_key.is_some() || r.client_key_pem.is_some(), keep_client) {
            (true, _) => (r.client_key, r.client_key_pem),
            (false, true) => (kept.client_key, kept.client_key_pem),
            (false, false) => (None, None),
        };
    let upstream = Upstream {
        name: r.name,
        bootstrap: r
            .bootstrap
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        tls: r.tls,
        ca,
        client_cert,
        client_key,
        ca_pem,
        client_cert_pem,
        client_key_pem,
        sasl,
        compression,
        // An edit that gives none keeps the stored limit.
        max_message_bytes: r.max_message_bytes.or(kept.max_message_bytes.filter(|_| keep)),
    };
    // The CLI's --ca implies --tls; a form with a TLS switch says what it means.
    if mode != Mode::Replace && !r.tls && upstream.uses_tls() {
        problems
            .push("tls", "TLS is off, but a CA or a client certificate is set: turn TLS on, or remove them");
    }
    problems.check(upstream.validate());
    problems.done()?;
    Ok(upstream)
}

pub async fn upstream_list(pool: &SqlitePool) -> Result<Vec<UpstreamView>, OpsError> {
    Ok(config::load(pool).await?.upstreams.iter().map(UpstreamView::from).collect())
}

pub async fn upstream_del(pool: &SqlitePool, name: &str, actor: &str) -> Result<(), OpsError> {
    let audited = Audited { actor, action: "kafka.upstream.del", detail: name };
    config::delete_upstream(pool, name, audited).await?;
    Ok(())
}

/// How long a connection test waits for the cluster's answer.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a connection test found: the cluster answered a metadata request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reached {
    pub upstream: String,
    /// `id host:port` of each broker in the metadata.
    pub brokers: Vec<String>,
    pub topics: usize,
    pub elapsed_ms: u64,
}

impl fmt::Display for Reached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = |n: usize, one: &str| if n == 1 { format!("1 {one}") } else { format!("{n} {one}s") };
        write!(
            f,
            "upstream {} reached in {:.1} s: {} ({}), {}",
            self.upstream,
            self.elapsed_ms as f64 / 1000.0,
            plural(self.brokers.len(), "broker"),
            self.brokers.join(", "),
            plural(self.topics, "topic")
        )
    }
}

/// Why a connection test failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct ConnectionFailure {
    pub kind: FailureKind,
    /// What the Kafka client said.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FailureKind {
    /// No broker answered: refused, timed out, or the name does not resolve.
    Unreachable,
    /// A broker answered and refused the credentials (SASL).
    Authentication,
    /// The TLS handshake failed: no TLS there, or a certificate that does not verify.
    Tls,
    /// The Kafka client refused the settings (a key that does not match its certificate, say).
    Settings,
    Other,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::Unreachable => "unreachable",
            FailureKind::Authentication => "authentication failed",
            FailureKind::Tls => "TLS failed",
            FailureKind::Settings => "settings refused by the Kafka client",
            FailureKind::Other => "failed",
        })
    }
}

/// `weir kafka upstream test`: a metadata request to the stored upstream, answered or failed within
/// [`TEST_TIMEOUT`] (and the time the client takes to close). Audited, though it changes nothing: it uses the
/// stored credentials.
pub async fn upstream_test(pool: &SqlitePool, name: &str, actor: &str) -> Result<Reached, OpsError> {
    let config = config::load(pool).await?;
    let upstream = config.upstream(name).ok_or_else(|| ConfigError::NoUpstream(name.to_owned()))?;
    let result = probe(pool, upstream).await;
    let detail = match &result {
        Ok(reached) => {
            format!("{name}: reached, {} brokers, {} topics", reached.brokers.len(), reached.topics)
        }
        Err(e) => format!("{name}: {e}"),
    };
    let _ = crate::store::audit(pool, actor, "kafka.upstream.test", &detail).await;
    result
}

#[cfg(feature = "kafka")]
async fn probe(pool: &SqlitePool, upstream: &Upstream) -> Result<Reached, OpsError> {
    let gateway = config::gateway_id(pool).await.unwrap_or_else(|_| "weir".to_owned());
    let client_id = format!("weir-{gateway}-test");
    match super::kafka::probe(upstream, &client_id, TEST_TIMEOUT).await {
        Ok((brokers, topics, elapsed)) => Ok(Reached {
            upstream: upstream.name.clone(),
            brokers,
            topics,
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        }),
        Err(failure) => Err(OpsError::Connection { upstream: upstream.name.clone(), failure }),
    }
}

#[cfg(not(feature = "kafka"))]
async fn probe(_pool: &SqlitePool, _upstream: &Upstream) -> Result<Reached, OpsError> {
    Err(OpsError::NotBuilt)
}

/// `weir kafka route add`, and the console's uplink form (add and edit).
#[derive(Debug, Clone)]
pub struct AddRoute {
    pub name: String,
    pub upstream: String,
    pub filter: String,
    pub topic: String,
    /// `topic`, `client` or `level:N`.
    pub key: String,
    /// `raw`, `json` or `sparkplug`.
    pub format: String,
    /// `now`, `oldest`, or a time as `weir history --since` takes it; editing, also `keep` (or empty).
    pub from: String,
    /// `None`: 60 s for a new route, kept as it is when editing.
    pub lag_alarm_secs: Option<u64>,
}

/// `weir kafka downlink add`, and the console's downlink form (add and edit).
#[derive(Debug, Clone)]
pub struct AddDownlink {
    pub name: String,
    pub upstream: String,
    pub topic: String,
    pub mqtt_topic: String,
    pub qos: u8,
    pub retain: bool,
    pub as_user: Option<String>,
    pub group: Option<String>,
}

/// A route as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteView {
    pub name: String,
    pub kind: String,
    pub upstream: String,
    pub paused: bool,
    /// Uplink: MQTT filter → Kafka topic; downlink: Kafka topic → MQTT topic.
    pub from: String,
    pub to: String,
    /// The rest, in `key=value` words: key, format, start; qos, retain, identity, group.
    pub options: Vec<String>,
}

impl RouteView {
    fn new(spec: &RouteSpec, paused: bool) -> RouteView {
        match spec {
            RouteSpec::Uplink(u) => RouteView {
                name: u.name.clone(),
                kind: "uplink".into(),
                upstream: u.upstream.clone(),
                paused,
                from: u.filter.clone(),
                to: u.topic.clone(),
                options: vec![
                    format!("key={}", u.key),
                    format!("format={}", u.format.as_str()),
                    format!(
                        "from={}",
                        if u.from_ms == 0 { "oldest".to_owned() } else { crate::timefmt::format(u.from_ms) }
                    ),
                    format!("lag_alarm={}s", u.lag_alarm_secs),
                ],
            },
            RouteSpec::Downlink(d) => RouteView {
                name: d.name.clone(),
                kind: "downlink".into(),
                upstream: d.upstream.clone(),
                paused,
                from: d.topic.clone(),
                to: d.mqtt_topic.clone(),
                options: vec![
                    format!("qos={}", d.qos),
                    format!("retain={}", d.retain),
                    format!("as={}", d.as_user.as_deref().unwrap_or("(gateway)")),
                    format!("group={}", d.group.as_deref().unwrap_or("(default)")),
                ],
            },
        }
    }
}

/// A record refused for good, as `route show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub route: String,
    pub ts: i64,
    pub journal_id: Option<i64>,
    pub source: String,
    pub destination: String,
    pub reason: String,
    pub payload_bytes: usize,
}

/// `weir kafka route show`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteDetails {
    pub route: RouteView,
    pub dead_letter_count: i64,
    /// The newest, up to the limit asked for.
    pub dead_letters: Vec<DeadLetter>,
    /// What the running gateway last reported, if it runs.
    pub status: Option<status::RouteStatus>,
}

pub async fn route_add(pool: &SqlitePool, request: AddRoute, actor: &str) -> Result<RouteView, OpsError> {
    write_uplink(pool, request, false, actor).await
}

/// Changes an uplink route; it keeps its journal cursor, so it goes on where it was. A start given here (`now`
/// or a time) skips what was accepted before it; it does not send again what was forwarded.
pub async fn route_edit(pool: &SqlitePool, request: AddRoute, actor: &str) -> Result<RouteView, OpsError> {
    write_uplink(pool, request, true, actor).await
}

async fn write_uplink(
    pool: &SqlitePool,
    request: AddRoute,
    edit: bool,
    actor: &str,
) -> Result<RouteView, OpsError> {
    let name = request.name.clone();
    let action = if edit { "kafka.route.edit" } else { "kafka.route.add" };
    let audited = Audited { actor, action, detail: &name };
    let build = |stored: Option<StoredRoute>| {
        let stored = match (stored, edit) {
            (Some(_), false) => return Err(ConfigError::RouteExists(name.clone())),
            (None, true) => return Err(ConfigError::NoRoute(name.clone())),
            (Some(StoredRoute { spec: RouteSpec::Uplink(u), .. }), true) => Some(u),
            (Some(_), true) => {
                return Err(ConfigError::WrongKind {
                    name: name.clone(),
                    kind: "downlink",
                    wanted: "uplink",
                });
            }
            (None, false) => None,
        };
        uplink_spec(request, stored.as_ref()).map(RouteSpec::Uplink)
    };
    let route = config::write_route(pool, &name, build, audited).await?;
    Ok(RouteView::new(&route.spec, route.paused))
}

/// The uplink a request makes (given the stored one when editing); every refused value at once.
fn uplink_spec(r: AddRoute, stored: Option<&Uplink>) -> Result<Uplink, ConfigError> {
    let mut problems = Problems::default();
    let now = now_ms();
    let (from_ms, from_now) = match (r.from.trim(), stored) {
        ("keep" | "", Some(u)) => (u.from_ms, u.from_now),
        ("now", _) => (now, true),
        ("oldest", _) => (0, false),
        ("keep" | "", None) => {
            problems.push("from", "a new route starts now, from the oldest message, or from a time");
            (now, true)
        }
        (time, _) => match crate::timefmt::parse(time, now) {
            Ok(ms) => (ms, false),
            Err(why) => {
                problems.push("from", why);
                (now, true)
            }
        },
    };
    let lag_alarm_secs = r.lag_alarm_secs.or(stored.map(|u| u.lag_alarm_secs)).unwrap_or(60);
    if lag_alarm_secs == 0 {
        problems.push("lag_alarm", "the lag alarm needs at least 1 second");
    }
    let uplink = Uplink {
        name: r.name,
        upstream: r.upstream,
        filter: r.filter,
        topic: r.topic,
        key: problems.check(KeySpec::parse(&r.key)).unwrap_or_default(),
        format: problems.check(ValueFormat::parse(&r.format)).unwrap_or_default(),
        from_ms,
        from_now,
        lag_alarm_secs,
    };
    problems.check(uplink.validate());
    problems.done()?;
    Ok(uplink)
}

pub async fn downlink_add(
    pool: &SqlitePool,
    request: AddDownlink,
    actor: &str,
) -> Result<RouteView, OpsError> {
    write_downlink(pool, request, false, actor).await
}

/// Changes a downlink route (its consumer group keeps its committed offsets unless the group changes).
pub async fn downlink_edit(
    pool: &SqlitePool,
    request: AddDownlink,
    actor: &str,
) -> Result<RouteView, OpsError> {
    write_downlink(pool, request, true, actor).await
}

async fn write_downlink(
    pool: &SqlitePool,
    request: AddDownlink,
    edit: bool,
    actor: &str,
) -> Result<RouteView, OpsError> {
    let name = request.name.clone();
    let action = if edit { "kafka.downlink.edit" } else { "kafka.downlink.add" };
    let audited = Audited { actor, action, detail: &name };
    let build = |stored: Option<StoredRoute>| {
        match (stored, edit) {
            (Some(_), false) => return Err(ConfigError::RouteExists(name.clone())),
            (None, true) => return Err(ConfigError::NoRoute(name.clone())),
            (Some(StoredRoute { spec: RouteSpec::Uplink(_), .. }), true) => {
                return Err(ConfigError::WrongKind {
                    name: name.clone(),
                    kind: "uplink",
                    wanted: "downlink",
                });
            }
            _ => {}
        }
        Ok(RouteSpec::Downlink(Downlink {
            name: request.name,
            upstream: request.upstream,
            topic: request.topic,
            mqtt_topic: request.mqtt_topic,
            qos: request.qos,
            retain: request.retain,
            as_user: request.as_user,
            group: request.group,
        }))
    };
    let route = config::write_route(pool, &name, build, audited).await?;
    Ok(RouteView::new(&route.spec, route.paused))
}

pub async fn route_list(pool: &SqlitePool) -> Result<Vec<RouteView>, OpsError> {
    Ok(config::load(pool).await?.routes.iter().map(|r| RouteView::new(&r.spec, r.paused)).collect())
}

/// One stored route, whole: what an edit form starts from (routes hold no secrets).
pub async fn route_get(pool: &SqlitePool, name: &str) -> Result<StoredRoute, OpsError> {
    let config = config::load(pool).await?;
    let route = config.routes.into_iter().find(|r| r.spec.name() == name);
    Ok(route.ok_or_else(|| ConfigError::NoRoute(name.to_owned()))?)
}

/// One stored upstream, as shown.
pub async fn upstream_get(pool: &SqlitePool, name: &str) -> Result<UpstreamView, OpsError> {
    let config = config::load(pool).await?;
    let upstream = config.upstream(name).ok_or_else(|| ConfigError::NoUpstream(name.to_owned()))?;
    Ok(UpstreamView::from(upstream))
}

pub async fn route_show(
    pool: &SqlitePool,
    data_dir: &Path,
    name: &str,
    limit: i64,
) -> Result<RouteDetails, OpsError> {
    let route = route_get(pool, name).await?;
    let (dead_letter_count, dead_letters) = dead_letters(pool, Some(name), limit).await?;
    let status = status(data_dir).report.and_then(|r| r.routes.into_iter().find(|s| s.name == name));
    Ok(RouteDetails {
        route: RouteView::new(&route.spec, route.paused),
        dead_letter_count,
        dead_letters,
        status,
    })
}

/// How many dead letters there are, of one route or of all, and the newest up to `limit`.
pub async fn dead_letters(
    pool: &SqlitePool,
    route: Option<&str>,
    limit: i64,
) -> Result<(i64, Vec<DeadLetter>), OpsError> {
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM kafka_dead_letters WHERE ?1 IS NULL OR route = ?1")
            .bind(route)
            .fetch_one(pool)
            .await?;
    let rows = sqlx::query(
        "SELECT id, route, ts, journal_id, source, destination, reason, length(payload) FROM kafka_dead_letters \
         WHERE ?1 IS NULL OR route = ?1 ORDER BY id DESC LIMIT ?2",
    )
    .bind(route)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut letters = Vec::with_capacity(rows.len());
    for row in rows {
        letters.push(DeadLetter {
            id: row.try_get(0)?,
            route: row.try_get(1)?,
            ts: row.try_get(2)?,
            journal_id: row.try_get(3)?,
            source: row.try_get(4)?,
            destination: row.try_get(5)?,
            reason: row.try_get(6)?,
            payload_bytes: usize::try_from(row.try_get::<i64, _>(7)?).unwrap_or(0),
        });
    }
    Ok((count, letters))
}

pub async fn route_pause(pool: &SqlitePool, name: &str, actor: &str) -> Result<(), OpsError> {
    let audited = Audited { actor, action: "kafka.route.pause", detail: name };
    config::set_paused(pool, name, true, audited).await?;
    Ok(())
}

pub async fn route_resume(pool: &SqlitePool, name: &str, actor: &str) -> Result<(), OpsError> {
    let audited = Audited { actor, action: "kafka.route.resume", detail: name };
    config::set_paused(pool, name, false, audited).await?;
    Ok(())
}

pub async fn route_del(pool: &SqlitePool, name: &str, actor: &str) -> Result<(), OpsError> {
    let audited = Audited { actor, action: "kafka.route.del", detail: name };
    config::delete_route(pool, name, audited).await?;
    Ok(())
}

/// Which dead letters `weir kafka route replay` sends again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayWhich {
    All,
    /// One, by its id in `route show`.
    Id(i64),
}

/// What a replay did: how many were sent (and left the list), and those refused again, with the new reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    pub sent: usize,
    /// `(dead letter id, reason)`: still in the list, with this reason and the time of this attempt.
    pub kept: Vec<(i64, String)>,
}

/// How long each replayed record may take to be acknowledged.
#[cfg(feature = "kafka")]
const REPLAY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `weir kafka route replay`: sends an uplink route's dead letters again through the route (after the operator
/// raised a size limit, say), as the message the journal still holds (else the payload and topic the dead
/// letter kept), with its original journal id. Each acknowledged one leaves the list; each refused one stays,
/// with the new reason. Audited. Replayed records come after what the route sent meanwhile: order per key is
/// not kept for them.
pub async fn route_replay(
    pool: &SqlitePool,
    data_dir: &Path,
    name: &str,
    which: ReplayWhich,
    actor: &str,
) -> Result<ReplayReport, OpsError> {
    let config = config::load(pool).await?;
    let Some(route) = config.routes.iter().find(|r| r.spec.name() == name) else {
        return Err(ConfigError::NoRoute(name.to_owned()).into());
    };
    let RouteSpec::Uplink(spec) = &route.spec else {
        return Err(OpsError::Refused(format!(
            "{name} is a downlink: only uplink dead letters are replayed"
        )));
    };
    let Some(upstream) = config.upstream(&spec.upstream) else {
        return Err(ConfigError::NoUpstream(spec.upstream.clone()).into());
    };
    let only = match which {
        ReplayWhich::All => None,
        ReplayWhich::Id(id) => Some(id),
    };
    // id, ts, journal id, MQTT topic, payload.
    type Row = (i64, i64, Option<i64>, String, Vec<u8>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, ts, journal_id, source, payload FROM kafka_dead_letters \
         WHERE route = ? AND (? IS NULL OR id = ?) ORDER BY id",
    )
    .bind(name)
    .bind(only)
    .bind(only)
    .fetch_all(pool)
    .await?;
    if let Some(id) = only
        && rows.is_empty()
    {
        return Err(OpsError::Refused(format!("route {name} has no dead letter {id}")));
    }
    if rows.is_empty() {
        return Ok(ReplayReport { sent: 0, kept: Vec::new() });
    }
    let journal = crate::store::open_for_reading(data_dir, crate::store::Database::Journal)
        .await
        .map_err(|e| OpsError::Refused(format!("the journal: {e}")))?;
    let mut letters = Vec::with_capacity(rows.len());
    for (id, ts, journal_id, source, payload) in rows {
        let kept = match journal_id {
            Some(jid) => {
                let q = crate::store::history::HistoryQuery {
                    order: crate::store::history::Order::OldestFirst,
                    after: Some(jid - 1),
                    limit: 1,
                    ..crate::store::history::HistoryQuery::new(&source)
                };
                crate::store::history::query(&journal, &q)
                    .await
                    .ok()
                    .and_then(|p| p.messages.into_iter().find(|m| m.id == jid))
            }
            None => None,
        };
        // Gone from the journal (retention): what the dead letter kept, without the MQTT properties.
        let message = kept.unwrap_or_else(|| crate::store::history::StoredMessage {
            id: journal_id.unwrap_or(0),
            ts,
            topic: source,
            payload,
            qos: 1,
            retain: false,
            client_id: None,
            username: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
            payload_ref: None,
        });
        letters.push((id, message));
    }
    let (sent, refused) = send_again(pool, spec, upstream, &journal, letters).await?;
    journal.close().await;
    let now = now_ms();
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    for id in &sent {
        sqlx::query("DELETE FROM kafka_dead_letters WHERE id = ?").bind(id).execute(&mut *tx).await?;
    }
    for (id, reason) in &refused {
        sqlx::query("UPDATE kafka_dead_letters SET reason = ?, ts = ? WHERE id = ?")
            .bind(reason)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    let detail = format!("{name}: {} sent, {} kept", sent.len(), refused.len());
    let _ = crate::store::audit(pool, actor, "kafka.route.replay", &detail).await;
    Ok(ReplayReport { sent: sent.len(), kept: refused })
}

#[cfg(feature = "kafka")]
async fn send_again(
    pool: &SqlitePool,
    spec: &Uplink,
    upstream: &Upstream,
    journal: &SqlitePool,
    letters: Vec<(i64, crate::store::history::StoredMessage)>,
) -> Result<(Vec<i64>, Vec<(i64, String)>), OpsError> {
    let gateway = config::gateway_id(pool).await?;
    let letters = letters.into_iter().map(|(id, message)| super::uplink::Letter { id, message }).collect();
    let done = super::uplink::replay(spec, upstream, &gateway, journal, letters, REPLAY_TIMEOUT)
        .await
        .map_err(|e| OpsError::Refused(format!("replay: {e}")))?;
    Ok((done.sent, done.refused))
}

#[cfg(not(feature = "kafka"))]
async fn send_again(
    _pool: &SqlitePool,
    _spec: &Uplink,
    _upstream: &Upstream,
    _journal: &SqlitePool,
    _letters: Vec<(i64, crate::store::history::StoredMessage)>,
) -> Result<(Vec<i64>, Vec<(i64, String)>), OpsError> {
    Err(OpsError::NotBuilt)
}

pub use super::status::StatusView;

/// `weir kafka status`: what the running gateway last reported ([`status::read`]).
pub fn status(data_dir: &Path) -> StatusView {
    status::read(data_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pool() -> (tempfile::TempDir, SqlitePool) {
        let dir = tempfile::tempdir().unwrap();
        let (pool, _) = crate::store::open(
            dir.path(),
            crate::store::Database::Config,
            crate::store::Synchronous::Full,
            None,
        )
        .await
        .unwrap();
        (dir, pool)
    }

    #[tokio::test]
    async fn upstreams_and_routes_round_trip_without_their_secrets() {
        let (dir, pool) = pool().await;
        let version = || async {
            sqlx::query_scalar::<_, i64>("SELECT version FROM config_version").fetch_one(&pool).await.unwrap()
        };
        let v0 = version().await;
        let view = upstream_set(
            &pool,
            SetUpstream {
                name: "main".into(),
                bootstrap: "k1:9092, k2:9092".into(),
                sasl_mechanism: Some("scram-sha-512".into()),
                sasl_user: Some("gw".into()),
                sasl_password: Some("hunter2".into()),
                ..SetUpstream::default()
            },
            "test",
        )
        .await
        .unwrap();
        assert_eq!(view.bootstrap, ["k1:9092", "k2:9092"]);
        assert!(version().await > v0, "a change bumps config_version");
        let listed = format!("{:?}", upstream_list(&pool).await.unwrap());
        assert!(listed.contains("SCRAM-SHA-512") && !listed.contains("hunter2"), "{listed}");
        let half_sasl = SetUpstream {
            name: "x".into(),
            bootstrap: "k:1".into(),
            sasl_user: Some("u".into()),
            ..SetUpstream::default()
        };
        assert!(upstream_set(&pool, half_sasl, "test").await.is_err());

        let add = AddRoute {
            name: "plant".into(),
            upstream: "main".into(),
            filter: "plant/#".into(),
            topic: "plant.{2}".into(),
            key: "level:2".into(),
            format: "json".into(),
            from: "oldest".into(),
            lag_alarm_secs: None,
        };
        route_add(&pool, add.clone(), "test").await.unwrap();
        assert!(matches!(
            route_add(&pool, add.clone(), "test").await,
            Err(OpsError::Config(ConfigError::RouteExists(_)))
        ));
        let orphan = AddRoute { name: "o".into(), upstream: "nope".into(), ..add.clone() };
        assert!(matches!(
            route_add(&pool, orphan, "test").await,
            Err(OpsError::Config(ConfigError::NoUpstream(_)))
        ));
        let bad_from = AddRoute { name: "b".into(), from: "yesterday-ish".into(), ..add };
        assert!(route_add(&pool, bad_from, "test").await.is_err());
        assert!(matches!(
            upstream_del(&pool, "main", "test").await,
            Err(OpsError::Config(ConfigError::UpstreamInUse { .. }))
        ));

        route_pause(&pool, "plant", "test").await.unwrap();
        let routes = route_list(&pool).await.unwrap();
        assert_eq!(routes.len(), 1);
        assert!(routes[0].paused);
        assert!(routes[0].options.contains(&"key=level:2".to_owned()));
        route_resume(&pool, "plant", "test").await.unwrap();
        let shown = route_show(&pool, dir.path(), "plant", 10).await.unwrap();
        assert!(!shown.route.paused);
        assert_eq!(shown.dead_letter_count, 0);
        assert!(shown.status.is_none(), "no gateway runs here");
        assert!(!status(dir.path()).running);
        route_del(&pool, "plant", "test").await.unwrap();
        assert!(route_del(&pool, "plant", "test").await.is_err());
        upstream_del(&pool, "main", "test").await.unwrap();
        assert!(upstream_list(&pool).await.unwrap().is_empty());
    }

    /// An upstream and a request to set one, as stored and as asked for: `Debug` says which secrets are set and
    /// how large the certificates are, never their text.
    #[test]
    fn debug_never_shows_a_secret_or_a_certificate() {
        let (ca, cert, key) = ("ca-text", "cert-text", "key-text");
        let up = Upstream {
            name: "main".into(),
            bootstrap: vec!["k1:9092".into()],
            ca_pem: Some(ca.into()),
            client_cert_pem: Some(cert.into()),
            client_key_pem: Some(key.into()),
            sasl: Some(Sasl {
                mechanism: SaslMechanism::Plain,
                username: "gw".into(),
                password: "hunter2".into(),
            }),
            ..Upstream::default()
        };
        let request = SetUpstream {
            name: "main".into(),
            ca_pem: Some(ca.into()),
            client_cert_pem: Some(cert.into()),
            client_key_pem: Some(key.into()),
            sasl_user: Some("gw".into()),
            sasl_password: Some("hunter2".into()),
            ..SetUpstream::default()
        };
        for shown in [format!("{up:?}"), format!("{up:#?}"), format!("{request:?}"), format!("{request:#?}")]
        {
            for hidden in [ca, cert, key, "hunter2"] {
                assert!(!shown.contains(hidden), "{hidden} in {shown}");
            }
        }
        for shown in [format!("{up:?}"), format!("{request:?}")] {
            assert!(shown.contains("\"gw\"") && shown.contains("client_key_pem: Some(<secret>)"), "{shown}");
            assert!(shown.contains("ca_pem: Some(<7 bytes>)"), "{shown}");
        }
        assert!(format!("{up:?}").contains("password: <secret>"));
        assert!(format!("{request:?}").contains("sasl_password: Some(<secret>)"));
        let unset = format!("{:?}", SetUpstream::default());
        assert!(unset.contains("client_key_pem: None") && unset.contains("sasl_password: None"), "{unset}");
    }

    fn self_signed(name: &str) -> (String, String) {
        let made = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        (made.cert.pem(), made.signing_key.serialize_pem())
    }

    async fn actions(pool: &SqlitePool) -> Vec<(String, String)> {
        sqlx::query_as("SELECT actor, action FROM audit_log ORDER BY id").fetch_all(pool).await.unwrap()
    }

    fn fields(e: &OpsError) -> Vec<&'static str> {
        e.fields().iter().map(|f| f.field).collect()
    }

    #[tokio::test]
    async fn the_console_adds_and_edits_upstreams_and_keeps_what_it_cannot_show() {
        let (_dir, pool) = pool().await;
        let (ca, _) = self_signed("kafka-ca");
        let (cert, key) = self_signed("gw");
        let add = SetUpstream {
            name: "main".into(),
            bootstrap: "k1:9092 k2:9092".into(),
            tls: true,
            ca_pem: Some(ca),
            client_cert_pem: Some(cert),
            client_key_pem: Some(key),
            sasl_mechanism: Some("PLAIN".into()),
            sasl_user: Some("gw".into()),
            sasl_password: Some("hunter2".into()),
            compression: Some("zstd".into()),
            ..SetUpstream::default()
        };
        let view = upstream_add(&pool, add.clone(), "console:root").await.unwrap();
        assert_eq!(view.bootstrap, ["k1:9092", "k2:9092"]);
        assert!(view.ca_pem.as_deref().is_some_and(|d| d.contains("CN=rcgen")), "{view:?}");
        assert!(view.client_key && view.tls);
        let shown = format!("{view:?} {add:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("PRIVATE KEY"), "{shown}");
        let taken = upstream_add(&pool, add, "console:root").await.unwrap_err();
        assert_eq!(fields(&taken), ["name"]);

        // An edit without password, certificates or key keeps them.
        let edit = SetUpstream {
            name: "main".into(),
            bootstrap: "k3:9092".into(),
            tls: true,
            sasl_mechanism: Some("SCRAM-SHA-256".into()),
            sasl_user: Some("gw2".into()),
            compression: Some("lz4".into()),
            ..SetUpstream::default()
        };
        upstream_edit(&pool, edit.clone(), "console:root").await.unwrap();
        let stored = config::load(&pool).await.unwrap().upstreams.remove(0);
        let sasl = stored.sasl.as_ref().unwrap();
        assert_eq!((sasl.mechanism, sasl.username.as_str()), (SaslMechanism::ScramSha256, "gw2"));
        assert_eq!(sasl.password, "hunter2", "an empty password keeps the stored one");
        assert!(
            stored.ca_pem.is_some() && stored.client_cert_pem.is_some() && stored.client_key_pem.is_some()
        );
        assert_eq!(stored.bootstrap, ["k3:9092"]);

        // TLS off while a CA is kept is a contradiction; removing them with it is not.
        let off = SetUpstream { tls: false, ..edit.clone() };
        assert_eq!(fields(&upstream_edit(&pool, off.clone(), "t").await.unwrap_err()), ["tls"]);
        let plain = SetUpstream {
            remove_ca: true,
            remove_client_cert: true,
            sasl_mechanism: None,
            sasl_user: None,
            ..off
        };
        let view = upstream_edit(&pool, plain, "console:root").await.unwrap();
        assert!(!view.tls && view.ca_pem.is_none() && !view.client_key && view.sasl_mechanism.is_none());

        // Every bad value is reported at once, by field, and nothing is written.
        let bad = SetUpstream {
            name: "main".into(),
            bootstrap: "nohost".into(),
            tls: true,
            ca_pem: Some("not a certificate".into()),
            client_cert_pem: Some(self_signed("x").0),
            client_key_pem: Some(
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----".into(),
            ),
            sasl_mechanism: Some("GSSAPI".into()),
            sasl_user: Some("u".into()),
            compression: Some("brotli".into()),
            ..SetUpstream::default()
        };
        let refused = upstream_edit(&pool, bad, "t").await.unwrap_err();
        let mut got = fields(&refused);
        got.sort_unstable();
        assert_eq!(got, ["bootstrap", "ca", "client_key", "compression", "sasl_mechanism"], "{refused}");
        assert!(config::load(&pool).await.unwrap().upstreams[0].ca_pem.is_none(), "nothing half-applied");
        let missing = SetUpstream { name: "nope".into(), ..edit };
        assert!(matches!(
            upstream_edit(&pool, missing, "t").await,
            Err(OpsError::Config(ConfigError::NoUpstream(_)))
        ));
        let audited: Vec<String> = actions(&pool).await.into_iter().map(|(_, action)| action).collect();
        assert_eq!(audited, ["kafka.upstream.add", "kafka.upstream.edit", "kafka.upstream.edit"]);
    }

    #[tokio::test]
    async fn routes_are_edited_in_place_and_keep_their_pause_and_start() {
        let (_dir, pool) = pool().await;
        let main = SetUpstream { name: "main".into(), bootstrap: "k:9092".into(), ..SetUpstream::default() };
        upstream_set(&pool, main, "test").await.unwrap();
        let add = AddRoute {
            name: "plant".into(),
            upstream: "main".into(),
            filter: "plant/#".into(),
            topic: "plant".into(),
            key: "topic".into(),
            format: "raw".into(),
            from: "oldest".into(),
            lag_alarm_secs: Some(5),
        };
        route_add(&pool, add.clone(), "test").await.unwrap();
        route_pause(&pool, "plant", "test").await.unwrap();
        let edit =
            AddRoute { topic: "plant.{2}".into(), from: "keep".into(), lag_alarm_secs: None, ..add.clone() };
        let view = route_edit(&pool, edit.clone(), "test").await.unwrap();
        assert!(view.paused, "an edit keeps the route paused");
        let RouteSpec::Uplink(u) = route_get(&pool, "plant").await.unwrap().spec else { panic!("an uplink") };
        assert_eq!((u.topic.as_str(), u.from_ms, u.lag_alarm_secs), ("plant.{2}", 0, 5));
        route_edit(&pool, AddRoute { from: "now".into(), ..edit.clone() }, "test").await.unwrap();
        let RouteSpec::Uplink(u) = route_get(&pool, "plant").await.unwrap().spec else { panic!("an uplink") };
        assert!(u.from_ms > 0, "a start given when editing skips what came before it");

        let bad = AddRoute {
            upstream: "nope".into(),
            filter: "a/#/b".into(),
            topic: "bad topic".into(),
            key: "level:0".into(),
            format: "xml".into(),
            from: "yesterday-ish".into(),
            lag_alarm_secs: Some(0),
            ..add.clone()
        };
        let refused = route_edit(&pool, bad, "test").await.unwrap_err();
        let mut got = fields(&refused);
        got.sort_unstable();
        assert_eq!(got, ["filter", "format", "from", "key", "lag_alarm", "topic"], "{refused}");
        let orphan = AddRoute { name: "o".into(), upstream: "nope".into(), ..add.clone() };
        assert_eq!(fields(&route_add(&pool, orphan, "test").await.unwrap_err()), ["upstream"]);
        let new_keep = AddRoute { name: "n".into(), from: "keep".into(), ..add.clone() };
        assert_eq!(fields(&route_add(&pool, new_keep, "test").await.unwrap_err()), ["from"]);
        assert!(matches!(
            route_edit(&pool, AddRoute { name: "gone".into(), ..add }, "test").await,
            Err(OpsError::Config(ConfigError::NoRoute(_)))
        ));

        let down = AddDownlink {
            name: "cmd".into(),
            upstream: "main".into(),
            topic: "commands".into(),
            mqtt_topic: "cmd/{key}".into(),
            qos: 1,
            retain: false,
            as_user: None,
            group: None,
        };
        downlink_add(&pool, down.clone(), "test").await.unwrap();
        let view =
            downlink_edit(&pool, AddDownlink { qos: 2, retain: true, ..down.clone() }, "test").await.unwrap();
        assert!(
            view.options.contains(&"qos=2".to_owned()) && view.options.contains(&"retain=true".to_owned())
        );
        assert!(matches!(
            route_edit(&pool, AddRoute { name: "cmd".into(), ..edit }, "test").await,
            Err(OpsError::Config(ConfigError::WrongKind { .. }))
        ));
        assert!(matches!(
            downlink_edit(&pool, AddDownlink { name: "plant".into(), ..down.clone() }, "test").await,
            Err(OpsError::Config(ConfigError::WrongKind { .. }))
        ));
        let bad = AddDownlink { topic: "a b".into(), mqtt_topic: "cmd/#".into(), qos: 3, ..down };
        let mut got = fields(&downlink_edit(&pool, bad, "test").await.unwrap_err());
        got.sort_unstable();
        assert_eq!(got, ["mqtt_topic", "qos", "topic"]);
        route_pause(&pool, "cmd", "test").await.unwrap();
        assert!(route_list(&pool).await.unwrap().iter().all(|r| r.paused), "downlinks pause too");
        assert_eq!(dead_letters(&pool, None, 10).await.unwrap(), (0, Vec::new()));
    }
}
