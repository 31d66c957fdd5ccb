//! The durable journal seen from outside: acknowledged messages survive kill -9, a full store is refused
//! visibly and recovers, damaged databases do not stop the gateway, and `weir history` reads it all back.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::support::{Raw, TestGateway, WAIT, connect_v5, connect_v311, packet};
use weir::store::{self, history};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// Starts `weir serve` on port 0 with `data` as its data directory; returns the child and its MQTT address.
pub async fn start_weir(data: &Path, extra: &str) -> (Child, std::net::SocketAddr) {
    start_weir_env(data, extra, &[]).await
}

/// [`start_weir`] with these environment variables, and without the runtime directories of the test's own
/// environment (`RUNTIME_DIRECTORY`, `XDG_RUNTIME_DIR`) unless given here.
pub async fn start_weir_env(
    data: &Path,
    extra: &str,
    env: &[(&str, &Path)],
) -> (Child, std::net::SocketAddr) {
    let config = data.with_extension("toml");
    let text = format!(
        "data_dir = {:?}\n[[listener]]\nname = \"t\"\nprotocol = \"tcp\"\nbind = \"127.0.0.1:0\"\n{extra}\n[console]\nbind = \"127.0.0.1:0\"\n",
        data.display().to_string()
    );
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new(WEIR)
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("RUNTIME_DIRECTORY")
        .env_remove("XDG_RUNTIME_DIR")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line =
            tokio::time::timeout(WAIT, lines.next_line()).await.unwrap().unwrap().expect("weir exited");
        if let Some(addr) = line.strip_prefix("weir: MQTT on mqtt://") {
            // Keep reading what it prints, so that it never writes into a closed pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return (child, addr.parse().unwrap());
        }
    }
}

pub fn publish(qos: u8, packet_id: u16, topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend(topic.as_bytes());
    body.extend(packet_id.to_be_bytes());
    body.extend(payload);
    packet(0x30 | (qos << 1), &body)
}

/// Publishes `count` messages at `qos` as fast as the socket takes them, and records every packet id the broker
/// acknowledges (PUBACK, or PUBREC for QoS 2, which is then released), until the connection breaks. Each payload
/// is `<client>-<packet id>`, padded with dots to `pad` bytes.
async fn publish_until_killed(
    addr: std::net::SocketAddr,
    client: String,
    qos: u8,
    pad: usize,
    count: u16,
    acked: tokio::sync::mpsc::UnboundedSender<u16>,
) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&connect_v311(&client, true, 0)).await.unwrap();
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let (release, mut to_release) = tokio::sync::mpsc::unbounded_channel::<u16>();
    let sender = tokio::spawn(async move {
        let mut next = 1u16;
        loop {
            let bytes = tokio::select! {
                biased;
                Some(id) = to_release.recv() => packet(0x62, &id.to_be_bytes()),
                _ = std::future::ready(()), if next <= count => {
                    next += 1;
                    let mut payload = format!("{client}-{}", next - 1).into_bytes();
                    payload.resize(payload.len().max(pad), b'.');
                    publish(qos, next - 1, "durable/t", &payload)
                }
                else => return,
            };
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut buf = [0u8; 4];
    while reader.read_exact(&mut buf).await.is_ok() {
        let id = u16::from_be_bytes([buf[2], buf[3]]);
        match buf[0] {
            0x40 | 0x50 => {
                let _ = acked.send(id);
                if buf[0] == 0x50 {
                    let _ = release.send(id);
                }
            }
            0x70 => {}
            other => panic!("unexpected packet type {other:#x}"),
        }
    }
    sender.abort();
}

#[tokio::test]
async fn acknowledged_messages_survive_kill_9_again_and_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut expected = BTreeSet::new();
    for round in 0..6u8 {
        let qos = 1 + round % 2;
        // The last rounds publish 4 KiB payloads: those go to the journal's payload log, not into SQLite.
        let pad = if round >= 3 { 4096 } else { 0 };
        let (mut child, addr) = start_weir(&data, "").await;
        let client = format!("round{round}");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let publisher = tokio::spawn(publish_until_killed(addr, client.clone(), qos, pad, 20_000, tx));
        // Kill once a good number are acknowledged, while the rest are still in flight.
        let mut acked = Vec::new();
        while acked.len() < 300 + usize::from(round) * 100 {
            match tokio::time::timeout(WAIT, rx.recv()).await.expect("acknowledgements keep coming") {
                Some(id) => acked.push(id),
                None => panic!("publisher stopped before the kill"),
            }
        }
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        publisher.await.unwrap();
        while let Ok(id) = rx.try_recv() {
            acked.push(id);
        }
        expected.extend(acked.iter().map(|id| format!("{client}-{id}")));

        let pool = store::open_for_reading(&data, store::Database::Journal).await.unwrap();
        let check: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&pool).await.unwrap();
        assert_eq!(check, "ok", "round {round}");
        let mut q = history::HistoryQuery::new("durable/t");
        q.limit = 10_000;
        let mut stored = BTreeSet::new();
        loop {
            let page = history::query(&pool, &q).await.unwrap();
            for m in &page.messages {
                let text = String::from_utf8(m.payload.clone()).unwrap();
                let padded = m.payload.len() > 100;
                assert!(
                    !padded || m.payload.len() == 4096,
                    "round {round}: a payload of {} bytes",
                    m.payload.len()
                );
                stored.insert(text.trim_end_matches('.').to_owned());
            }
            match page.next {
                Some(next) => q.after = Some(next),
                None => break,
            }
        }
        pool.close().await;
        let missing: Vec<_> = expected.difference(&stored).take(5).collect();
        assert!(missing.is_empty(), "round {round} (QoS {qos}): acknowledged but not stored: {missing:?}");
    }
}

