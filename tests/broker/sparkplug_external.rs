//! Sparkplug B with an independent implementation: pysparkplug (PyPI) as edge node and host, driven through
//! `tests/python/sparkplug_scenarios.py` in the virtual environment `.ci/setup` makes (pysparkplug pins
//! paho-mqtt < 2, the rest of the suite uses paho-mqtt 2). The scenarios print what they saw as JSON lines; the
//! assertions are here, together with the gateway's own view (`Gateway::sparkplug`).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::durability::start_weir;
use crate::support::{WAIT, eventually};
use weir::app::{self, Gateway};
use weir::config::Config;
use weir::sparkplug::{SparkplugError, Value as Metric};

fn python() -> PathBuf {
    match std::env::var_os("WEIR_SPARKPLUG_PYTHON") {
        Some(p) => p.into(),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/venv-sparkplug/bin/python"),
    }
}

struct Scenario {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Scenario {
    fn start(port: u16, args: &[&str]) -> Scenario {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/sparkplug_scenarios.py");
        let mut child = Command::new(python())
            .arg(script)
            .args(args)
            .args(["--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {:?}: {e}. Run .ci/setup (pysparkplug's venv).", python())
            });
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Scenario { child, lines }
    }

    /// The next JSON line, within [`WAIT`]; `None` once the scenario has ended.
    async fn next(&mut self) -> Option<Value> {
        let line =
            tokio::time::timeout(WAIT, self.lines.next_line()).await.expect("scenario silent").unwrap()?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}")))
    }

    async fn expect(&mut self, event: &str) -> Value {
        loop {
            let line = self.next().await.unwrap_or_else(|| panic!("scenario ended before {event}"));
            if line["event"] == event {
                return line;
            }
        }
    }

    /// Every line until the scenario ends (within [`WAIT`]), and its success.
    async fn all(mut self) -> Vec<Value> {
        let mut lines = Vec::new();
        while let Some(line) = self.next().await {
            lines.push(line);
        }
        let status = tokio::time::timeout(WAIT, self.child.wait()).await.unwrap().unwrap();
        assert!(status.success(), "scenario failed: {status}");
        lines
    }
}

async fn gateway_in(dir: &TempDir) -> (Gateway, u16) {
    gateway_at(dir.path()).await
}

async fn gateway_at(data: &Path) -> (Gateway, u16) {
    let mut config = Config::for_test(data);
    config.broker.sys_interval = None;
    let listeners = app::bind(&config).await.unwrap();
    let gateway = Gateway::start(config, listeners).await.unwrap();
    let port = gateway.local_addr("mqtt").unwrap().port();
    (gateway, port)
}

fn metric(gateway: &Gateway, device: Option<&str>, name: &str) -> Option<(Metric, bool)> {
    let t = gateway.sparkplug().snapshot();
    let node = t.groups.get("Plant")?.get("Edge1")?;
    let metrics = match device {
        None => &node.metrics,
        Some(d) => &node.devices.get(d)?.metrics,
    };
    metrics.get(name).map(|m| (m.value.clone(), m.stale))
}

fn certificates(lines: &[Value]) -> Vec<(String, Value)> {
    let mut certs: Vec<(String, Value)> = lines
        .iter()
        .filter(|l| l["event"] == "certificate")
        .inspect(|l| assert_eq!(l["retain"], true))
        .map(|l| (l["topic"].as_str().unwrap().to_owned(), l["metrics"].clone()))
        .collect();
    certs.sort_by(|a, b| a.0.cmp(&b.0));
    certs
}

