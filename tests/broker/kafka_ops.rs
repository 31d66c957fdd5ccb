//! Kafka forwarding, the operator's side: where the live status is kept (no flash wear), Sparkplug B routes,
//! replaying dead letters, gaps at the journal's hard cap, and a long outage under load. Against tansu 0.6 and
//! confluent-kafka, like `kafka.rs`, whose helpers these use.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use prost::Message as _;
use tokio::process::Command;

use weir::forward::ops;
use weir::forward::status::{RouteState, STATUS_FILE, STATUS_POINTER};
use weir::sparkplug::proto::{DataType, Metric, MetricValue, Payload};

use crate::kafka::{
    KAFKA_WAIT, Tansu, add_upstream, check_exact, config_db, keys, publish_qos1, publish_qos1_padded,
    read_all, start_gateway, until_forwarded_all, until_status, uplink, weir_cli,
};
use crate::proxy::Fault;
use crate::support::TestGateway;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

async fn kafka_status_cli(data: &Path) -> String {
    let out =
        Command::new(WEIR).args(["kafka", "--data-dir"]).arg(data).arg("status").output().await.unwrap();
    assert!(out.status.success(), "weir kafka status: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Waits (bounded) until `weir kafka status`'s report satisfies `check`.
async fn until_report(data: &Path, what: &str, check: impl Fn(&weir::forward::status::StatusReport) -> bool) {
    let deadline = Instant::now() + KAFKA_WAIT;
    loop {
        let view = ops::status(data);
        if view.running && view.report.as_ref().is_some_and(&check) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last {view:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_status_lives_in_the_runtime_directory_and_not_on_flash() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    weir_cli(&data, &["upstream", "set", "main", "--bootstrap", &nowhere]).await;
    let route = ["route", "add", "r", "--upstream", "main", "--filter", "a/#", "--topic", "t"];
    weir_cli(&data, &route).await;
    weir_cli(&data, &["route", "pause", "r"]).await;

    // Under systemd (RuntimeDirectory=weir): rewritten every second in the tmpfs, only a pointer on flash.
    let (mut child, _) = crate::durability::start_weir_env(&data, "", &[("RUNTIME_DIRECTORY", &run)]).await;
    until_report(&data, "the paused route", |r| {
        r.live && r.routes.iter().any(|s| s.state == RouteState::Paused)
    })
    .await;
    let first = ops::status(&data).report.unwrap().written_ms;
    until_report(&data, "a rewritten report", |r| r.written_ms > first).await;
    assert!(run.join(STATUS_FILE).exists());
    assert!(!data.join(STATUS_FILE).exists(), "no status in the data directory");
    assert_eq!(
        std::fs::read_to_string(data.join(STATUS_POINTER)).unwrap(),
        run.join(STATUS_FILE).display().to_string()
    );
    let shown = kafka_status_cli(&data).await;
    assert!(shown.contains("r uplink main state=paused"), "{shown}");
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    // No runtime directory: the data directory, written only when something other than a counter changes.
    let (mut child, _) = crate::durability::start_weir_env(&data, "", &[]).await;
    until_report(&data, "the fallback report", |r| {
        !r.live && r.routes.iter().any(|s| s.state == RouteState::Paused)
    })
    .await;
    assert!(!data.join(STATUS_POINTER).exists(), "the pointer is gone with the runtime directory");
    let written = std::fs::metadata(data.join(STATUS_FILE)).unwrap().modified().unwrap();
    // Nothing changes for 2.5 s (the route is paused): a gateway rewriting every second would have written
    // twice. Waiting for an absence needs a fixed time.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        std::fs::metadata(data.join(STATUS_FILE)).unwrap().modified().unwrap(),
        written,
        "not rewritten"
    );
    let shown = kafka_status_cli(&data).await;
    assert!(shown.contains("no runtime directory") && shown.contains("state=paused"), "{shown}");
    // A change of state is written at once.
    weir_cli(&data, &["route", "resume", "r"]).await;
    until_report(&data, "the resumed route", |r| r.routes.iter().any(|s| s.state != RouteState::Paused))
        .await;
    assert_ne!(std::fs::metadata(data.join(STATUS_FILE)).unwrap().modified().unwrap(), written);
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    assert!(!ops::status(&data).running, "a killed gateway is not running, whatever its file says");
}

fn metric(name: Option<&str>, alias: u64, datatype: DataType, value: MetricValue) -> Metric {
    Metric {
        name: name.map(str::to_owned),
        alias: Some(alias),
        datatype: name.map(|_| datatype.code()),
        value: Some(value),
        ..Metric::default()
    }
}

fn payload(seq: u64, metrics: Vec<Metric>) -> Vec<u8> {
    Payload { timestamp: Some(1_700_000_000_000), seq: Some(seq), metrics, ..Payload::default() }
        .encode_to_vec()
}

async fn publish_one(client: &mut crate::clients::v4::Client, topic: &str, payload: Vec<u8>) {
    client.client.publish(topic, crate::clients::v4::QoS::AtLeastOnce, false, payload).await.unwrap();
    client.expect(|p| matches!(p, rumqttc::Packet::PubAck(_)).then_some(())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_sparkplug_route_resolves_aliases_also_after_a_restart() {
    let tansu = Tansu::start().await;
    tansu.create_topic("spb", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let (gw, port) = start_gateway(dir.path()).await;
    let db = config_db(dir.path()).await;
    add_upstream(&db, "main", &tansu.bootstrap()).await;
    let route = ops::AddRoute { format: "sparkplug".into(), ..uplink("spb", "#", "spb") };
    ops::route_add(&db, route, "test").await.unwrap();
    let (mut edge, _) = crate::clients::v4::Client::connect(crate::clients::v4::options("edge", port)).await;
    let birth = payload(
        0,
        vec![
            metric(Some("bdSeq"), 0, DataType::Int64, MetricValue::LongValue(0)),
            metric(Some("Temperature"), 1, DataType::Double, MetricValue::DoubleValue(21.5)),
            metric(Some("Pressure"), 2, DataType::Int32, MetricValue::IntValue(1013)),
        ],
    );
    publish_one(&mut edge, "spBv1.0/G/NBIRTH/E", birth).await;
    let dbirth = payload(1, vec![metric(Some("Level"), 3, DataType::Float, MetricValue::FloatValue(0.5))]);
    publish_one(&mut edge, "spBv1.0/G/DBIRTH/E/D", dbirth).await;
    let mut historical = metric(None, 2, DataType::Int32, MetricValue::IntValue(1009));
    (historical.is_historical, historical.timestamp) = (Some(true), Some(1_699_999_000_000));
    let data =
        payload(2, vec![metric(None, 1, DataType::Double, MetricValue::DoubleValue(22.5)), historical]);
    publish_one(&mut edge, "spBv1.0/G/NDATA/E", data).await;
    publish_one(
        &mut edge,
        "spBv1.0/G/DDATA/E/D",
        payload(3, vec![metric(None, 3, DataType::Float, MetricValue::FloatValue(0.75))]),
    )
    .await;
    publish_one(&mut edge, "plant/not-sparkplug", b"21.5".to_vec()).await;
    publish_one(&mut edge, "spBv1.0/G/NDATA/Broken", vec![0xff, 0x01]).await;
    publish_one(
        &mut edge,
        "spBv1.0/G/NDATA/E",
        payload(4, vec![metric(None, 1, DataType::Double, MetricValue::DoubleValue(23.0))]),
    )
    .await;
    until_forwarded_all(dir.path(), "spb").await;
    edge.kill().await;
    gw.shutdown().await;

    // After a restart the route knows no birth: the aliases come from the journal.
    let (gw, port) = start_gateway(dir.path()).await;
    let (mut edge, _) = crate::clients::v4::Client::connect(crate::clients::v4::options("edge", port)).await;
    publish_one(
        &mut edge,
        "spBv1.0/G/NDATA/E",
        payload(5, vec![metric(None, 1, DataType::Double, MetricValue::DoubleValue(24.0))]),
    )
    .await;
    until_forwarded_all(dir.path(), "spb").await;

    let records = read_all(&tansu.bootstrap(), "spb").await;
    let values: Vec<serde_json::Value> =
        records.iter().map(|r| serde_json::from_str(&r.value).unwrap()).collect();
    let kinds: Vec<&str> = values.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["NBIRTH", "DBIRTH", "NDATA", "DDATA", "NDATA", "NDATA"], "{values:?}");
    let ndata = &values[2]["metrics"];
    assert_eq!(ndata[0]["name"], "Temperature");
    assert_eq!(ndata[0]["value"], 22.5);
    assert_eq!(ndata[0]["is_historical"], false);
    assert_eq!(ndata[1]["name"], "Pressure");
    assert_eq!(ndata[1]["value"], 1009);
    assert_eq!(ndata[1]["is_historical"], true);
    assert_eq!(values[3]["device"], "D");
    assert_eq!(values[3]["metrics"][0]["name"], "Level");
    assert_eq!(values[4]["metrics"][0]["value"], 23.0);
    assert_eq!(values[5]["metrics"][0]["name"], "Temperature", "resolved after the restart");
    assert_eq!(values[5]["metrics"][0]["value"], 24.0);
    assert_eq!(records[5].headers["mqtt.topic"], "spBv1.0/G/NDATA/E");
    // What is not Sparkplug B is refused to the dead letters, with the reason.
    let shown = ops::route_show(&db, dir.path(), "spb", 10).await.unwrap();
    let reasons: Vec<&str> = shown.dead_letters.iter().map(|d| d.reason.as_str()).collect();
    assert_eq!(shown.dead_letter_count, 2, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("not a Sparkplug B topic")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("malformed Sparkplug B payload")), "{reasons:?}");
    edge.kill().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_dead_letters_are_replayed_once_the_limit_is_raised() {
    let tansu = Tansu::start().await;
    tansu.create_topic("big", 1).await;
    let gw = TestGateway::start_with(|c| c.broker.max_packet_size = 4 * 1024 * 1024).await;
    let data = gw.data_dir().to_owned();
    let db = config_db(&data).await;
    add_upstream(&db, "main", &tansu.bootstrap()).await;
    ops::route_add(&db, uplink("big", "big/#", "big"), "test").await.unwrap();
    ops::route_add(&db, uplink("tpl", "tpl/#", "t.{2}"), "test").await.unwrap();
    let mut options = crate::clients::v4::options("big", gw.port());
    options.set_max_packet_size(8 * 1024 * 1024, 8 * 1024 * 1024);
    let (mut mqtt, _) = crate::clients::v4::Client::connect(options).await;
    publish_one(&mut mqtt, "big/k0", b"k0:0".to_vec()).await;
    let mut big = b"k0:1:".to_vec();
    big.resize(1_500_000, b'x');
    publish_one(&mut mqtt, "big/k0", big).await;
    publish_one(&mut mqtt, "big/k0", b"k0:2".to_vec()).await;
    // (A cursor moves over what its route is sent, so each route is waited for while its message is newest.)
    until_forwarded_all(&data, "big").await;
    publish_one(&mut mqtt, "tpl/bad level", b"x".to_vec()).await;
    until_forwarded_all(&data, "tpl").await;
    let shown = ops::route_show(&db, &data, "big", 10).await.unwrap();
    assert_eq!(shown.dead_letter_count, 1);
    let letter = shown.dead_letters[0].clone();

    // Still too large: kept, with the new attempt's reason and time.
    let again = ops::route_replay(&db, &data, "big", ops::ReplayWhich::Id(letter.id), "test").await.unwrap();
    assert_eq!(again.sent, 0);
    assert_eq!(again.kept.len(), 1);
    assert!(again.kept[0].1.to_lowercase().contains("too large"), "{:?}", again.kept);
    let shown = ops::route_show(&db, &data, "big", 10).await.unwrap();
    assert!(shown.dead_letters[0].ts > letter.ts);

    // The operator raises the limit (the topic's max.message.bytes too, on a real cluster) and replays.
    let raise = ops::SetUpstream {
        name: "main".into(),
        bootstrap: tansu.bootstrap(),
        max_message_bytes: Some(3_000_000),
        ..ops::SetUpstream::default()
    };
    ops::upstream_set(&db, raise, "test").await.unwrap();
    let done = ops::route_replay(&db, &data, "big", ops::ReplayWhich::All, "test").await.unwrap();
    assert_eq!((done.sent, done.kept.len()), (1, 0), "{done:?}");
    assert_eq!(ops::route_show(&db, &data, "big", 10).await.unwrap().dead_letter_count, 0);
    let records = read_all(&tansu.bootstrap(), "big").await;
    assert_eq!(records.len(), 3);
    let replayed = records.iter().find(|r| r.value.len() == 1_500_000).expect("the big record is in Kafka");
    assert_eq!(replayed.headers["weir.id"], letter.journal_id.unwrap().to_string());
    assert_eq!(replayed.headers["mqtt.topic"], "big/k0");

    // A refusal that nothing changed stays, with its reason; the CLI says so too.
    let tpl = ops::route_replay(&db, &data, "tpl", ops::ReplayWhich::All, "test").await.unwrap();
    assert_eq!(tpl.sent, 0);
    assert!(tpl.kept[0].1.contains("not a valid Kafka topic"), "{tpl:?}");
    let out = Command::new(WEIR)
        .args(["kafka", "--data-dir"])
        .arg(&data)
        .args(["route", "replay", "tpl", "--all"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("sent 0, kept 1"));
    assert_eq!(ops::route_show(&db, &data, "tpl", 10).await.unwrap().dead_letter_count, 1);
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'kafka.route.replay'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(audited, 4);
    mqtt.kill().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_gap_at_the_hard_cap_is_counted_and_shown_and_what_follows_arrives() {
    let tansu = Tansu::start().await;
    tansu.create_topic("gap", 1).await;
    tansu.proxy.set(Fault::Cut);
    let small_journal = |c: &mut weir::config::Config| {
        c.journal.retention.max_bytes = None;
        c.journal.retention.hard_cap_bytes = Some(1024 * 1024);
    };
    let mut gw = TestGateway::start_with(small_journal).await;
    let data = gw.data_dir().to_owned();
    let db = config_db(&data).await;
    add_upstream(&db, "main", &tansu.bootstrap()).await;
    ops::route_add(&db, uplink("gap", "gap/#", "gap"), "test").await.unwrap();
    // The route has run (its cursor exists: what goes after this is a gap, not "before it started").
    until_status(&data, "gap", "running", |s| matches!(s.state, RouteState::Idle | RouteState::Error)).await;
    let keys = keys(1);
    // 3 MB through a 1 MiB journal while Kafka is unreachable: the oldest go, unforwarded.
    assert_eq!(publish_qos1_padded(gw.tcp, "gap", &keys, 0..3000, 100, 1000).await, 3000);
    let s = until_status(&data, "gap", "a gap", |s| s.gap > 0 && s.last_gap.is_some()).await;
    let (from, to, _) = s.last_gap.unwrap();
    assert!(from >= 1 && to >= from, "{s:?}");
    eprintln!(
        "gap while down: {} entries, last {from}-{to}, state {:?}, error {:?}",
        s.gap, s.state, s.last_error
    );
    let shown = kafka_status_cli(&data).await;
    assert!(shown.contains(&format!("gap={}", s.gap)) && shown.contains("journal ids"), "{shown}");

    // The count and the last gap are kept with the route's cursor: after a restart the status shows them again,
    // and the ids found missing again (the cursor is still before them, Kafka still down) are not counted twice.
    gw.restart_with(small_journal).await;
    let again = until_status(&data, "gap", "the gap after a restart, checked again", |s| {
        s.last_gap.is_some() && matches!(s.state, RouteState::Error | RouteState::Stalled)
    })
    .await;
    assert!(again.gap >= s.gap, "{again:?}");
    assert!(
        again.last_gap == s.last_gap || again.last_gap.is_some_and(|(first, _, _)| first > to),
        "counted once: before the restart {s:?}, after {again:?}"
    );
    let shown = kafka_status_cli(&data).await;
    assert!(shown.contains(&format!("gap={}", again.gap)) && shown.contains("journal ids"), "{shown}");
    eprintln!("after the restart: gap={} (before: {}), last {:?}", again.gap, s.gap, again.last_gap);

    tansu.proxy.set(Fault::Pass);
    assert_eq!(publish_qos1_padded(gw.tcp, "gap", &keys, 3000..3100, 100, 1000).await, 100);
    until_forwarded_all(&data, "gap").await;
    let s = until_status(&data, "gap", "idle", |s| s.state == RouteState::Idle).await;
    let got = crate::kafka::sequences(&read_all(&tansu.bootstrap(), "gap").await);
    let seqs = &got["k0"];
    let first = seqs[0];
    assert!(first > 0, "the oldest were lost to the hard cap");
    // Everything after the gap, once and in order.
    check_exact(
        &read_all(&tansu.bootstrap(), "gap").await,
        &BTreeMap::from([("k0".to_owned(), (first..3100).collect())]),
    );
    assert!(s.gap >= first, "{} journal entries counted as lost, {first} messages missing", s.gap);
    eprintln!("gap: {} entries counted, the first {first} of 3,100 messages lost, the rest forwarded", s.gap);

    // The cursor is past the gap now, so nothing finds it missing again: after a restart the status still shows
    // it, from the cursor's record.
    gw.restart_with(small_journal).await;
    let after = until_status(&data, "gap", "idle after a restart", |s| s.state == RouteState::Idle).await;
    assert_eq!((after.gap, after.last_gap), (s.gap, s.last_gap), "{after:?}");
    let shown = kafka_status_cli(&data).await;
    assert!(shown.contains(&format!("gap={}", s.gap)) && shown.contains("journal ids"), "{shown}");
    // A paused route opens no cursor; its status shows the record all the same.
    ops::route_pause(&db, "gap", "test").await.unwrap();
    gw.restart_with(small_journal).await;
    let paused =
        until_status(&data, "gap", "paused after a restart", |s| s.state == RouteState::Paused).await;
    assert_eq!((paused.gap, paused.last_gap), (s.gap, s.last_gap), "{paused:?}");
    gw.stop().await;
}

/// How long the long outage lasts: `WEIR_KAFKA_OUTAGE_SECS`, 20 s by default (CI). Run at 180 s for
/// docs/BENCHMARKS.md ("A Kafka outage of minutes"):
/// `WEIR_KAFKA_OUTAGE_SECS=180 cargo nextest run --no-capture -E 'test(/outage_of_minutes/)'`.
fn outage() -> Duration {
    let secs = std::env::var("WEIR_KAFKA_OUTAGE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    Duration::from_secs(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_outage_of_minutes_under_load_loses_nothing_and_shows_while_it_lasts() {
    let tansu = Tansu::start().await;
    tansu.create_topic("long", 2).await;
    let gw = TestGateway::start().await;
    let data = gw.data_dir().to_owned();
    let db = config_db(&data).await;
    add_upstream(&db, "main", &tansu.bootstrap()).await;
    ops::route_add(&db, uplink("long", "long/#", "long"), "test").await.unwrap();
    let keys = keys(4);
    assert_eq!(publish_qos1(gw.tcp, "long", &keys, 0..1000, 100).await, 1000);
    until_forwarded_all(&data, "long").await;

    // A blackhole: sockets stay open, nothing flows. Load goes on all the while: 500 messages a second (a
    // backlog of 90,000 at 180 s; see docs/BENCHMARKS.md for why not more).
    let outage = outage();
    tansu.proxy.set(Fault::Blackhole);
    let started = Instant::now();
    let mut next = 1000u64;
    let mut states = BTreeMap::<String, u32>::new();
    let mut worst_publish = Duration::ZERO;
    while started.elapsed() < outage {
        let t = Instant::now();
        assert_eq!(publish_qos1(gw.tcp, "long", &keys, next..next + 500, 100).await, 500);
        worst_publish = worst_publish.max(t.elapsed());
        next += 500;
        let s = ops::status(&data).report.unwrap().routes.into_iter().find(|r| r.name == "long").unwrap();
        // Once the stall threshold (10 s without an acknowledgement) has passed, the status must show it, and
        // the lag must be the outage's age (the oldest waiting record was published as it began), however often
        // the route's session starts again.
        let elapsed = i64::try_from(started.elapsed().as_millis()).unwrap();
        if elapsed > 15_000 {
            assert_eq!(s.state, RouteState::Stalled, "at {elapsed} ms into the outage: {s:?}");
            assert!(s.lag_alarm, "{s:?}");
            // (Reported each second by the route and again by the supervisor: up to a few seconds behind.)
            assert!(s.lag_ms > elapsed - 5_000 && s.lag_ms < elapsed + 1_000, "lag at {elapsed} ms: {s:?}");
        }
        *states.entry(s.state.as_str().to_owned()).or_default() += 1;
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(t.elapsed())).await;
    }
    let during = ops::status(&data).report.unwrap().routes.into_iter().find(|r| r.name == "long").unwrap();
    eprintln!(
        "outage of {outage:?} under load: {} published, states seen {states:?}, worst publish of 500 {worst_publish:?}, at the end {:?} lag {} ms alarm {} error {:?}",
        next - 1000,
        during.state,
        during.lag_ms,
        during.lag_alarm,
        during.last_error
    );
    assert!(during.lag_alarm, "the lag alarm is raised");
    tansu.proxy.set(Fault::Pass);
    let recovered = Instant::now();
    let watcher = {
        let data = data.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let view = ops::status(&data);
                if let Some(s) = view.report.and_then(|r| r.routes.into_iter().find(|r| r.name == "long")) {
                    eprintln!(
                        "catching up: {:?} forwarded {} position {} rate {:.0}/s skipped {} error {:?}",
                        s.state, s.forwarded, s.position, s.rate, s.skipped_duplicates, s.last_error
                    );
                }
            }
        })
    };
    until_forwarded_all(&data, "long").await;
    watcher.abort();
    eprintln!("caught up {} messages in {:?} after the outage", next - 1000, recovered.elapsed());
    let mut want: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for seq in 0..next {
        // publish_qos1 gives message i of a batch starting at `start` the key i % keys.
        let i = (seq - if seq < 1000 { 0 } else { (seq - 1000) / 500 * 500 + 1000 }) as usize;
        want.entry(keys[i % keys.len()].clone()).or_default().push(seq);
    }
    check_exact(&read_all(&tansu.bootstrap(), "long").await, &want);
    gw.stop().await;
}
