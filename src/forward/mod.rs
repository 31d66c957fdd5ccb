//! Forwarding to Apache Kafka through the journal (uplink, MQTT → Kafka) and back (downlink, Kafka → MQTT).
//!
//! - [`config`]: upstreams and routes, validated and stored in `config.sqlite`.
//! - [`ops`]: the management operations the CLI and the console call, the connection test among them.
//! - [`status`]: each route's health, judged by acknowledgements; `weir kafka status` reads it.
//! - `uplink`, `downlink`, `kafka` (behind the default-on cargo feature `kafka`): the routes themselves, on
//!   librdkafka.
//!
//! [`run`] owns the running routes: one task per route, started, stopped and restarted as the stored
//! configuration changes (polled through `config_version`, like users and rules), so that a change made by
//! `weir kafka ...` in another process applies within a second. See ARCHITECTURE.md, "Forwarding to Kafka".

pub mod config;
pub mod ops;
// The routes that use it need librdkafka (the `kafka` feature).
#[cfg_attr(not(feature = "kafka"), allow(dead_code))]
pub(crate) mod settings;
pub mod status;

#[cfg(feature = "kafka")]
mod downlink;
#[cfg(feature = "kafka")]
mod format;
#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "kafka")]
mod uplink;

use std::path::PathBuf;
use std::time::Duration;

use sqlx::SqlitePool;
use tokio::sync::watch;

use crate::mqtt::broker::Broker;
use crate::shutdown::StopToken;
use crate::store::Journal;

/// Whether this binary forwards to Kafka (the cargo feature `kafka`, on by default). Without it the
/// configuration can still be read and written, but no route runs and a connection cannot be tested.
pub const BUILT: bool = cfg!(feature = "kafka");

/// How long stopping waits for the route tasks (each commits its cursor first).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the Kafka forwarder until `stop` fires (a task of the lifecycle's forwarders stage): the supervisor
/// keeps the routes in step with `config.sqlite`; when stopped, every route sends nothing more, waits a bounded
/// time for acknowledgements and commits its cursor. Uplink routes need the journal (they read through durable
/// cursors); without one (durability off) they are shown in error and do not run.
pub async fn run(
    journal: Option<Journal>,
    broker: Broker,
    config_db: SqlitePool,
    data_dir: PathBuf,
    mut stop: StopToken,
) {
    let (stopping, stopped) = watch::channel(false);
    let task = tokio::spawn(supervise(journal, broker, config_db, data_dir, stopped));
    stop.stopped().await;
    let _ = stopping.send(true);
    if tokio::time::timeout(STOP_TIMEOUT + Duration::from_secs(1), task).await.is_err() {
        tracing::warn!("the Kafka forwarder did not stop within its timeout");
    }
}

#[cfg(not(feature = "kafka"))]
async fn supervise(
    _journal: Option<Journal>,
    _broker: Broker,
    config_db: SqlitePool,
    _data_dir: PathBuf,
    _stop: watch::Receiver<bool>,
) {
    if let Ok(c) = config::load(&config_db).await
        && !c.routes.is_empty()
    {
        tracing::error!(
            routes = c.routes.len(),
            "Kafka routes are configured, but this weir was built without Kafka"
        );
    }
}