#[tokio::test]
async fn pysparkplug_births_data_gaps_rebirth_deaths_certificates_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, port) = gateway_in(&dir).await;
    let mut host = Scenario::start(port, &["deaths", "--wait", "30"]);
    host.expect("ready").await;

    // Births, data by name and by alias alone, a sequence gap.
    let mut edge = Scenario::start(port, &["edge", "--commands", "1", "--die", "--wait", "20"]);
    edge.expect("ready").await;
    eventually("the edge node's data", || async {
        metric(&gateway, None, "Temperature") == Some((Metric::Float(22.0), false))
    })
    .await;
    assert_eq!(metric(&gateway, None, "Counter"), Some((Metric::Int(8), false)), "alias-only NDATA resolved");
    assert_eq!(metric(&gateway, Some("Pump"), "Speed"), Some((Metric::UInt(1600), false)));
    let node = gateway.sparkplug().snapshot().groups["Plant"]["Edge1"].clone();
    assert!(node.online);
    assert_eq!(node.gaps, 1, "{:?}", node.last_gap);
    assert_eq!(node.last_gap.map(|g| g.got - g.expected), Some(2));

    // A rebirth request reaches the edge node; a second one at once is refused by the rate limit. The edge node
    // ends (without DISCONNECT) once it has the command: its will is delivered after this instant.
    let before = weir::timefmt::now_ms();
    let pool = gateway.security().pool().clone();
    gateway.sparkplug().rebirth("Plant", "Edge1", "test:admin", &pool).await.unwrap();
    let again = gateway.sparkplug().rebirth("Plant", "Edge1", "test:admin", &pool).await;
    assert!(matches!(again, Err(SparkplugError::TooSoon { .. })), "{again:?}");
    let ncmd = edge.expect("ncmd").await;
    assert_eq!(ncmd["topic"], "spBv1.0/Plant/NCMD/Edge1");
    assert_eq!(ncmd["metrics"], json!({"Node Control/Rebirth": true}));
    let audit = weir::store::audit_entries(&pool, 10).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "sparkplug.rebirth" && e.detail == "Plant/Edge1"), "{audit:?}");

    // The edge node vanishes: its NDEATH will, stamped with the time it is delivered, matches the birth's bdSeq.
    edge.all().await;
    let death = host.expect("ndeath").await;
    assert!(death["timestamp"].as_i64().is_some_and(|t| t >= before), "{death}");
    assert_eq!(Some(death["bdSeq"].as_u64().unwrap()), node.bd_seq);
    eventually("the node is offline and stale", || async {
        let t = gateway.sparkplug().snapshot();
        let n = &t.groups["Plant"]["Edge1"];
        !n.online && n.metrics.values().all(|m| m.stale) && n.devices["Pump"].metrics["Speed"].stale
    })
    .await;

    // The certificates, decoded by pysparkplug, before and after a restart.
    let before_restart =
        certificates(&Scenario::start(port, &["certs", "--count", "2", "--wait", "10"]).all().await);
    let topics: Vec<&str> = before_restart.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(
        topics,
        [
            "$sparkplug/certificates/spBv1.0/Plant/DBIRTH/Edge1/Pump",
            "$sparkplug/certificates/spBv1.0/Plant/NBIRTH/Edge1"
        ]
    );
    assert_eq!(before_restart[1].1["Temperature"], 20.5);
    drop(host);
    gateway.shutdown().await;

    let (gateway, port) = gateway_in(&dir).await;
    let after_restart =
        certificates(&Scenario::start(port, &["certs", "--count", "2", "--wait", "10"]).all().await);
    assert_eq!(after_restart, before_restart);
    // The births were read back: the node is known, offline (its death came after its birth).
    assert!(!gateway.sparkplug().snapshot().groups["Plant"]["Edge1"].online);
    // An alias-only NDATA after the restart is resolved through the birth read back from the journal.
    Scenario::start(port, &["alias"]).all().await;
    eventually("alias 1 resolved after the restart", || async {
        metric(&gateway, None, "Temperature") == Some((Metric::Float(30.5), false))
    })
    .await;

    // Publishing under $sparkplug/ is dropped; the marker after it arrives alone.
    let forged = Scenario::start(port, &["forge"]).all().await;
    assert_eq!(forged.last().unwrap()["topics"], json!(["forge/marker"]));
    gateway.shutdown().await;
}

/// How many messages the journal in `data` holds on `topic`, read as another process would.
async fn journaled(data: &Path, topic: &str) -> usize {
    let pool = weir::store::open_for_reading(data, weir::store::Database::Journal).await.unwrap();
    let mut q = weir::store::history::HistoryQuery::new(topic);
    q.limit = 1000;
    let n = weir::store::history::query(&pool, &q).await.unwrap().messages.len();
    pool.close().await;
    n
}