#[tokio::test]
async fn a_full_store_is_refused_visibly_and_service_resumes() {
    let gw = TestGateway::start_with(|c| {
        c.journal.max_pages = Some(64);
        c.journal.retention.max_age = Some(Duration::ZERO);
        c.journal.retention.max_bytes = None;
        c.journal.retention.hard_cap_bytes = None;
    })
    .await;
    let mut v5 = Raw::connect(gw.tcp).await;
    v5.send(&connect_v5("filler", 0)).await;
    v5.read_packet().await;
    let payload = vec![b'x'; 2000];
    let mut refused_at = None;
    for id in 1..=1000u16 {
        let mut body = vec![0, 4, b'f', b'u', b'l', b'l'];
        body.extend(id.to_be_bytes());
        body.push(0);
        body.extend(&payload);
        v5.send(&packet(0x32, &body)).await;
        let ack = v5.read_packet().await;
        assert_eq!((ack[0], &ack[2..4]), (0x40, &id.to_be_bytes()[..]));
        if ack.len() > 4 && ack[4] == 0x97 {
            refused_at = Some(id);
            break;
        }
    }
    assert!(refused_at.is_some_and(|n| n > 10), "PUBACK 0x97 quota exceeded once the store is full");

    // 3.1.1 cannot be told: the connection is closed without an acknowledgement, so the client keeps the message.
    let mut v3 = Raw::connect(gw.tcp).await;
    v3.send(&connect_v311("filler3", true, 0)).await;
    v3.read_packet().await;
    v3.send(&publish(1, 1, "full", &payload)).await;
    assert_eq!(v3.read_to_close().await, Vec::<u8>::new());

    // Space comes back (retention frees it): the same client's next publish is accepted.
    let journal = gw.gateway().journal().unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(journal.prune_now().await > 0);
    v5.send(&packet(0x32, &[0, 4, b'f', b'u', b'l', b'l', 0x07, 0xD0, 0, b'o', b'k'])).await;
    assert_eq!(v5.read_packet().await, [0x40, 2, 0x07, 0xD0]);
    let check: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(journal.pool()).await.unwrap();
    assert_eq!(check, "ok");
    gw.stop().await;
}

