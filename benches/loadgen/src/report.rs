//! One run's result ([`Report`], one JSON line) and the Markdown table made from many.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::proc_stats::ProcSample;

/// The result of one scenario run against one broker configuration.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Report {
    pub(crate) name: String,
    pub(crate) broker: String,
    pub(crate) scenario: String,
    pub(crate) clients: usize,
    pub(crate) qos: u8,
    pub(crate) payload: u64,
    /// Requested total publish rate, msg/s; 0 = as fast as possible.
    pub(crate) rate: u64,
    pub(crate) duration_s: f64,
    /// The clients connected over TLS (`--tls`).
    pub(crate) tls: bool,
    pub(crate) connected: usize,
    pub(crate) failed: usize,
    /// Failed connects by reason (e.g. `TLS handshake failed: ...`), so that a refused handshake is told apart
    /// from a refused CONNECT or a timeout.
    pub(crate) failures: BTreeMap<String, usize>,
    pub(crate) sent: u64,
    pub(crate) received: u64,
    /// sent x subscribers per message.
    pub(crate) expected: u64,
    /// expected - received (negative: duplicates).
    pub(crate) lost: i64,
    /// QoS 1/2: any loss is a failure of the broker; QoS 0 may drop under overload.
    pub(crate) lossless_expected: bool,
    pub(crate) sent_per_s: Option<f64>,
    pub(crate) received_per_s: Option<f64>,
    /// Publish-to-delivery latency (pub/sub) or CONNECT-to-CONNACK time (connect-storm), microseconds.
    pub(crate) latency_p50_us: Option<f64>,
    pub(crate) latency_p99_us: Option<f64>,
    pub(crate) latency_p999_us: Option<f64>,
    pub(crate) latency_max_us: Option<f64>,
    /// QoS 1/2: from writing a PUBLISH to its PUBACK (QoS 1) or PUBCOMP (QoS 2), microseconds. With a journal
    /// this includes the commit (and its sync); delivery does not wait for it.
    pub(crate) ack_p50_us: Option<f64>,
    pub(crate) ack_p99_us: Option<f64>,
    pub(crate) connect_all_s: Option<f64>,
    pub(crate) connects_per_s: Option<f64>,
    pub(crate) rss_before_kb: Option<u64>,
    pub(crate) rss_after_kb: Option<u64>,
    /// (RSS after - RSS before) / connections (idle), or / retained messages (retained), bytes.
    pub(crate) rss_per_conn_bytes: Option<f64>,
    pub(crate) cpu_before_s: Option<f64>,
    pub(crate) cpu_after_s: Option<f64>,
    /// Broker CPU seconds (user + system) used during the run.
    pub(crate) cpu_s: Option<f64>,
    /// The load generator's own CPU seconds (connect-storm: until every client connected or failed), since it
    /// shares the machine's cores with the broker.
    pub(crate) client_cpu_s: Option<f64>,
}

impl Report {
    pub(crate) fn set_proc(&mut self, before: Option<ProcSample>, after: Option<ProcSample>, conns: usize) {
        self.rss_before_kb = before.map(|s| s.rss_kb);
        self.rss_after_kb = after.map(|s| s.rss_kb);
        self.cpu_before_s = before.map(|s| s.cpu_s);
        self.cpu_after_s = after.map(|s| s.cpu_s);
        if let (Some(b), Some(a)) = (before, after) {
            self.cpu_s = Some(a.cpu_s - b.cpu_s);
            if conns > 0 {
                self.rss_per_conn_bytes = Some((a.rss_kb as f64 - b.rss_kb as f64) * 1024.0 / conns as f64);
            }
        }
    }

    fn is_pub_sub(&self) -> bool {
        matches!(self.scenario.as_str(), "fan-in" | "fan-out" | "pairs")
    }

    /// Why this run does not count as having run, if it does not. Speeds are never judged.
    pub(crate) fn problems(&self) -> Option<String> {
        if self.failed > 0 || self.connected < self.clients {
            let mut p = format!("{} of {} clients connected", self.connected, self.clients);
            for (reason, count) in &self.failures {
                let _ = write!(p, "; {count} failed: {reason}");
            }
            return Some(p);
        }
        if self.is_pub_sub() {
            if self.sent == 0 || self.received == 0 {
                return Some(format!("sent {} received {}", self.sent, self.received));
            }
            if self.latency_p99_us.is_none() {
                return Some("no latency measured".to_owned());
            }
            if self.lossless_expected && self.lost > 0 {
                return Some(format!("QoS {} lost {} of {} messages", self.qos, self.lost, self.expected));
            }
        }
        if self.scenario == "retained" && self.latency_p99_us.is_none() {
            return Some("no subscription measured".to_owned());
        }
        if self.scenario == "connect-storm" && self.connects_per_s.is_none() {
            return Some("no connect rate measured".to_owned());
        }
        None
    }

    pub(crate) fn summary(&self) -> String {
        let tls = if self.tls { " (TLS)" } else { "" };
        let mut s = format!("[{}] {}{tls}:", self.broker, self.name);
        for (label, v) in self.metrics() {
            if let Some(v) = v {
                let _ = write!(s, " {label}={}", fmt_num(v));
            }
        }
        s
    }