/// After a kill -9 the state is rebuilt from the journal with the last values, not only the births: names
/// resolved (the alias-only NDATA too), node and device metrics, stale once the node's will says it is gone.
#[tokio::test]
async fn the_last_metric_values_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut child, addr) = start_weir(&data, "").await;
    let mut edge = Scenario::start(addr.port(), &["edge", "--commands", "1", "--die", "--wait", "30"]);
    edge.expect("ready").await;
    // Everything the edge node sent is committed (three NDATA, one DDATA) before the kill.
    eventually("the data in the journal", || async {
        journaled(&data, "spBv1.0/Plant/NDATA/Edge1").await == 3
            && journaled(&data, "spBv1.0/Plant/DDATA/Edge1/Pump").await == 1
    })
    .await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    let (gateway, _) = gateway_at(&data).await;
    let value = |device, name| metric(&gateway, device, name).map(|(v, _)| v);
    assert_eq!(value(None, "Temperature"), Some(Metric::Float(22.0)), "the last NDATA, not the birth's 20.5");
    assert_eq!(value(None, "Counter"), Some(Metric::Int(8)), "the alias-only NDATA, resolved");
    assert_eq!(value(Some("Pump"), "Speed"), Some(Metric::UInt(1600)), "the last DDATA");
    assert_eq!(gateway.sparkplug().snapshot().groups["Plant"]["Edge1"].unresolved, 0);
    // The edge node was connected at the crash: its will (NDEATH) makes the values stale, and keeps them.
    eventually("the node offline, its values stale", || async {
        let t = gateway.sparkplug().snapshot();
        let n = &t.groups["Plant"]["Edge1"];
        !n.online && n.metrics.values().all(|m| m.stale) && n.devices["Pump"].metrics["Speed"].stale
    })
    .await;
    assert_eq!(value(None, "Temperature"), Some(Metric::Float(22.0)));
    drop(edge);
    gateway.shutdown().await;
}

/// `weir sparkplug rebirth ...` as another process on the gateway's data directory.
async fn weir_sparkplug(data: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["sparkplug", "rebirth"])
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(WAIT * 2, out).await.unwrap().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The command line reaches the running gateway through config.sqlite: the pysparkplug edge node receives the
/// rebirth; a second request within the rate limit, an unknown node, a bad identifier and an unconfirmed
/// request are refused with a clear message, and only the one sent is in the audit log.
#[tokio::test]
async fn weir_sparkplug_rebirth_from_the_command_line_reaches_the_edge_node() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, port) = gateway_in(&dir).await;
    let mut edge = Scenario::start(port, &["edge", "--commands", "1", "--wait", "30"]);
    edge.expect("ready").await;
    eventually("the gateway knows the edge node", || async {
        gateway.sparkplug().snapshot().groups.get("Plant").is_some_and(|g| g.contains_key("Edge1"))
    })
    .await;

    let (ok, err) = weir_sparkplug(dir.path(), &["Plant", "Edge1"]).await;
    assert!(!ok && err.contains("not confirmed: pass --yes"), "{err}");
    let (ok, err) = weir_sparkplug(dir.path(), &["Plant", "Edge1", "--yes"]).await;
    assert!(ok, "{err}");
    assert!(err.contains("rebirth requested from Plant/Edge1"), "{err}");
    let ncmd = edge.expect("ncmd").await;
    assert_eq!(ncmd["topic"], "spBv1.0/Plant/NCMD/Edge1");
    assert_eq!(ncmd["metrics"], json!({"Node Control/Rebirth": true}));

    let (ok, err) = weir_sparkplug(dir.path(), &["Plant", "Edge1", "--yes"]).await;
    assert!(!ok && err.contains("a rebirth was requested from Plant/Edge1") && err.contains("wait"), "{err}");
    let (ok, err) = weir_sparkplug(dir.path(), &["Plant", "Nobody", "--yes"]).await;
    assert!(!ok && err.contains("edge node Plant/Nobody is unknown to the gateway"), "{err}");
    let (ok, err) = weir_sparkplug(dir.path(), &["Plant", "Edge/1", "--yes"]).await;
    assert!(!ok && err.contains("not a valid Sparkplug identifier"), "{err}");

    let audit = weir::store::audit_entries(gateway.security().pool(), 50).await.unwrap();
    let rebirths: Vec<_> = audit.iter().filter(|e| e.action == "sparkplug.rebirth").collect();
    assert_eq!(rebirths.len(), 1, "{audit:?}");
    assert!(rebirths[0].actor.starts_with("cli:") && rebirths[0].detail == "Plant/Edge1", "{audit:?}");
    edge.all().await;
    gateway.shutdown().await;

    // No gateway running: no answer, within the bound, and the request is withdrawn.
    let (ok, err) = weir_sparkplug(dir.path(), &["Plant", "Edge1", "--yes", "--timeout", "1"]).await;
    assert!(
        !ok && err.contains("no answer from the gateway within 1 s") && err.contains("withdrawn"),
        "{err}"
    );
}
