//! The scenarios. Every client is one `rumqttc` event loop driven by its own task (the "pump").

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS, TlsConfiguration,
    Transport,
};
use rustls::ClientConfig;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinHandle;

use crate::RunArgs;
use crate::proc_stats::{self, ProcSample};
use crate::report::Report;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    FanIn,
    FanOut,
    Pairs,
    ConnectStorm,
    Idle,
    Retained,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::FanIn => "fan-in",
            Kind::FanOut => "fan-out",
            Kind::Pairs => "pairs",
            Kind::ConnectStorm => "connect-storm",
            Kind::Idle => "idle",
            Kind::Retained => "retained",
        }
    }
}

pub(crate) fn run(kind: Kind, args: RunArgs) -> Result<()> {
    let nofile = proc_stats::raise_nofile_limit();
    if matches!(kind, Kind::Idle | Kind::ConnectStorm) && (args.clients as u64) + 64 > nofile {
        eprintln!(
            "warning: open-file limit {nofile} is below {} connections; raise it (ulimit -n)",
            args.clients
        );
    }
    let tls = crate::tls::client_config(&args.tls, &args.host)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(async {
        match kind {
            Kind::FanIn | Kind::FanOut | Kind::Pairs => pub_sub(kind, &args, tls).await,
            Kind::ConnectStorm | Kind::Idle => connections(kind, &args, tls).await,
            Kind::Retained => retained(&args, tls).await,
        }
    })?;
    // Pumps still closing their connections must not hold the process up.
    rt.shutdown_timeout(Duration::from_secs(1));
    eprintln!("{}", report.summary());
    let line = serde_json::to_string(&report)?;
    match &args.out {
        Some(path) => {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            writeln!(f, "{line}")?;
        }
        None => println!("{line}"),
    }
    report.problems().map_or(Ok(()), |p| Err(anyhow!("{}: {p}", report.name)))
}

fn qos_of(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Nanoseconds since the Unix epoch: the clock every process on this machine shares.
fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn default_name(kind: Kind, a: &RunArgs) -> String {
    let rate = if a.rate == 0 { "max".to_owned() } else { format!("{}/s", a.rate) };
    let name = match kind {
        Kind::FanIn => format!("fan-in QoS{} {}->1 {}B {rate}", a.qos, a.clients, a.payload),
        Kind::FanOut => format!("fan-out QoS{} 1->{} {}B {rate}", a.qos, a.clients, a.payload),
        Kind::Pairs => format!("pairs QoS{} {}x {}B {rate}", a.qos, a.clients, a.payload),
        Kind::ConnectStorm => format!("connect-storm {}", a.clients),
        Kind::Idle => format!("idle {}", a.clients),
        Kind::Retained => format!("retained {} x {}B", a.clients, a.payload),
    };
    if a.tls.tls { format!("{name} TLS") } else { name }
}

fn sample(pid: Option<u32>) -> Result<Option<ProcSample>> {
    pid.map(proc_stats::sample).transpose()
}

/// Counters shared by every pump of a run.
#[derive(Debug, Default)]
struct Shared {
    received: AtomicU64,
    acked: AtomicU64,
    last_recv_ns: AtomicU64,
}

/// What a pump hands back when its connection is done.
#[derive(Debug, Default)]
struct PumpResult {
    latencies_ns: Vec<u64>,
    /// QoS 1/2 publishers: from writing a PUBLISH to its PUBACK (QoS 1) or PUBCOMP (QoS 2).
    ack_latencies_ns: Vec<u64>,
}

/// One connected client: its handle and the task driving its event loop.
#[derive(Debug)]
struct Conn {
    client: AsyncClient,
    pump: JoinHandle<Result<PumpResult>>,
    connect_time: Duration,
}

struct ConnSpec<'a> {
    args: &'a RunArgs,
    /// `Some` for TLS: the run's one client configuration.
    tls: Option<Arc<ClientConfig>>,
    id: String,
    subscribe: Option<(String, QoS)>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    /// Capacity of the request channel between the client handle and its event loop.
    cap: usize,
}

