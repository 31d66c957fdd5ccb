//! The management operations on Kafka forwarding, one typed request and result per action: what `weir kafka
//! ...` calls, and what the console will call. Results never carry a secret.

use std::path::{Path, PathBuf};

use serde::Serialize;
use sqlx::{Row, SqlitePool};

use super::config::{
    self, Compression, ConfigError, Downlink, KeySpec, RouteSpec, Sasl, SaslMechanism, Uplink, Upstream,
    ValueFormat, now_ms,
};
use super::status;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("configuration database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Invalid(String),
}

/// `weir kafka upstream set`.
#[derive(Debug, Clone, Default)]
pub struct SetUpstream {
    pub name: String,
    /// Comma-separated `HOST:PORT` list, as given.
    pub bootstrap: String,
    pub tls: bool,
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub sasl_mechanism: Option<String>,
    pub sasl_user: Option<String>,
    /// Read from standard input by the CLI, never from the command line.
    pub sasl_password: Option<String>,
    pub compression: Option<String>,
    /// The largest record sent (librdkafka's `message.max.bytes`); librdkafka's default when `None`.
    pub max_message_bytes: Option<u32>,
}

/// An upstream as shown: the SASL password is never included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamView {
    pub name: String,
    pub bootstrap: Vec<String>,
    pub tls: bool,
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
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
            client_cert: u.client_cert.clone(),
            sasl_mechanism: u.sasl.as_ref().map(|s| s.mechanism.as_str().to_owned()),
            sasl_user: u.sasl.as_ref().map(|s| s.username.clone()),
            compression: u.compression.as_str().to_owned(),
            max_message_bytes: u.max_message_bytes,
        }
    }
}

pub async fn upstream_set(
    pool: &SqlitePool,
    request: SetUpstream,
    actor: &str,
) -> Result<UpstreamView, OpsError> {
    let sasl = match (request.sasl_mechanism, request.sasl_user, request.sasl_password) {
        (None, None, None) => None,
        (Some(m), Some(username), Some(password)) => {
            Some(Sasl { mechanism: SaslMechanism::parse(&m)?, username, password })
        }
        _ => {
            return Err(OpsError::Invalid(
                "SASL needs --sasl-mechanism, --sasl-user and --sasl-password-stdin together".into(),
            ));
        }
    };
    let upstream = Upstream {
        name: request.name,
        bootstrap: request
            .bootstrap
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        tls: request.tls,
        ca: request.ca,
        client_cert: request.client_cert,
        client_key: request.client_key,
        sasl,
        compression: match request.compression {
            Some(c) => Compression::parse(&c)?,
            None => Compression::default(),
        },
        max_message_bytes: request.max_message_bytes,
    };
    for file in [&upstream.ca, &upstream.client_cert, &upstream.client_key].into_iter().flatten() {
        if !file.is_file() {
            return Err(OpsError::Invalid(format!("{} is not a readable file", file.display())));
        }
    }
    config::set_upstream(pool, &upstream).await?;
    let _ = crate::store::audit(pool, actor, "kafka.upstream.set", &upstream.name).await;
    Ok(UpstreamView::from(&upstream))
}

pub async fn upstream_list(pool: &SqlitePool) -> Result<Vec<UpstreamView>, OpsError> {
    Ok(config::load(pool).await?.upstreams.iter().map(UpstreamView::from).collect())
}

pub async fn upstream_del(pool: &SqlitePool, name: &str, actor: &str) -> Result<(), OpsError> {
    config::delete_upstream(pool, name).await?;
    let _ = crate::store::audit(pool, actor, "kafka.upstream.del", name).await;
    Ok(())
}

/// `weir kafka route add`.
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
    /// `now`, `oldest`, or a time as `weir history --since` takes it.
    pub from: String,
    pub lag_alarm_secs: Option<u64>,
}