#[tokio::test]
async fn damaged_databases_do_not_stop_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join(store::JOURNAL_FILE), vec![0x5A; 8192]).unwrap();
    std::fs::write(data.join(store::CONFIG_FILE), b"SQLite format 3\0 but then garbage").unwrap();
    let (_child, addr) = start_weir(&data, "").await;
    let mut c = Raw::connect(addr).await;
    c.send(&connect_v311("survivor", true, 0)).await;
    assert_eq!(c.read_packet().await, [0x20, 2, 0, 0]);
    c.send(&publish(1, 1, "after/damage", b"ok")).await;
    assert_eq!(c.read_packet().await, [0x40, 2, 0, 1]);
    let names: Vec<String> =
        std::fs::read_dir(&data).unwrap().filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    for prefix in ["journal.sqlite.damaged-", "config.sqlite.damaged-"] {
        assert!(names.iter().any(|n| n.starts_with(prefix)), "{prefix} in {names:?}");
    }
    let config = store::open_for_reading(&data, store::Database::Config).await.unwrap();
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_log").fetch_all(&config).await.unwrap();
    assert_eq!(actions, ["database.recovered"]);
}

#[tokio::test]
async fn weir_history_queries_and_exports_what_was_published() {
    let gw = TestGateway::start().await;
    let mut c = Raw::connect(gw.tcp).await;
    c.send(&connect_v311("historian", true, 0)).await;
    c.read_packet().await;
    for (id, (topic, payload)) in [
        ("plant/a/temp", "20.5"),
        ("plant/b/temp", "{\"v\":1}"),
        ("office/temp", "x"),
        ("plant/a/temp", "a,\"b\""),
    ]
    .into_iter()
    .enumerate()
    {
        c.send(&publish(1, id as u16 + 1, topic, payload.as_bytes())).await;
        assert_eq!(c.read_packet().await[0], 0x40);
    }
    let data = gw.data_dir().to_owned();
    let out = Command::new(WEIR)
        .args(["history", "query", "--filter", "plant/+/temp", "--jsonl", "--data-dir"])
        .arg(&data)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let payloads: Vec<&str> = lines.iter().map(|l| l["payload"].as_str().unwrap()).collect();
    assert_eq!(payloads, ["a,\"b\"", "{\"v\":1}", "20.5"], "newest first, office/temp not matched");
    assert_eq!(lines[0]["client_id"], "historian");

    let csv = gw.data_dir().join("export.csv");
    let out = Command::new(WEIR)
        .args(["history", "export", "--filter", "plant/#", "--format", "csv", "--since", "1h", "--output"])
        .arg(&csv)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows[0], "id,time,topic,qos,retain,client_id,username,payload");
    assert_eq!(rows.len(), 4);
    assert!(rows[1].ends_with(",plant/a/temp,1,0,historian,,20.5"), "{}", rows[1]);
    assert!(rows[3].ends_with(",\"a,\"\"b\"\"\""), "{}", rows[3]);

    let out = Command::new(WEIR)
        .args(["history", "query", "--since", "yesterday-ish", "--data-dir"])
        .arg(&data)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read \"yesterday-ish\" as a time"));
    gw.stop().await;
}

#[tokio::test]
async fn retained_messages_survive_kill_9_and_so_does_clearing_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut child, addr) = start_weir(&data, "").await;
    let mut c = Raw::connect(addr).await;
    c.send(&connect_v311("retainer", true, 0)).await;
    c.read_packet().await;
    for (id, (topic, payload)) in [
        ("line/1/state", "running"),
        ("line/2/state", "stopped"),
        ("line/1/state", "idle"),
        ("line/2/state", ""),
    ]
    .into_iter()
    .enumerate()
    {
        let mut p = publish(1, id as u16 + 1, topic, payload.as_bytes());
        p[0] |= 0x01; // RETAIN
        c.send(&p).await;
        assert_eq!(c.read_packet().await[0], 0x40, "acknowledged, so durable");
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    let (_child, addr) = start_weir(&data, "").await;
    let mut s = Raw::connect(addr).await;
    s.send(&connect_v311("reader", true, 0)).await;
    s.read_packet().await;
    s.send(&packet(0x82, &[0, 1, 0, 6, b'l', b'i', b'n', b'e', b'/', b'#', 0])).await;
    assert_eq!(s.read_packet().await[0], 0x90);
    let got = s.read_packet().await;
    assert_eq!(got[0], 0x31, "a retained QoS 0 delivery");
    assert!(got.ends_with(b"line/1/stateidle"), "the latest value only: {got:?}");
    // line/2/state was cleared before the kill: nothing more comes. A PINGREQ round trip proves it.
    s.send(&[0xC0, 0]).await;
    assert_eq!(s.read_packet().await, [0xD0, 0]);
}