/// Connects (and subscribes), returning once CONNACK (and SUBACK) arrived. Errors do not name the client, so
/// that failures can be counted by reason; callers add the client id where they report one.
async fn connect(spec: ConnSpec<'_>) -> Result<Conn> {
    let a = spec.args;
    let mut opts = MqttOptions::new(spec.id.clone(), a.host.clone(), a.port);
    opts.set_keep_alive(Duration::from_secs(a.keep_alive.max(5)))
        .set_clean_session(true)
        .set_max_packet_size(a.payload as usize + 1024, a.payload as usize + 1024)
        .set_inflight(100);
    if let Some(config) = spec.tls {
        opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(config)));
    }
    if let Some(u) = &a.username {
        let n = spec.id.rsplit('-').next().unwrap_or("0");
        opts.set_credentials(u.replace("{n}", n), a.password.clone().unwrap_or_default());
    }
    let started = Instant::now();
    let (client, mut eventloop) = AsyncClient::new(opts, spec.cap);
    // rumqttc gives up on a CONNECT after 5 s by default; a broker verifying passwords may take longer in a storm.
    let mut network = eventloop.network_options();
    network.set_connection_timeout(a.connect_timeout.ceil() as u64);
    eventloop.set_network_options(network);
    let (ready_tx, ready_rx) = oneshot::channel();
    let pump =
        tokio::spawn(pump(eventloop, client.clone(), spec.subscribe, spec.shared, spec.stop, ready_tx));
    let timeout = Duration::from_secs_f64(a.connect_timeout);
    match tokio::time::timeout(timeout, ready_rx).await {
        Ok(Ok(())) => Ok(Conn { client, pump, connect_time: started.elapsed() }),
        Ok(Err(_)) => match pump.await {
            Ok(Err(e)) => Err(e),
            _ => Err(anyhow!("ended before it was ready")),
        },
        Err(_) => {
            pump.abort();
            Err(anyhow!("no CONNACK/SUBACK within {timeout:?}"))
        }
    }
}

async fn pump(
    mut eventloop: EventLoop,
    client: AsyncClient,
    subscribe: Option<(String, QoS)>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    ready: oneshot::Sender<()>,
) -> Result<PumpResult> {
    let mut ready = Some(ready);
    let mut subscribe = subscribe;
    let mut result = PumpResult::default();
    // When each outstanding packet id's PUBLISH was written (ns); allocated by the first one.
    let mut written_at: Vec<u64> = Vec::new();
    loop {
        let event = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = stop.changed() => break,
        };
        match event.map_err(describe)? {
            Event::Incoming(Incoming::ConnAck(ack)) => {
                if ack.code != rumqttc::ConnectReturnCode::Success {
                    bail!("CONNACK {:?}", ack.code);
                }
                match subscribe.take() {
                    Some((filter, qos)) => client.try_subscribe(filter, qos)?,
                    None => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                }
            }
            Event::Incoming(Incoming::SubAck(ack)) => {
                if ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                    bail!("subscription refused");
                }
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            Event::Incoming(Incoming::Publish(p)) => {
                let now = now_ns();
                if let Some(sent) = p.payload.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                    result.latencies_ns.push(now.saturating_sub(u64::from_be_bytes(sent)));
                }
                shared.received.fetch_add(1, Ordering::Relaxed);
                shared.last_recv_ns.fetch_max(now, Ordering::Relaxed);
            }
            Event::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => {
                if written_at.is_empty() {
                    written_at = vec![0; usize::from(u16::MAX) + 1];
                }
                if let Some(at) = written_at.get_mut(usize::from(pkid)) {
                    *at = now_ns();
                }
            }
            Event::Incoming(Incoming::PubAck(rumqttc::PubAck { pkid, .. }))
            | Event::Incoming(Incoming::PubComp(rumqttc::PubComp { pkid, .. })) => {
                shared.acked.fetch_add(1, Ordering::Relaxed);
                if let Some(at) = written_at.get_mut(usize::from(pkid)).filter(|at| **at != 0) {
                    result.ack_latencies_ns.push(now_ns().saturating_sub(*at));
                    *at = 0;
                }
            }
            _ => {}
        }
    }
    // Polite DISCONNECT, bounded so that thousands of closing clients cannot hold the run up.
    if client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Ok(ev) = eventloop.poll().await {
                if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
    Ok(result)
}

