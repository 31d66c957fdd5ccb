//! What each route is doing, judged by acknowledgements and not by sockets: shown by `weir kafka status` and the
//! console (both through [`read`]), published under `$SYS/weir/kafka/...`.
//!
//! **Where the live status is kept, without wearing the SD card.** The running gateway rewrites its report every
//! second, in a place that costs no flash: systemd's `RuntimeDirectory=weir` (`$RUNTIME_DIRECTORY`, a tmpfs), or
//! else `$XDG_RUNTIME_DIR/weir/` (also a tmpfs). Only where neither exists does it fall back to the data
//! directory, and there it writes only when something other than a counter changed (a route's state, error,
//! alarm, dead letters, gap): counters shown from that file may be old, and say so. Where the report is, the
//! data directory's `kafka-status.where` says (one path, written at start-up only when it changes). A reader in
//! the gateway's own process (the console) gets the report from memory, always current, with no file at all.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use serde::{Deserialize, Serialize};

/// The file that holds the latest [`StatusReport`] (in the runtime directory, or the data directory).
pub const STATUS_FILE: &str = "kafka-status.json";
/// In the data directory: the path of the file the running gateway keeps its report in.
pub const STATUS_POINTER: &str = "kafka-status.where";
/// A report rewritten every second that is older than this means the gateway is not running.
const STALE_AFTER_MS: i64 = 5_000;

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
    /// Journal ids lost to the hard cap before this route forwarded them (a gap): counted, never silent. Kept with
    /// the route's cursor in the journal, so the count (and the last gap) outlive a restart.
    pub gap: u64,
    /// The last gap: the first and last journal id lost, and when it was found (unix ms).
    #[serde(default)]
    pub last_gap: Option<(i64, i64, i64)>,
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
    /// Unix ms when the gateway wrote it: with `live`, a stale report means the gateway is not running.
    pub written_ms: i64,
    pub gateway: String,
    pub routes: Vec<RouteStatus>,
    /// The counters are current: the report is rewritten every second (in memory, or in a tmpfs). When false
    /// (the data directory fallback), it was written when something other than a counter last changed.
    #[serde(default)]
    pub live: bool,
    /// The writing process (boot id, pid, start time), to tell whether it still runs when `live` is false.
    #[serde(default)]
    pub process: Option<String>,
}

/// What [`read`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusView {
    /// The gateway that wrote the report still runs.
    pub running: bool,
    pub report: Option<StatusReport>,
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
        let now = crate::timefmt::now_ms();
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

/// The running gateway's report for `data_dir`: from memory in the gateway's own process, else from where the
/// data directory's pointer says (the runtime directory), else from the data directory itself. What the CLI and
/// the console show.
pub fn read(data_dir: &Path) -> StatusView {
    if let Some(report) = registry().lock().unwrap_or_else(PoisonError::into_inner).get(&key(data_dir)) {
        return StatusView { running: true, report: Some(report.clone()) };
    }
    let file = match std::fs::read_to_string(data_dir.join(STATUS_POINTER)) {
        Ok(path) if !path.trim().is_empty() => PathBuf::from(path.trim()),
        _ => data_dir.join(STATUS_FILE),
    };
    let Some(report) = std::fs::read(file).ok().and_then(|b| serde_json::from_slice::<StatusReport>(&b).ok())
    else {
        return StatusView { running: false, report: None };
    };
    let running = match (&report.process, report.live) {
        (Some(p), false) => process_alive(p),
        _ => crate::timefmt::now_ms() - report.written_ms < STALE_AFTER_MS,
    };
    StatusView { running, report: Some(report) }
}

/// The last report the gateway wrote for `data_dir`, wherever it is (kept for callers of the earlier API; prefer
/// [`read`], which also says whether the gateway runs).
pub fn read_report(data_dir: &Path) -> std::io::Result<StatusReport> {
    read(data_dir).report.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
}

/// Writes `report` into the data directory, as a gateway without a runtime directory does (for tests).
#[cfg(all(test, feature = "kafka"))]
pub(crate) fn write_report(data_dir: &Path, report: &StatusReport) -> std::io::Result<()> {
    write_atomically(&data_dir.join(STATUS_FILE), report)
}

/// The reports of the gateways running in this process, by data directory.
fn registry() -> &'static Mutex<HashMap<PathBuf, StatusReport>> {
    static REPORTS: OnceLock<Mutex<HashMap<PathBuf, StatusReport>>> = OnceLock::new();
    REPORTS.get_or_init(Mutex::default)
}

fn key(data_dir: &Path) -> PathBuf {
    std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned())
}

/// Where the live report goes.
#[cfg_attr(not(feature = "kafka"), allow(dead_code))] // used by the supervisor (feature `kafka`)
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Place {
    /// A tmpfs: rewritten every second.
    Runtime(PathBuf),
    /// The data directory (flash): written only when something other than a counter changed.
    DataDir(PathBuf),
}