/// A v5 CONNECT with clean start 0, a session expiry, and a will on `will/<id>` with the given delay.
pub fn persistent_connect(client_id: &str, expiry: u32, will_delay: Option<u32>) -> Vec<u8> {
    let flags = if will_delay.is_some() { 0x04 | 0x08 } else { 0 }; // will, will QoS 1
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, flags, 0, 0];
    body.extend([5, 0x11]);
    body.extend(expiry.to_be_bytes());
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    if let Some(delay) = will_delay {
        body.extend([5, 0x18]);
        body.extend(delay.to_be_bytes());
        let topic = format!("will/{client_id}");
        body.extend((topic.len() as u16).to_be_bytes());
        body.extend(topic.as_bytes());
        body.extend([0, 4]);
        body.extend(b"gone");
    }
    packet(0x10, &body)
}

#[tokio::test]
async fn persistent_sessions_survive_kill_9_with_queues_subscriptions_expiry_and_will() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut child, addr) = start_weir(&data, "").await;
    // A persistent subscriber, connected when the gateway dies, with a will delayed 2 s.
    let mut sub = Raw::connect(addr).await;
    sub.send(&persistent_connect("keeper", 3600, Some(2))).await;
    assert_eq!(sub.read_packet().await[3], 0, "CONNACK success");
    // SUBSCRIBE s/# at QoS 1 with subscription identifier 5.
    sub.send(&packet(0x82, &[0, 1, 2, 0x0B, 5, 0, 3, b's', b'/', b'#', 1])).await;
    assert_eq!(sub.read_packet().await[0], 0x90);
    // A session with a short expiry that goes offline normally before the gateway dies.
    let mut short = Raw::connect(addr).await;
    short.send(&persistent_connect("fleeting", 2, None)).await;
    short.read_packet().await;
    short.send(&[0xE0, 0]).await;
    short.read_to_close().await;
    let short_gone_at = std::time::Instant::now() + Duration::from_secs(2);
    // Two messages reach the subscriber, which does not acknowledge them: they are in flight under packet ids.
    let mut p = Raw::connect(addr).await;
    p.send(&connect_v311("barrier", true, 0)).await;
    p.read_packet().await;
    for (id, topic) in [(1u16, "s/a"), (2, "s/b")] {
        p.send(&publish(1, id, topic, topic.as_bytes())).await;
        p.read_packet().await;
    }
    let mut in_flight = Vec::new();
    for _ in 0..2 {
        let got = sub.read_packet().await;
        assert_eq!(got[0], 0x32);
        in_flight.push(got);
    }
    // Session changes are written before later messages: once this QoS 1 publish is acknowledged, they are in.
    p.send(&publish(1, 3, "barrier", b"x")).await;
    p.read_packet().await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    drop(sub);

    let (_child, addr) = start_weir(&data, "").await;
    let mut watcher = Raw::connect(addr).await;
    watcher.send(&connect_v311("watcher", true, 0)).await;
    watcher.read_packet().await;
    watcher.send(&packet(0x82, &[0, 1, 0, 6, b'w', b'i', b'l', b'l', b'/', b'#', 0])).await;
    watcher.read_packet().await;
    // The subscriber was connected when the gateway died: its will comes, after its delay.
    let got = watcher.read_packet().await;
    assert!(got.ends_with(b"will/keepergone"), "{got:?}");

    // A message published while it is away is kept for the restored session.
    let mut p = Raw::connect(addr).await;
    p.send(&connect_v311("publisher", true, 0)).await;
    p.read_packet().await;
    p.send(&publish(1, 7, "s/x", b"while away")).await;
    assert_eq!(p.read_packet().await[0], 0x40);
    let mut back = Raw::connect(addr).await;
    back.send(&persistent_connect("keeper", 3600, None)).await;
    let ack = back.read_packet().await;
    assert_eq!(ack[2], 1, "session present after the restart: {ack:?}");
    // First the two that were in flight, again, with DUP and their packet ids; then what was queued.
    for before in &in_flight {
        let again = back.read_packet().await;
        assert_eq!(again[0], before[0] | 0x08, "DUP set: {again:?}");
        assert_eq!(&again[1..], &before[1..], "same packet id and content");
    }
    let got = back.read_packet().await;
    assert_eq!(got[0] & 0xF6, 0x32, "QoS 1 PUBLISH: {got:?}");
    assert!(got.ends_with(b"while away"));
    assert!(got.windows(2).any(|w| w == [0x0B, 5]), "subscription identifier restored: {got:?}");

    // The short session's expiry kept counting while the gateway was down.
    tokio::time::sleep_until(tokio::time::Instant::from_std(short_gone_at + Duration::from_millis(1100)))
        .await;
    let mut again = Raw::connect(addr).await;
    again.send(&persistent_connect("fleeting", 2, None)).await;
    assert_eq!(again.read_packet().await[2], 0, "the expired session is gone");
}