/// A connection error as a failure reason (one line, counted by its text): TLS failures say so.
fn describe(e: ConnectionError) -> anyhow::Error {
    match (&e, rustls_error(&e)) {
        (ConnectionError::Tls(_), Some(tls)) => anyhow!("TLS handshake failed: {tls}"),
        (ConnectionError::Tls(tls), None) => anyhow!("TLS handshake failed: {tls}"),
        // With TLS 1.3 the client's side of the handshake ends first, so a server refusing the client's
        // certificate shows as an alert on the first read.
        (_, Some(tls)) => anyhow!("TLS failed after the handshake: {tls}"),
        // The top error's text already includes its sources.
        (_, None) => anyhow!("connection: {e}"),
    }
}

/// The rustls error under `e`, also inside the `io::Error`s that tokio-rustls wraps them in.
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(e);
    while let Some(err) = next {
        let inner = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
        if let Some(tls) = err.downcast_ref::<rustls::Error>().or_else(|| inner?.downcast_ref()) {
            return Some(tls);
        }
        next = err.source();
    }
    None
}

fn payload(size: usize, seq: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(size);
    p.extend_from_slice(&now_ns().to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.resize(size, 0);
    p
}

/// Publishes on `topic` until `deadline`, at `rate` msg/s (0: as fast as the client takes them). Returns the count.
async fn publish_loop(
    client: AsyncClient,
    topic: String,
    qos: QoS,
    size: usize,
    rate: f64,
    deadline: Instant,
) -> Result<u64> {
    let start = Instant::now();
    let mut seq: u64 = 0;
    if rate <= 0.0 {
        while Instant::now() < deadline {
            client.publish(topic.clone(), qos, false, payload(size, seq)).await?;
            seq += 1;
        }
    } else {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let due = ((now - start).as_secs_f64() * rate) as u64;
            while seq < due {
                client.publish(topic.clone(), qos, false, payload(size, seq)).await?;
                seq += 1;
            }
        }
    }
    Ok(seq)
}

fn percentile(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(idx.min(sorted.len() - 1)).map(|&ns| ns as f64 / 1000.0)
}

fn base_report(kind: Kind, a: &RunArgs) -> Report {
    Report {
        name: a.name.clone().unwrap_or_else(|| default_name(kind, a)),
        broker: a.broker.clone(),
        scenario: kind.as_str().to_owned(),
        clients: a.clients,
        qos: a.qos,
        payload: a.payload,
        rate: a.rate,
        duration_s: a.duration,
        tls: a.tls.tls,
        ..Report::default()
    }
}