#[cfg(feature = "kafka")]
async fn supervise(
    journal: Option<Journal>,
    broker: Broker,
    config_db: SqlitePool,
    data_dir: PathBuf,
    mut stop: watch::Receiver<bool>,
) {
    use std::collections::HashMap;

    use self::config::{RouteSpec, Upstream};
    use self::status::{RouteState, StatusBoard, StatusReport};

    let gateway = loop {
        match config::gateway_id(&config_db).await {
            Ok(g) => break g,
            Err(e) => tracing::error!("Kafka forwarder: {e}"),
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    let board = StatusBoard::default();
    let mut status_file =
        status::StatusWriter::new(&data_dir, status::place(&data_dir, |v| std::env::var_os(v)));
    struct Running {
        spec: RouteSpec,
        upstream: Upstream,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    }
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut version: Option<i64> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sys_every = broker.config().sys_interval;
    let mut last_sys = tokio::time::Instant::now();
    let mut reported = false;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tick.tick() => {}
        }
        let current: Option<i64> =
            sqlx::query_scalar("SELECT version FROM config_version").fetch_one(&config_db).await.ok();
        if current.is_some() && current != version {
            version = current;
            let wanted = match config::load(&config_db).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("Kafka forwarder: reading the configuration: {e}");
                    continue;
                }
            };
            // Stop what is gone, paused or changed.
            let to_stop: Vec<String> = running
                .iter()
                .filter(|(_, r)| {
                    !wanted.routes.iter().any(|w| {
                        !w.paused
                            && w.spec == r.spec
                            && wanted.upstream(w.spec.upstream()) == Some(&r.upstream)
                    })
                })
                .map(|(name, _)| name.clone())
                .collect();
            for name in to_stop {
                if let Some(r) = running.remove(&name) {
                    tracing::info!(route = %name, "Kafka route stopping (removed, paused or changed)");
                    let _ = r.stop.send(true);
                    if tokio::time::timeout(STOP_TIMEOUT, r.task).await.is_err() {
                        tracing::warn!(route = %name, "a Kafka route did not stop within its timeout");
                    }
                }
            }
            // Forget routes that no longer exist: their status, and their cursor (which holds the journal).
            for gone in board
                .snapshot()
                .into_iter()
                .filter(|s| !wanted.routes.iter().any(|w| w.spec.name() == s.name))
            {
                board.remove(&gone.name);
            }
            if let Some(j) = &journal {
                release_cursors(j, &wanted).await;
            }
            for route in &wanted.routes {
                let name = route.spec.name().to_owned();
                board.update(&name, |s| {
                    s.kind = match route.spec {
                        RouteSpec::Uplink(_) => "uplink".into(),
                        RouteSpec::Downlink(_) => "downlink".into(),
                    };
                    s.upstream = route.spec.upstream().to_owned();
                });
                if route.paused {
                    board.update(&name, |s| s.state = RouteState::Paused);
                    // A running route shows the gaps recorded with its cursor when it opens it; a paused one
                    // shows them from here, after a restart as well.
                    if let (RouteSpec::Uplink(_), Some(j)) = (&route.spec, &journal) {
                        match j.recorded_gaps(&uplink::UplinkRoute::cursor_name(&name)).await {
                            Ok(g) => board.update(&name, |s| {
                                s.gap = g.total;
                                s.last_gap = g.last;
                            }),
                            Err(e) => tracing::warn!(route = %name, "reading the route's recorded gaps: {e}"),
                        }
                    }
                    continue;
                }
                if running.contains_key(&name) {
                    continue;
                }
                let Some(upstream) = wanted.upstream(route.spec.upstream()).cloned() else {
                    board.error(&name, &format!("no upstream named {:?}", route.spec.upstream()));
                    board.update(&name, |s| s.state = RouteState::Error);
                    continue;
                };
                let (route_stop, route_stopped) = watch::channel(false);
                let task = match &route.spec {
                    RouteSpec::Uplink(spec) => {
                        let Some(journal) = journal.clone() else {
                            board.error(&name, "uplink routes need the journal (journal durability is off)");
                            board.update(&name, |s| s.state = RouteState::Error);
                            continue;
                        };
                        let r = uplink::UplinkRoute {
                            spec: spec.clone(),
                            upstream: upstream.clone(),
                            journal,
                            config_db: config_db.clone(),
                            gateway: gateway.clone(),
                            board: board.clone(),
                        };
                        tokio::spawn(r.run(route_stopped))
                    }
                    RouteSpec::Downlink(spec) => {
                        let r = downlink::DownlinkRoute {
                            spec: spec.clone(),
                            upstream: upstream.clone(),
                            broker: broker.clone(),
                            config_db: config_db.clone(),
                            gateway: gateway.clone(),
                            board: board.clone(),
                        };
                        tokio::spawn(r.run(route_stopped))
                    }
                };
                tracing::info!(route = %name, upstream = %upstream.name, "Kafka route started");
                running.insert(name, Running { spec: route.spec.clone(), upstream, stop: route_stop, task });
            }
        }
        let mut routes = board.snapshot();
        if let Some(j) = &journal {
            let newest: Option<i64> =
                sqlx::query_scalar("SELECT max(id) FROM messages").fetch_one(j.pool()).await.ok().flatten();
            for r in routes.iter_mut().filter(|r| r.kind == "uplink") {
                r.lag_messages = u64::try_from(newest.unwrap_or(0) - r.position).unwrap_or(0);
            }
        }
        let mut report = StatusReport {
            written_ms: crate::timefmt::now_ms(),
            gateway: gateway.clone(),
            routes,
            ..StatusReport::default()
        };
        // Without routes there is nothing to report, and no reason to write a file every second.
        if report.routes.is_empty() {
            if std::mem::take(&mut reported) {
                status_file.clear();
            }
            continue;
        }
        reported = true;
        if let Err(e) = status_file.write(&mut report) {
            tracing::warn!("writing the Kafka status: {e}");
        }
        if let Some(every) = sys_every
            && last_sys.elapsed() >= every
        {
            last_sys = tokio::time::Instant::now();
            publish_metrics(&broker, &report).await;
        }
    }
    for r in running.values() {
        let _ = r.stop.send(true);
    }
    for (name, r) in running {
        if tokio::time::timeout(STOP_TIMEOUT, r.task).await.is_err() {
            tracing::warn!(route = %name, "a Kafka route did not stop within its timeout");
        }
    }
    status_file.clear();
}