/// The packet id and payload of a v3.1.1 PUBLISH as `Raw::read_packet` returns it.
fn parse_publish(packet: &[u8]) -> (u16, Vec<u8>) {
    assert_eq!(packet[0] & 0xF0, 0x30, "a PUBLISH: {packet:?}");
    let mut at = 1;
    while packet[at] & 0x80 != 0 {
        at += 1;
    }
    at += 1;
    let topic_len = usize::from(u16::from_be_bytes([packet[at], packet[at + 1]]));
    at += 2 + topic_len;
    let mut id = 0;
    if packet[0] & 0x06 != 0 {
        id = u16::from_be_bytes([packet[at], packet[at + 1]]);
        at += 2;
    }
    (id, packet[at..].to_vec())
}

/// Reads `count` QoS 1 PUBLISH packets, acknowledging each, and returns their payloads as text in arrival order.
async fn receive_and_ack(client: &mut Raw, count: usize) -> Vec<String> {
    let mut got = Vec::with_capacity(count);
    for _ in 0..count {
        let (id, payload) = parse_publish(&client.read_packet().await);
        client.send(&packet(0x40, &id.to_be_bytes())).await;
        let text = String::from_utf8(payload).unwrap();
        assert!(text.len() < 100 || text.len() == 3000, "a payload of {} bytes", text.len());
        got.push(text.trim_end_matches('.').to_owned());
    }
    got
}

/// Publishes `range` as QoS 1 messages `m-<n>` on `topic`, one at a time, each acknowledged before the next. Odd
/// ones are padded with dots to 3,000 bytes: the journal keeps those in its payload log, the others in their rows.
async fn publish_acked(addr: std::net::SocketAddr, topic: &str, range: std::ops::Range<usize>) {
    let mut p = Raw::connect(addr).await;
    p.send(&connect_v311("spill-publisher", true, 0)).await;
    assert_eq!(p.read_packet().await, [0x20, 2, 0, 0]);
    for n in range {
        let id = u16::try_from(n % 60_000 + 1).unwrap();
        let mut payload = format!("m-{n}").into_bytes();
        if n % 2 == 1 {
            payload.resize(3000, b'.');
        }
        p.send(&publish(1, id, topic, &payload)).await;
        assert_eq!(p.read_packet().await, [0x40, 2, (id >> 8) as u8, id as u8], "PUBACK for m-{n}");
    }
}

/// Rows of `session_messages` for `client`: (all, spilled), read from the journal file by a separate connection.
async fn stored_queue(data: &Path, client: &str) -> (i64, i64) {
    let url = format!("sqlite://{}?mode=ro", data.join("journal.sqlite").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let row: (i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(spilled), 0) FROM session_messages WHERE client_id = ?",
    )
    .bind(client)
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    row
}

fn expected(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|n| format!("m-{n}")).collect()
}