async fn pub_sub(kind: Kind, a: &RunArgs, tls: Option<Arc<ClientConfig>>) -> Result<Report> {
    let n = a.clients.max(1);
    let qos = qos_of(a.qos);
    let run = format!("weir-bench/{}", std::process::id());
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let before = sample(a.broker_pid)?;

    // (publisher topic, number of them) and (subscriber filter, number of them).
    let (pub_topics, sub_filters): (Vec<String>, Vec<String>) = match kind {
        Kind::FanIn => {
            ((0..n).map(|i| format!("{run}/fan-in/{i}")).collect(), vec![format!("{run}/fan-in/+")])
        }
        Kind::FanOut => (vec![format!("{run}/fan-out")], vec![format!("{run}/fan-out"); n]),
        _ => (
            (0..n).map(|i| format!("{run}/pairs/{i}")).collect(),
            (0..n).map(|i| format!("{run}/pairs/{i}")).collect(),
        ),
    };
    let fanout = match kind {
        Kind::FanOut => n as u64,
        _ => 1,
    };

    let mut subs = Vec::new();
    for (i, filter) in sub_filters.into_iter().enumerate() {
        let id = format!("lg-{}-sub-{i}", std::process::id());
        let spec = ConnSpec {
            args: a,
            tls: tls.clone(),
            id: id.clone(),
            subscribe: Some((filter, qos)),
            shared: shared.clone(),
            stop: stop_rx.clone(),
            cap: 10,
        };
        subs.push(connect(spec).await.with_context(|| format!("client {id}"))?);
    }
    let mut pubs = Vec::new();
    for (i, topic) in pub_topics.iter().enumerate() {
        let id = format!("lg-{}-pub-{i}", std::process::id());
        let spec = ConnSpec {
            args: a,
            tls: tls.clone(),
            id: id.clone(),
            subscribe: None,
            shared: shared.clone(),
            stop: stop_rx.clone(),
            cap: 64,
        };
        pubs.push((connect(spec).await.with_context(|| format!("client {id}"))?, topic.clone()));
    }

    let per_pub_rate = a.rate as f64 / pubs.len() as f64;
    let t0 = Instant::now();
    let t0_ns = now_ns();
    let deadline = t0 + Duration::from_secs_f64(a.duration);
    let loops: Vec<_> = pubs
        .iter()
        .map(|(c, topic)| {
            tokio::spawn(publish_loop(
                c.client.clone(),
                topic.clone(),
                qos,
                a.payload as usize,
                per_pub_rate,
                deadline,
            ))
        })
        .collect();
    let mut sent = 0;
    for l in loops {
        sent += l.await??;
    }
    let pub_elapsed = t0.elapsed().as_secs_f64();

    // Wait for what is still in flight: acknowledgements (QoS 1/2) and deliveries, until everything expected
    // has come or nothing has moved for a second (QoS 0 may lose), at most --drain seconds.
    let expected = sent * fanout;
    let drain_until = Instant::now() + Duration::from_secs_f64(a.drain);
    let mut last = (u64::MAX, Instant::now());
    while Instant::now() < drain_until {
        let got = shared.received.load(Ordering::Relaxed);
        let acked = shared.acked.load(Ordering::Relaxed);
        if got >= expected && (a.qos == 0 || acked >= sent) {
            break;
        }
        if got + acked != last.0 {
            last = (got + acked, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = sample(a.broker_pid)?;
    let _ = stop_tx.send(true);

    let mut latencies = Vec::new();
    let mut ack_latencies = Vec::new();
    for c in subs.into_iter().chain(pubs.into_iter().map(|(c, _)| c)) {
        match c.pump.await {
            Ok(Ok(r)) => {
                latencies.extend(r.latencies_ns);
                ack_latencies.extend(r.ack_latencies_ns);
            }
            Ok(Err(e)) => eprintln!("warning: {e:#}"),
            Err(e) => eprintln!("warning: client task: {e}"),
        }
    }
    latencies.sort_unstable();
    ack_latencies.sort_unstable();

    let received = shared.received.load(Ordering::Relaxed);
    let last_ns = shared.last_recv_ns.load(Ordering::Relaxed);
    let recv_elapsed = (last_ns.saturating_sub(t0_ns) as f64 / 1e9).max(pub_elapsed.min(a.duration));
    let mut r = base_report(kind, a);
    r.connected = a.clients;
    r.sent = sent;
    r.received = received;
    r.expected = expected;
    r.lost = expected as i64 - received as i64;
    r.lossless_expected = a.qos > 0;
    r.sent_per_s = Some(sent as f64 / pub_elapsed);
    r.received_per_s = Some(if received == 0 { 0.0 } else { received as f64 / recv_elapsed });
    r.latency_p50_us = percentile(&latencies, 0.50);
    r.latency_p99_us = percentile(&latencies, 0.99);
    r.latency_p999_us = percentile(&latencies, 0.999);
    r.latency_max_us = latencies.last().map(|&ns| ns as f64 / 1000.0);
    r.ack_p50_us = percentile(&ack_latencies, 0.50);
    r.ack_p99_us = percentile(&ack_latencies, 0.99);
    r.set_proc(before, after, a.clients);
    Ok(r)
}

async fn connections(kind: Kind, a: &RunArgs, tls: Option<Arc<ClientConfig>>) -> Result<Report> {
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let before = sample(a.broker_pid)?;
    let own_before = proc_stats::sample(std::process::id())?;
    let limit = match (kind, a.concurrency) {
        (_, c) if c > 0 => c,
        (Kind::Idle, _) => 200,
        _ => a.clients.max(1),
    };
    let sem = Arc::new(Semaphore::new(limit));
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(a.clients);
    for i in 0..a.clients {
        let sem = sem.clone();
        let args = a.clone();
        let shared = shared.clone();
        let stop = stop_rx.clone();
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let spec = ConnSpec {
                args: &args,
                tls,
                id: format!("lg-{}-c-{i}", std::process::id()),
                subscribe: None,
                shared,
                stop,
                cap: 4,
            };
            let c = connect(spec).await?;
            Ok::<_, anyhow::Error>((c, t0.elapsed()))
        }));
    }
    let mut conns = Vec::with_capacity(a.clients);
    let mut connect_times = Vec::with_capacity(a.clients);
    let mut all_connected = Duration::ZERO;
    let mut failed = 0;
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        match t.await? {
            Ok((c, at)) => {
                all_connected = all_connected.max(at);
                connect_times.push(c.connect_time.as_nanos() as u64);
                conns.push(c);
            }
            Err(e) => {
                failed += 1;
                *failures.entry(format!("{e:#}")).or_default() += 1;
            }
        }
    }
    for (reason, count) in &failures {
        eprintln!("warning: {count} of {} clients failed: {reason}", a.clients);
    }
    let own_after = proc_stats::sample(std::process::id())?;
    if kind == Kind::Idle && !conns.is_empty() {
        // Hold them idle: the broker's memory settles (and idle costs show) over this time.
        tokio::time::sleep(Duration::from_secs_f64(a.duration)).await;
    }
    let after = sample(a.broker_pid)?;
    let _ = stop_tx.send(true);
    for c in conns.iter() {
        let _ = c.client.try_disconnect();
    }
    let connected = conns.len();
    for c in conns {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.pump).await;
    }
    connect_times.sort_unstable();

    let mut r = base_report(kind, a);
    r.connected = connected;
    r.failed = failed;
    r.failures = failures;
    if kind == Kind::ConnectStorm && connected > 0 {
        let secs = all_connected.as_secs_f64();
        r.connect_all_s = Some(secs);
        r.connects_per_s = Some(connected as f64 / secs);
        r.latency_p50_us = percentile(&connect_times, 0.50);
        r.latency_p99_us = percentile(&connect_times, 0.99);
        r.latency_max_us = connect_times.last().map(|&ns| ns as f64 / 1000.0);
    }
    r.set_proc(before, after, connected);
    r.client_cpu_s = Some(own_after.cpu_s - own_before.cpu_s);
    let _ = shared;
    Ok(r)
}