    /// The rows this run contributes to the table, in order.
    fn metrics(&self) -> Vec<(&'static str, Option<f64>)> {
        let mb = |kb: Option<u64>| kb.map(|k| k as f64 / 1024.0);
        let ms = |us: Option<f64>| us.map(|u| u / 1000.0);
        match self.scenario.as_str() {
            "retained" => vec![
                ("retained messages", Some(self.sent as f64)),
                ("SUBSCRIBE->retained message p50 (ms)", ms(self.latency_p50_us)),
                ("SUBSCRIBE->retained message p99 (ms)", ms(self.latency_p99_us)),
                ("broker RSS after (MB)", mb(self.rss_after_kb)),
                ("RSS per retained message (bytes)", self.rss_per_conn_bytes),
                ("broker CPU (s)", self.cpu_s),
            ],
            "connect-storm" => vec![
                ("connects/s", self.connects_per_s),
                ("time until all connected (s)", self.connect_all_s),
                ("CONNECT->CONNACK p50 (ms)", ms(self.latency_p50_us)),
                ("CONNECT->CONNACK p99 (ms)", ms(self.latency_p99_us)),
                ("failed connects", Some(self.failed as f64)),
                ("broker CPU (s)", self.cpu_s),
                ("load generator CPU (s)", self.client_cpu_s),
                ("broker RSS after (MB)", mb(self.rss_after_kb)),
            ],
            "idle" => vec![
                ("connections held", Some(self.connected as f64)),
                ("broker RSS before (MB)", mb(self.rss_before_kb)),
                ("broker RSS after (MB)", mb(self.rss_after_kb)),
                ("RSS per connection (bytes)", self.rss_per_conn_bytes),
                ("broker CPU while idle (s)", self.cpu_s),
            ],
            _ => vec![
                ("sent msg/s", self.sent_per_s),
                ("received msg/s", self.received_per_s),
                (
                    if self.lossless_expected { "lost (must be 0)" } else { "lost (QoS 0 may drop)" },
                    Some(self.lost as f64),
                ),
                ("latency p50 (us)", self.latency_p50_us),
                ("latency p99 (us)", self.latency_p99_us),
                ("latency p99.9 (us)", self.latency_p999_us),
                ("PUBACK/PUBCOMP p50 (us)", self.ack_p50_us),
                ("PUBACK/PUBCOMP p99 (us)", self.ack_p99_us),
                ("broker CPU (s)", self.cpu_s),
                ("broker RSS after (MB)", mb(self.rss_after_kb)),
            ],
        }
    }
}

fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn read_reports(files: &[PathBuf]) -> Result<Vec<Report>> {
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            out.push(serde_json::from_str(line).with_context(|| format!("{}:{}", f.display(), i + 1))?);
        }
    }
    Ok(out)
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    if !v.iter().any(|x| x == s) {
        v.push(s.to_owned());
    }
}

pub(crate) fn print_table(files: &[PathBuf], check: bool) -> Result<()> {
    let reports = read_reports(files)?;
    let mut names = Vec::new();
    let mut brokers = Vec::new();
    for r in &reports {
        push_unique(&mut names, &r.name);
        push_unique(&mut brokers, &r.broker);
    }
    // Ratio columns: every Weir configuration against every Mosquitto configuration.
    let weirs: Vec<&String> = brokers.iter().filter(|b| b.starts_with("weir")).collect();
    let mosqs: Vec<&String> = brokers.iter().filter(|b| b.starts_with("mosquitto")).collect();
    let mut out = String::from("| run | metric |");
    for b in &brokers {
        let _ = write!(out, " {b} |");
    }
    for w in &weirs {
        for m in &mosqs {
            let _ = write!(out, " {w} / {m} |");
        }
    }
    out.push_str("\n| --- | --- |");
    for _ in 0..brokers.len() + weirs.len() * mosqs.len() {
        out.push_str(" ---: |");
    }
    out.push('\n');
    for name in &names {
        let of = |b: &str| reports.iter().rev().find(|r| &r.name == name && r.broker == b);
        let Some(first) = brokers.iter().find_map(|b| of(b)) else { continue };
        for (i, (label, _)) in first.metrics().into_iter().enumerate() {
            let value = |b: &str| of(b).and_then(|r| r.metrics().get(i).and_then(|m| m.1));
            if i > 0 && brokers.iter().all(|b| value(b).is_none()) {
                // Not measured in this run (acknowledgement times of QoS 0, for one).
                continue;
            }
            let _ = write!(out, "| {name} | {label} |");
            for b in &brokers {
                let cell = match of(b) {
                    None => "-".to_owned(),
                    Some(r) if r.problems().is_some() && i == 0 => {
                        format!("{} (FAILED)", value(b).map_or("-".to_owned(), fmt_num))
                    }
                    Some(_) => value(b).map_or("-".to_owned(), fmt_num),
                };
                let _ = write!(out, " {cell} |");
            }
            for w in &weirs {
                for m in &mosqs {
                    let cell = match (value(w), value(m)) {
                        (Some(x), Some(y)) if y != 0.0 => format!("{:.2}", x / y),
                        _ => "-".to_owned(),
                    };
                    let _ = write!(out, " {cell} |");
                }
            }
            out.push('\n');
        }
    }
    print!("{out}");
    if check {
        let bad: Vec<String> = reports
            .iter()
            .filter_map(|r| r.problems().map(|p| format!("[{}] {}: {p}", r.broker, r.name)))
            .collect();
        if reports.is_empty() {
            bail!("no results");
        }
        if !bad.is_empty() {
            bail!("runs that did not complete:\n{}", bad.join("\n"));
        }
        eprintln!("all {} runs completed", reports.len());
    }
    Ok(())
}

pub(crate) fn print_half_rate(file: &PathBuf, name: &str) -> Result<()> {
    let reports = read_reports(std::slice::from_ref(file))?;
    let min = reports
        .iter()
        .filter(|r| r.name == name)
        .filter_map(|r| r.sent_per_s)
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    if !min.is_finite() {
        bail!("no run named {name:?} with a send rate in {}", file.display());
    }
    println!("{}", ((min / 2.0) as u64).max(1));
    Ok(())
}