#[tokio::test]
async fn an_offline_session_keeps_everything_beyond_its_memory_window_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // At most 20 queued deliveries in memory per session; Mosquitto would drop the rest.
    let limits = "[mqtt]\nmax_queued_messages = 20\n";
    let (mut child, addr) = start_weir(&data, limits).await;
    let mut sub = Raw::connect(addr).await;
    sub.send(&connect_v311("spill-offline", false, 0)).await;
    assert_eq!(sub.read_packet().await, [0x20, 2, 0, 0]);
    sub.send(&packet(0x82, &[0, 1, 0, 3, b'q', b'/', b'#', 1])).await;
    assert_eq!(sub.read_packet().await, [0x90, 3, 0, 1, 1]);
    sub.send(&[0xE0, 0]).await;
    sub.read_to_close().await;

    publish_acked(addr, "q/a", 0..500).await;
    crate::support::eventually("480 deliveries spilled to the journal", || async {
        stored_queue(&data, "spill-offline").await == (500, 480)
    })
    .await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    let (_child, addr) = start_weir(&data, limits).await;
    publish_acked(addr, "q/b", 500..700).await;
    let mut back = Raw::connect(addr).await;
    back.send(&connect_v311("spill-offline", false, 0)).await;
    assert_eq!(back.read_packet().await, [0x20, 2, 1, 0], "session present");
    let got = receive_and_ack(&mut back, 700).await;
    assert_eq!(got, expected(0..700), "every acknowledged message, once, in order");
    crate::support::eventually("the stored queue emptied as acknowledgements came", || async {
        stored_queue(&data, "spill-offline").await == (0, 0)
    })
    .await;
}

#[tokio::test]
async fn a_stalled_online_subscriber_costs_disk_not_loss_and_its_spill_goes_with_the_session() {
    let gw = TestGateway::start_with(|c| {
        c.broker.max_queued_messages = 10;
        c.broker.max_inflight = 5;
    })
    .await;
    let mut sub = Raw::connect(gw.tcp).await;
    sub.send(&connect_v311("spill-online", true, 0)).await;
    assert_eq!(sub.read_packet().await, [0x20, 2, 0, 0]);
    sub.send(&packet(0x82, &[0, 1, 0, 3, b'q', b'/', b'#', 1])).await;
    assert_eq!(sub.read_packet().await, [0x90, 3, 0, 1, 1]);

    // The subscriber reads nothing: 5 go in flight, 10 wait in memory, the rest only in the journal.
    publish_acked(gw.tcp, "q/x", 0..300).await;
    crate::support::eventually("285 deliveries spilled", || async {
        stored_queue(gw.data_dir(), "spill-online").await == (285, 285)
    })
    .await;
    let spilled = &gw.gateway().broker().metrics().messages_spilled;
    assert_eq!(spilled.load(std::sync::atomic::Ordering::Relaxed), 285, "counted for $SYS");
    let got = receive_and_ack(&mut sub, 200).await;
    assert_eq!(got, expected(0..200));
    // More while it is still behind: they queue after the spilled ones.
    publish_acked(gw.tcp, "q/x", 300..320).await;
    let got = receive_and_ack(&mut sub, 120).await;
    assert_eq!(got, expected(200..320), "in order across the spill");

    // Falls behind again, then goes away: a clean session's spilled deliveries are forgotten with it.
    publish_acked(gw.tcp, "q/x", 320..400).await;
    crate::support::eventually("spilled again", || async {
        stored_queue(gw.data_dir(), "spill-online").await.1 > 0
    })
    .await;
    drop(sub);
    crate::support::eventually("the ended session's deliveries removed", || async {
        stored_queue(gw.data_dir(), "spill-online").await == (0, 0)
    })
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn a_will_queued_for_an_offline_persistent_session_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut child, addr) = start_weir(&data, "").await;
    // A persistent session subscribed to wills, offline when the will comes.
    let mut ward = Raw::connect(addr).await;
    ward.send(&connect_v311("ward", false, 0)).await;
    assert_eq!(ward.read_packet().await, [0x20, 2, 0, 0]);
    ward.send(&packet(0x82, &[0, 1, 0, 6, b'w', b'i', b'l', b'l', b'/', b'#', 1])).await;
    assert_eq!(ward.read_packet().await, [0x90, 3, 0, 1, 1]);
    ward.send(&[0xE0, 0]).await;
    ward.read_to_close().await;
    // An online watcher sees the will routed: by then the ward's queue has it too.
    let mut watcher = Raw::connect(addr).await;
    watcher.send(&connect_v311("will-watcher", true, 0)).await;
    watcher.read_packet().await;
    watcher.send(&packet(0x82, &[0, 1, 0, 6, b'w', b'i', b'l', b'l', b'/', b'#', 0])).await;
    watcher.read_packet().await;
    // A device with a QoS 1 will (delay 0, session ends with the connection) drops off the network.
    let mut device = Raw::connect(addr).await;
    device.send(&persistent_connect("device", 0, Some(0))).await;
    assert_eq!(device.read_packet().await[3], 0, "CONNACK success");
    drop(device);
    let got = watcher.read_packet().await;
    assert!(got.ends_with(b"will/devicegone"), "{got:?}");
    // Everything the router did before this acknowledgement is committed with or before it.
    let mut p = Raw::connect(addr).await;
    p.send(&connect_v311("barrier", true, 0)).await;
    p.read_packet().await;
    p.send(&publish(1, 1, "barrier", b"x")).await;
    assert_eq!(p.read_packet().await, [0x40, 2, 0, 1]);
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    let (_child, addr) = start_weir(&data, "").await;
    let mut back = Raw::connect(addr).await;
    back.send(&connect_v311("ward", false, 0)).await;
    assert_eq!(back.read_packet().await, [0x20, 2, 1, 0], "session present");
    let (_, payload) = parse_publish(&back.read_packet().await);
    assert_eq!(payload, b"gone", "the will, kept for the offline session across the crash");
}