/// Deletes the cursors of uplink routes that no longer exist, so that retention may prune what they held.
#[cfg(feature = "kafka")]
async fn release_cursors(journal: &Journal, wanted: &config::ForwardConfig) {
    let names: Vec<String> = match sqlx::query_scalar("SELECT name FROM cursors WHERE name LIKE 'kafka:%'")
        .fetch_all(journal.pool())
        .await
    {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("reading the Kafka cursors: {e}");
            return;
        }
    };
    for name in names {
        let route = name.trim_start_matches("kafka:");
        let exists =
            wanted.routes.iter().any(|r| matches!(&r.spec, config::RouteSpec::Uplink(u) if u.name == route));
        if !exists {
            match journal.delete_cursor(&name).await {
                Ok(_) => {
                    tracing::info!(cursor = %name, "Kafka route deleted: its journal cursor is released")
                }
                Err(e) => tracing::warn!(cursor = %name, "releasing the cursor: {e}"),
            }
        }
    }
}

/// `$SYS/weir/kafka/<route>/<metric>`, as plain numbers or words.
#[cfg(feature = "kafka")]
async fn publish_metrics(broker: &Broker, report: &status::StatusReport) {
    use crate::mqtt::broker::Message;
    use crate::mqtt::codec::QoS;
    for r in &report.routes {
        let metrics = [
            ("state", r.state.as_str().to_owned()),
            ("forwarded", r.forwarded.to_string()),
            ("dead_letters", r.dead_letters.to_string()),
            ("skipped_duplicates", r.skipped_duplicates.to_string()),
            ("lag_messages", r.lag_messages.to_string()),
            ("lag_seconds", format!("{:.3}", r.lag_ms as f64 / 1000.0)),
            ("rate", format!("{:.1}", r.rate)),
            ("gap", r.gap.to_string()),
        ];
        for (metric, value) in metrics {
            let topic = format!("$SYS/weir/kafka/{}/{metric}", r.name);
            if broker.publish(Message::new(&topic, value, QoS::AtMostOnce, false)).await.is_err() {
                return;
            }
        }
    }
}