/// `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`, the first if several), else `$XDG_RUNTIME_DIR/weir/`
/// (named after the data directory, since one user may run several gateways), else the data directory.
#[cfg_attr(not(feature = "kafka"), allow(dead_code))] // used by the supervisor (feature `kafka`)
pub(crate) fn place(data_dir: &Path, env: impl Fn(&str) -> Option<OsString>) -> Place {
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(dirs) = set("RUNTIME_DIRECTORY") {
        let first = dirs.to_string_lossy().split(':').next().unwrap_or_default().to_owned();
        if !first.is_empty() {
            return Place::Runtime(PathBuf::from(first).join(STATUS_FILE));
        }
    }
    if let Some(dir) = set("XDG_RUNTIME_DIR") {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(key(data_dir).to_string_lossy().as_bytes());
        let name: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        return Place::Runtime(PathBuf::from(dir).join("weir").join(format!("kafka-status-{name}.json")));
    }
    Place::DataDir(data_dir.join(STATUS_FILE))
}

/// Keeps the running gateway's report where [`read`] finds it (see the module's documentation).
#[cfg_attr(not(feature = "kafka"), allow(dead_code))] // used by the supervisor (feature `kafka`)
#[derive(Debug)]
pub(crate) struct StatusWriter {
    data_dir: PathBuf,
    /// `data_dir` as the process-wide map knows it.
    key: PathBuf,
    place: Place,
    process: Option<String>,
    /// The last report written to the data directory, counters cleared: what a change is judged against.
    written: Option<StatusReport>,
    /// The place is announced (pointer written) and usable.
    ready: bool,
}

#[cfg_attr(not(feature = "kafka"), allow(dead_code))] // used by the supervisor (feature `kafka`)
impl StatusWriter {
    pub(crate) fn new(data_dir: &Path, place: Place) -> StatusWriter {
        StatusWriter {
            data_dir: data_dir.to_owned(),
            key: key(data_dir),
            place,
            process: process_identity(std::process::id()),
            written: None,
            ready: false,
        }
    }

    /// Publishes the report: to this process's readers always, to the file when the place calls for it. Returns
    /// whether a file was written.
    pub(crate) fn write(&mut self, report: &mut StatusReport) -> std::io::Result<bool> {
        report.process = self.process.clone();
        report.live = matches!(self.place, Place::Runtime(_));
        registry().lock().unwrap_or_else(PoisonError::into_inner).insert(self.key.clone(), report.clone());
        if !self.ready {
            self.announce()?;
        }
        let file = match &self.place {
            Place::Runtime(file) => file.clone(),
            Place::DataDir(file) => {
                let significant = without_counters(report);
                if self.written.as_ref() == Some(&significant) {
                    return Ok(false);
                }
                self.written = Some(significant);
                file.clone()
            }
        };
        write_atomically(&file, report)?;
        Ok(true)
    }

    /// No routes, or stopping: the report goes (from memory and from the file), the pointer stays.
    pub(crate) fn clear(&mut self) {
        registry().lock().unwrap_or_else(PoisonError::into_inner).remove(&self.key);
        let file = match &self.place {
            Place::Runtime(f) | Place::DataDir(f) => f,
        };
        let _ = std::fs::remove_file(file);
        self.written = None;
    }

    /// Makes the runtime directory (0700) and writes the pointer in the data directory, only if it changed, so
    /// that a gateway that always starts the same way writes it once. A runtime directory that cannot be made
    /// falls back to the data directory.
    fn announce(&mut self) -> std::io::Result<()> {
        self.ready = true;
        let pointer = self.data_dir.join(STATUS_POINTER);
        let target = match &self.place {
            Place::Runtime(file) => {
                let made = file.parent().map_or(Ok(()), |dir| {
                    use std::os::unix::fs::DirBuilderExt as _;
                    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
                });
                if let Err(e) = made {
                    tracing::warn!(
                        "Kafka status: {} is not usable ({e}); using the data directory",
                        file.display()
                    );
                    self.place = Place::DataDir(self.data_dir.join(STATUS_FILE));
                    return self.announce();
                }
                Some(file.clone())
            }
            Place::DataDir(_) => None,
        };
        match target {
            Some(file) => {
                let text = file.display().to_string();
                if std::fs::read_to_string(&pointer).ok().as_deref() != Some(text.as_str()) {
                    crate::files::write_atomic(&pointer, text.as_bytes(), 0o600)
                        .map_err(std::io::Error::other)?;
                }
                // A report left in the data directory by an earlier fallback would only mislead.
                let _ = std::fs::remove_file(self.data_dir.join(STATUS_FILE));
            }
            None => {
                if pointer.exists() {
                    std::fs::remove_file(&pointer)?;
                }
            }
        }
        Ok(())
    }
}

/// The report with its counters cleared (and errors without their times): what, changed, is worth a write to
/// flash.
fn without_counters(report: &StatusReport) -> StatusReport {
    StatusReport {
        written_ms: 0,
        routes: report
            .routes
            .iter()
            .map(|r| RouteStatus {
                forwarded: 0,
                skipped_duplicates: 0,
                position: 0,
                lag_messages: 0,
                lag_ms: 0,
                rate: 0.0,
                last_ack_ms: None,
                last_error_ms: None,
                ..r.clone()
            })
            .collect(),
        ..report.clone()
    }
}

