//! What each route is doing, judged by acknowledgements and not by sockets: shown by `weir kafka status` (from a
//! file the running gateway rewrites every second), published under `$SYS/weir/kafka/...`, and kept for the
//! console's metrics endpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

/// The file in the data directory that holds the latest [`StatusReport`].
pub const STATUS_FILE: &str = "kafka-status.json";

/// With no acknowledgement for this long while records wait, a route is `stalled`.
#[cfg_attr(not(feature = "kafka"), allow(dead_code))] // used by the routes (feature `kafka`)
pub(crate) const STALL_AFTER_MS: i64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RouteState {
    /// Starting: connecting, reading what is already in Kafka.
    #[default]
    Starting,
    /// Nothing waits to be forwarded.
    Idle,
    /// Records are flowing and acknowledged.
    Forwarding,
    /// Records wait and no acknowledgement came for a while: an outage, or a refusal (see the last error).
    Stalled,
    /// Failed to start or lost its client; retried with back-off (see the last error).
    Error,
    Paused,
}

impl RouteState {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteState::Starting => "starting",
            RouteState::Idle => "idle",
            RouteState::Forwarding => "forwarding",
            RouteState::Stalled => "stalled",
            RouteState::Error => "error",
            RouteState::Paused => "paused",
        }
    }
}

/// One route's state, as shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RouteStatus {
    pub name: String,
    /// "uplink" or "downlink".
    pub kind: String,
    pub upstream: String,
    pub state: RouteState,
    /// Records acknowledged by Kafka (uplink) or published into the journal (downlink), since the gateway started.
    pub forwarded: u64,
    /// Records found already in Kafka at start-up and not sent again.
    pub skipped_duplicates: u64,
    pub dead_letters: u64,
    /// Journal ids lost to the hard cap before this route forwarded them (a gap): counted, never silent.
    pub gap: u64,
    /// Uplink: the journal id everything up to which is done with (the cursor).
    pub position: i64,
    /// Uplink: journal entries after the cursor (all topics: an upper bound on what this route still has to
    /// forward).
    pub lag_messages: u64,
    /// Age of the oldest record read and not yet acknowledged, in milliseconds.
    pub lag_ms: i64,
    /// Records per second over the last interval.
    pub rate: f64,
    /// Unix ms of the last acknowledgement.
    pub last_ack_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<i64>,
    /// The lag alarm is raised (oldest unforwarded older than the route's threshold).
    pub lag_alarm: bool,
}

/// What `weir kafka status` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StatusReport {
    /// Unix ms when the gateway wrote it: a stale report means the gateway is not running.
    pub written_ms: i64,
    pub gateway: String,
    pub routes: Vec<RouteStatus>,
}

/// Every route's status, shared by the route tasks (each writes its own) and the reporter.
#[cfg_attr(not(feature = "kafka"), allow(dead_code))] // used by the routes (feature `kafka`)
#[derive(Debug, Clone, Default)]
pub(crate) struct StatusBoard {
    routes: Arc<Mutex<BTreeMap<String, RouteStatus>>>,
}

#[cfg_attr(not(feature = "kafka"), allow(dead_code))] // used by the routes (feature `kafka`)
impl StatusBoard {
    /// Changes one route's status. Never held across an await: the closure is synchronous.
    pub(crate) fn update(&self, route: &str, change: impl FnOnce(&mut RouteStatus)) {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let status = routes
            .entry(route.to_owned())
            .or_insert_with(|| RouteStatus { name: route.to_owned(), ..RouteStatus::default() });
        change(status);
    }

    pub(crate) fn error(&self, route: &str, error: &str) {
        let now = super::config::now_ms();
        self.update(route, |s| {
            s.last_error = Some(error.to_owned());
            s.last_error_ms = Some(now);
        });
    }

    pub(crate) fn remove(&self, route: &str) {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner).remove(route);
    }

    pub(crate) fn snapshot(&self) -> Vec<RouteStatus> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }
}

/// Writes the report atomically (temporary file, then rename) so that a reader never sees half of it. Not
/// synced: it describes a running process and is worthless after a power cut anyway.
#[cfg_attr(not(feature = "kafka"), allow(dead_code))] // used by the routes (feature `kafka`)
pub(crate) fn write_report(data_dir: &Path, report: &StatusReport) -> std::io::Result<()> {
    let path = data_dir.join(STATUS_FILE);
    let tmp = data_dir.join(format!("{STATUS_FILE}.tmp"));
    let json = serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

/// Reads the last report the gateway wrote in `data_dir`.
pub fn read_report(data_dir: &Path) -> std::io::Result<StatusReport> {
    let path: PathBuf = data_dir.join(STATUS_FILE);
    let bytes = std::fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}