/// Subscriptions timed in the retained scenario.
const RETAINED_SUBSCRIPTIONS: usize = 500;

/// `--clients` retained topics `<run>/retained/<i>/state` (QoS 1, `--payload` bytes, acknowledged), then
/// [`RETAINED_SUBSCRIPTIONS`] subscriptions to `<run>/retained/<k>/#`, one at a time on one connection, each
/// timed from SUBSCRIBE to its retained message and then unsubscribed: what a new subscription costs the broker
/// when it holds many retained values (the last known value of every sensor), and the memory they take.
async fn retained(a: &RunArgs, tls: Option<Arc<ClientConfig>>) -> Result<Report> {
    let n = a.clients.max(1);
    let run = format!("weir-bench/{}", std::process::id());
    let before = sample(a.broker_pid)?;
    let mut opts = MqttOptions::new(format!("lg-{}-retained", std::process::id()), a.host.clone(), a.port);
    opts.set_keep_alive(Duration::from_secs(a.keep_alive.max(5)))
        .set_clean_session(true)
        .set_max_packet_size(a.payload as usize + 1024, a.payload as usize + 1024)
        .set_inflight(100);
    if let Some(config) = tls {
        opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(config)));
    }
    if let Some(u) = &a.username {
        opts.set_credentials(u.replace("{n}", "0"), a.password.clone().unwrap_or_default());
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let timeout = Duration::from_secs_f64(a.connect_timeout);
    // Drives the event loop until `done` says what it waited for has come.
    async fn until(
        eventloop: &mut EventLoop,
        timeout: Duration,
        mut done: impl FnMut(&Event) -> bool,
    ) -> Result<()> {
        tokio::time::timeout(timeout, async {
            loop {
                let event = eventloop.poll().await.map_err(describe)?;
                if done(&event) {
                    return Ok(());
                }
            }
        })
        .await
        .map_err(|_| anyhow!("timed out"))?
    }
    until(&mut eventloop, timeout, |e| matches!(e, Event::Incoming(Incoming::ConnAck(_)))).await?;

    // Publishing, concurrently with the event loop that sends the packets and counts the acknowledgements.
    let payload = vec![b'r'; a.payload as usize];
    let publisher = {
        let (client, run, payload) = (client.clone(), run.clone(), payload.clone());
        tokio::spawn(async move {
            for i in 0..n {
                client
                    .publish(format!("{run}/retained/{i}/state"), QoS::AtLeastOnce, true, payload.clone())
                    .await?;
            }
            Ok::<_, rumqttc::ClientError>(())
        })
    };
    let mut acked = 0;
    until(&mut eventloop, Duration::from_secs(600), |e| {
        acked += usize::from(matches!(e, Event::Incoming(Incoming::PubAck(_))));
        acked == n
    })
    .await?;
    publisher.await??;

    let mut latencies = Vec::with_capacity(RETAINED_SUBSCRIPTIONS);
    for k in 0..RETAINED_SUBSCRIPTIONS {
        let filter = format!("{run}/retained/{}/#", (k * 7919) % n);
        let started = Instant::now();
        client.subscribe(filter.clone(), QoS::AtMostOnce).await?;
        until(&mut eventloop, timeout, |e| matches!(e, Event::Incoming(Incoming::Publish(p)) if p.retain))
            .await
            .with_context(|| format!("the retained message for {filter}"))?;
        latencies.push(started.elapsed().as_nanos() as u64);
        client.unsubscribe(filter).await?;
        until(&mut eventloop, timeout, |e| matches!(e, Event::Incoming(Incoming::UnsubAck(_)))).await?;
    }
    let after = sample(a.broker_pid)?;
    // Not cleared: compare.sh starts every broker afresh.
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(event) = eventloop.poll().await {
            if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
    latencies.sort_unstable();
    let mut r = base_report(Kind::Retained, a);
    r.connected = 1;
    r.clients = 1;
    r.sent = n as u64;
    r.received = latencies.len() as u64;
    r.latency_p50_us = percentile(&latencies, 0.50);
    r.latency_p99_us = percentile(&latencies, 0.99);
    r.latency_max_us = latencies.last().map(|&ns| ns as f64 / 1000.0);
    r.set_proc(before, after, n);
    Ok(r)
}