/// Temporary file, then rename, so that a reader never sees half of it. Not synced: it describes a running
/// process and is worthless after a power cut anyway.
fn write_atomically(path: &Path, report: &StatusReport) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let json = serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

/// `boot-id/pid/start-time` of a process (Linux), which no other process has, even after a reboot or with the
/// pid reused.
fn process_identity(pid: u32) -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (start time); the command name (field 2) is in parentheses and may hold spaces.
    let start = stat.rsplit_once(')')?.1.split_whitespace().nth(19)?;
    Some(format!("{}/{pid}/{start}", boot.trim()))
}

fn process_alive(identity: &str) -> bool {
    let pid = identity.split('/').nth(1).and_then(|p| p.parse::<u32>().ok());
    pid.and_then(process_identity).is_some_and(|now| now == identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(state: RouteState, forwarded: u64) -> StatusReport {
        StatusReport {
            written_ms: crate::timefmt::now_ms(),
            gateway: "gw".into(),
            routes: vec![RouteStatus { name: "r".into(), state, forwarded, ..RouteStatus::default() }],
            ..StatusReport::default()
        }
    }

    #[test]
    fn the_place_is_a_runtime_directory_when_there_is_one() {
        let data = Path::new("/var/lib/weir");
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| OsString::from(v))
        };
        assert_eq!(
            place(
                data,
                env(&[("RUNTIME_DIRECTORY", "/run/weir:/run/other"), ("XDG_RUNTIME_DIR", "/run/user/0")])
            ),
            Place::Runtime("/run/weir/kafka-status.json".into())
        );
        let Place::Runtime(xdg) = place(data, env(&[("XDG_RUNTIME_DIR", "/run/user/1000")])) else {
            panic!("XDG_RUNTIME_DIR is a runtime directory")
        };
        assert!(xdg.to_string_lossy().starts_with("/run/user/1000/weir/kafka-status-"), "{}", xdg.display());
        let Place::Runtime(other) =
            place(Path::new("/srv/weir2"), env(&[("XDG_RUNTIME_DIR", "/run/user/1000")]))
        else {
            panic!()
        };
        assert_ne!(xdg, other, "two gateways of one user keep two reports");
        assert_eq!(place(data, env(&[("RUNTIME_DIRECTORY", "")])), Place::DataDir(data.join(STATUS_FILE)));
    }

    #[test]
    fn in_a_runtime_directory_every_report_is_written_and_found_through_the_pointer() {
        let data = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        let file = run.path().join("weir").join(STATUS_FILE);
        let mut writer = StatusWriter::new(data.path(), Place::Runtime(file.clone()));
        for n in 0..3 {
            assert!(writer.write(&mut report(RouteState::Forwarding, n)).unwrap(), "written every time");
        }
        assert!(!data.path().join(STATUS_FILE).exists(), "nothing on flash but the pointer");
        assert_eq!(
            std::fs::read_to_string(data.path().join(STATUS_POINTER)).unwrap(),
            file.display().to_string()
        );
        // Another process reads it from the file (this one would find it in memory).
        registry().lock().unwrap().remove(&key(data.path()));
        let view = read(data.path());
        assert!(view.running);
        let report = view.report.unwrap();
        assert!(report.live);
        assert_eq!(report.routes[0].forwarded, 2);
        writer.clear();
        assert!(!read(data.path()).running);
        assert!(read(data.path()).report.is_none());
    }

    #[test]
    fn in_the_data_directory_only_what_is_not_a_counter_is_written() {
        let data = tempfile::tempdir().unwrap();
        let mut writer = StatusWriter::new(data.path(), Place::DataDir(data.path().join(STATUS_FILE)));
        assert!(writer.write(&mut report(RouteState::Forwarding, 1)).unwrap());
        assert!(!writer.write(&mut report(RouteState::Forwarding, 2)).unwrap(), "a counter alone: no write");
        let mut errored = report(RouteState::Forwarding, 3);
        errored.routes[0].last_error = Some("broker down".into());
        errored.routes[0].last_error_ms = Some(1);
        assert!(writer.write(&mut errored.clone()).unwrap());
        errored.routes[0].last_error_ms = Some(2);
        assert!(!writer.write(&mut errored).unwrap(), "the same error again: no write");
        assert!(writer.write(&mut report(RouteState::Stalled, 4)).unwrap());
        assert!(!data.path().join(STATUS_POINTER).exists());
        // In memory, this process sees the current counters; another process sees the file's, and that the
        // gateway runs (this process).
        assert_eq!(read(data.path()).report.unwrap().routes[0].forwarded, 4);
        registry().lock().unwrap().remove(&key(data.path()));
        let view = read(data.path());
        assert!(view.running, "the writing process is alive");
        let report = view.report.unwrap();
        assert!(!report.live);
        assert_eq!(report.routes[0].state, RouteState::Stalled);
        // A process that is gone (or a pid reused after a reboot) is not running.
        let mut dead = report.clone();
        dead.process = Some("not-this-boot/1/1".into());
        std::fs::write(data.path().join(STATUS_FILE), serde_json::to_vec(&dead).unwrap()).unwrap();
        assert!(!read(data.path()).running);
    }
}