/// Holds SQLite's write lock on the journal from a second connection, so that the writer cannot commit.
fn hold_journal_write_lock(data: &Path) -> rusqlite::Connection {
    let lock = rusqlite::Connection::open(data.join(store::JOURNAL_FILE)).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    lock
}

fn journaled(lock: &rusqlite::Connection, topic_prefix: &str) -> i64 {
    lock.query_row("SELECT count(*) FROM messages WHERE topic LIKE ? || '%'", [topic_prefix], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn qos1_is_delivered_without_waiting_for_the_disk_and_acknowledged_only_after_it() {
    let gw = TestGateway::start().await;
    let mut sub = Raw::connect(gw.tcp).await;
    sub.send(&connect_v311("early-sub", true, 0)).await;
    sub.read_packet().await;
    sub.send(&packet(0x82, &[0, 1, 0, 7, b'e', b'a', b'r', b'l', b'y', b'/', b'#', 2])).await;
    assert_eq!(sub.read_packet().await, [0x90, 3, 0, 1, 2]);
    let mut p = Raw::connect(gw.tcp).await;
    p.send(&connect_v311("early-pub", true, 0)).await;
    p.read_packet().await;

    // The journal cannot commit: a QoS 2 publish, then a QoS 1 publish.
    let lock = hold_journal_write_lock(gw.data_dir());
    p.send(&publish(2, 1, "early/two", b"2")).await;
    p.send(&publish(1, 2, "early/one", b"1")).await;
    // The QoS 1 message reaches the subscriber while neither is on disk; the QoS 2 one, which must not be
    // delivered twice if the gateway dies before its commit, waits.
    let got = sub.read_packet().await;
    assert_eq!((got[0] & 0xF6, parse_publish(&got).1), (0x32, b"1".to_vec()), "{got:?}");
    assert_eq!(journaled(&lock, "early/"), 0, "delivered before the commit");

    lock.execute_batch("ROLLBACK").unwrap();
    // Acknowledged once committed, in the order they came: PUBREC 1, then PUBACK 2.
    assert_eq!(p.read_packet().await, [0x50, 2, 0, 1]);
    assert_eq!(p.read_packet().await, [0x40, 2, 0, 2]);
    assert_eq!(journaled(&lock, "early/"), 2);
    let got = sub.read_packet().await;
    assert_eq!((got[0] & 0xF6, parse_publish(&got).1), (0x34, b"2".to_vec()), "{got:?}");
    gw.stop().await;
}