/// `weir kafka downlink add`.
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
    let now = now_ms();
    let (from_ms, from_now) = match request.from.as_str() {
        "now" => (now, true),
        "oldest" => (0, false),
        other => (crate::timefmt::parse(other, now).map_err(OpsError::Invalid)?, false),
    };
    let spec = RouteSpec::Uplink(Uplink {
        name: request.name,
        upstream: request.upstream,
        filter: request.filter,
        topic: request.topic,
        key: KeySpec::parse(&request.key)?,
        format: ValueFormat::parse(&request.format)?,
        from_ms,
        from_now,
        lag_alarm_secs: request.lag_alarm_secs.unwrap_or(60),
    });
    config::add_route(pool, &spec).await?;
    let _ = crate::store::audit(pool, actor, "kafka.route.add", spec.name()).await;
    Ok(RouteView::new(&spec, false))
}

pub async fn downlink_add(
    pool: &SqlitePool,
    request: AddDownlink,
    actor: &str,
) -> Result<RouteView, OpsError> {
    let spec = RouteSpec::Downlink(Downlink {
        name: request.name,
        upstream: request.upstream,
        topic: request.topic,
        mqtt_topic: request.mqtt_topic,
        qos: request.qos,
        retain: request.retain,
        as_user: request.as_user,
        group: request.group,
    });
    config::add_route(pool, &spec).await?;
    let _ = crate::store::audit(pool, actor, "kafka.downlink.add", spec.name()).await;
    Ok(RouteView::new(&spec, false))
}

pub async fn route_list(pool: &SqlitePool) -> Result<Vec<RouteView>, OpsError> {
    Ok(config::load(pool).await?.routes.iter().map(|r| RouteView::new(&r.spec, r.paused)).collect())
}

pub async fn route_show(
    pool: &SqlitePool,
    data_dir: &Path,
    name: &str,
    limit: i64,
) -> Result<RouteDetails, OpsError> {
    let config = config::load(pool).await?;
    let Some(route) = config.routes.iter().find(|r| r.spec.name() == name) else {
        return Err(ConfigError::NoRoute(name.to_owned()).into());
    };
    let dead_letter_count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM kafka_dead_letters WHERE route = ?")
            .bind(name)
            .fetch_one(pool)
            .await?;
    let rows = sqlx::query(
        "SELECT id, ts, journal_id, source, destination, reason, length(payload) FROM kafka_dead_letters \
         WHERE route = ? ORDER BY id DESC LIMIT ?",
    )
    .bind(name)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut dead_letters = Vec::with_capacity(rows.len());
    for row in rows {
        dead_letters.push(DeadLetter {
            id: row.try_get(0)?,
            ts: row.try_get(1)?,
            journal_id: row.try_get(2)?,
            source: row.try_get(3)?,
            destination: row.try_get(4)?,
            reason: row.try_get(5)?,
            payload_bytes: usize::try_from(row.try_get::<i64, _>(6)?).unwrap_or(0),
        });
    }
    let status = status(data_dir).report.and_then(|r| r.routes.into_iter().find(|s| s.name == name));
    Ok(RouteDetails {
        route: RouteView::new(&route.spec, route.paused),
        dead_letter_count,
        dead_letters,
        status,
    })
}

pub async fn route_pause(pool: &SqlitePool, name: &str, actor: &str) -> Result<(), OpsError> {
    config::set_paused(pool, name, true).await?;
    let _ = crate::store::audit(pool, actor, "kafka.route.pause", name).await;
    Ok(())
}

pub async fn route_resume(pool: &SqlitePool, name: &str, actor: &str) -> Result<(), OpsError> {
    config::set_paused(pool, name, false).await?;
    let _ = crate::store::audit(pool, actor, "kafka.route.resume", name).await;
    Ok(())
}

pub async fn route_del(pool: &SqlitePool, name: &str, actor: &str) -> Result<(), OpsError> {
    config::delete_route(pool, name).await?;
    let _ = crate::store::audit(pool, actor, "kafka.route.del", name).await;
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
        return Err(OpsError::Invalid(format!(
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
        return Err(OpsError::Invalid(format!("route {name} has no dead letter {id}")));
    }
    if rows.is_empty() {
        return Ok(ReplayReport { sent: 0, kept: Vec::new() });
    }
    let journal = crate::store::open_for_reading(data_dir, crate::store::Database::Journal)
        .await
        .map_err(|e| OpsError::Invalid(format!("the journal: {e}")))?;
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
        .map_err(|e| OpsError::Invalid(format!("replay: {e}")))?;
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
    Err(OpsError::Invalid("this weir was built without Kafka".into()))
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
}
