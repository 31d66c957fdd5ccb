//! Kafka forwarding from the journal into a real Kafka-protocol broker (tansu 0.6 from `.ci/setup`'s venv), not
//! a timed test: a backlog of N messages is journaled first, then one uplink route (`--from oldest`) forwards it.
//! Reports msg/s, CPU per 1,000 messages (this process, and tansu), and this process's resident memory sampled
//! every 100 ms during the catch-up. Run: `cargo bench --bench kafka_forward -- --messages N --payload B`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::forward::{self, ops};
use weir::mqtt::broker::{Broker, BrokerConfig, ClientId, Message, Restored};
use weir::mqtt::codec::QoS;
use weir::store::{self, Journal, JournalConfig};

use support::arg;

/// utime + stime of a process, in milliseconds (clock ticks are 100 Hz on Linux).
fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    (fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()) * 10
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    kb / 1024.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let messages = arg("--messages", 200_000);
    let payload = arg("--payload", 64);
    let venv = std::env::var_os("WEIR_KAFKA_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/weir/kafka-venv"));
    let tansu_bin = venv.join("bin/tansu");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut tansu = std::process::Command::new(&tansu_bin)
        .args(["broker", "--listener-url", &format!("tcp://127.0.0.1:{port}")])
        .args(["--advertised-listener-url", &format!("tcp://127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let created = std::process::Command::new(&tansu_bin)
        .args([
            "topic",
            "create",
            "--broker",
            &format!("tcp://127.0.0.1:{port}"),
            "--partitions",
            "3",
            "bench",
        ])
        .status()
        .unwrap();
    assert!(created.success());

    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), JournalConfig::default()).await.unwrap();
    let body = vec![b'x'; payload];
    let filled = Instant::now();
    let mut last = None;
    for i in 0..messages {
        let mut m = Message::new(
            &format!("plant/line{}/sensor{}", i % 7, i % 100),
            body.clone(),
            QoS::AtLeastOnce,
            false,
        );
        m.origin = Some(ClientId::new(&format!("device-{}", i % 100)));
        last = Some(journal.append(&Arc::new(m)).await);
    }
    last.unwrap().await.unwrap().unwrap();
    eprintln!("journaled {messages} messages of {payload} B in {:?}", filled.elapsed());

    let (config_db, _) =
        store::open(dir.path(), store::Database::Config, store::Synchronous::Full, None).await.unwrap();
    let request = ops::SetUpstream {
        name: "bench".into(),
        bootstrap: format!("127.0.0.1:{port}"),
        ..ops::SetUpstream::default()
    };
    ops::upstream_set(&config_db, request, "bench").await.unwrap();
    let route = ops::AddRoute {
        name: "bench".into(),
        upstream: "bench".into(),
        filter: "plant/#".into(),
        topic: "bench".into(),
        key: "topic".into(),
        format: "raw".into(),
        from: "oldest".into(),
        lag_alarm_secs: None,
    };
    ops::route_add(&config_db, route, "bench").await.unwrap();
    let stop = weir::shutdown::Stop::new();
    let (broker, _router) = Broker::start(
        BrokerConfig { sys_interval: None, ..BrokerConfig::default() },
        None,
        None,
        Restored::default(),
        stop.token(),
    );

    let rss_before = rss_mib();
    let (cpu_self, cpu_tansu) = (cpu_ms(std::process::id()), cpu_ms(tansu.id()));
    let started = Instant::now();
    let forwarder = tokio::spawn(forward::run(
        Some(journal.clone()),
        broker.clone(),
        config_db.clone(),
        dir.path().to_owned(),
        stop.token(),
    ));
    let newest: i64 =
        sqlx::query_scalar("SELECT max(id) FROM messages").fetch_one(journal.pool()).await.unwrap();
    let mut rss = Vec::new();
    loop {
        rss.push(rss_mib());
        if journal.cursor("kafka:bench").await.unwrap().is_some_and(|p| p >= newest) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1800), "did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    let (cpu_self, cpu_tansu) = (cpu_ms(std::process::id()) - cpu_self, cpu_ms(tansu.id()) - cpu_tansu);
    stop.fire();
    let _ = forwarder.await;
    let per_k = |ms: u64| ms as f64 / (messages as f64 / 1000.0);
    let at = |fraction: f64| rss[((rss.len() - 1) as f64 * fraction) as usize];
    println!(
        "| payload (B) | messages | seconds | msg/s | weir CPU ms / 1,000 | tansu CPU ms / 1,000 | RSS MiB: before, then at 25 / 50 / 75 / 100 % of the catch-up (max) |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    println!(
        "| {payload} | {messages} | {:.1} | {:.0} | {:.2} | {:.2} | {:.0}, then {:.0} / {:.0} / {:.0} / {:.0} (max {:.0}) |",
        elapsed.as_secs_f64(),
        messages as f64 / elapsed.as_secs_f64(),
        per_k(cpu_self),
        per_k(cpu_tansu),
        rss_before,
        at(0.25),
        at(0.5),
        at(0.75),
        at(1.0),
        rss.iter().cloned().fold(0.0, f64::max),
    );
    journal.close().await;
    let _ = tansu.kill();
    let _ = tansu.wait();
}
