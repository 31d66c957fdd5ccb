//! The overview: what the gateway is doing now, and what needs attention.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::response::Response;

use super::session::Signed;
use super::{AppState, Nav, WebError, render};
use crate::mqtt::broker::Metrics;
use crate::store::JOURNAL_FILE;

/// Message rates, from the counters' change between two looks (at least a second apart).
#[derive(Debug, Default)]
pub(super) struct Rates {
    last: Mutex<Option<Sample>>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    received: u64,
    sent: u64,
    in_rate: f64,
    out_rate: f64,
}

impl Rates {
    fn sample(&self, received: u64, sent: u64) -> (f64, f64) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let next = match *last {
            Some(s) if now.duration_since(s.at).as_secs_f64() < 1.0 => s,
            Some(s) => {
                let secs = now.duration_since(s.at).as_secs_f64();
                Sample {
                    at: now,
                    received,
                    sent,
                    in_rate: received.saturating_sub(s.received) as f64 / secs,
                    out_rate: sent.saturating_sub(s.sent) as f64 / secs,
                }
            }
            None => Sample { at: now, received, sent, in_rate: 0.0, out_rate: 0.0 },
        };
        *last = Some(next);
        (next.in_rate, next.out_rate)
    }
}

#[derive(Debug, serde::Serialize)]
pub(super) struct Overview {
    version: &'static str,
    uptime: String,
    clients: usize,
    sessions: usize,
    subscriptions: usize,
    retained: usize,
    received: u64,
    sent: u64,
    in_rate: u64,
    out_rate: u64,
    journal: String,
    free_disk: String,
    /// Kafka routes by state: `2 forwarding, 1 paused`.
    kafka: String,
    alarms: Vec<String>,
}

#[derive(askama::Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    nav: Nav,
    o: Overview,
}

pub(super) async fn overview_get(
    signed: Signed,
    State(state): State<AppState>,
) -> Result<Response, WebError> {
    Ok(render(&OverviewPage { nav: Nav::of(&signed, "overview"), o: overview(&state).await? }))
}

pub(super) async fn api_get(
    _signed: Signed,
    State(state): State<AppState>,
) -> Result<Json<Overview>, WebError> {
    Ok(Json(overview(&state).await?))
}

async fn overview(state: &AppState) -> Result<Overview, WebError> {
    let broker = &state.inner.broker;
    let stats = broker.stats().await.map_err(|e| WebError::Internal(e.to_string()))?;
    let metrics = broker.metrics();
    let (received, sent) = (Metrics::get(&metrics.messages_received), Metrics::get(&metrics.messages_sent));
    let (in_rate, out_rate) = state.inner.rates.sample(received, sent);
    let data_dir = state.ops().data_dir();
    let journal = match &state.inner.journal {
        Some(_) => {
            let size: u64 = ["", "-wal"]
                .iter()
                .filter_map(|suffix| std::fs::metadata(data_dir.join(format!("{JOURNAL_FILE}{suffix}"))).ok())
                .map(|m| m.len())
                .sum::<u64>()
                + crate::store::payload_log::disk_bytes(&crate::store::payload_log::dir_of(
                    &data_dir.join(JOURNAL_FILE),
                ));
            bytes(size)
        }
        None => "off (durability = \"off\")".to_owned(),
    };
    let free = crate::interfaces::free_bytes(data_dir).ok();
    let mut alarms = Vec::new();
    let dropped = Metrics::get(&metrics.messages_dropped);
    if dropped > 0 {
        alarms.push(format!("{dropped} messages dropped for subscribers whose queues were full"));
    }
    if let Some(journal) = &state.inner.journal {
        let refused = Metrics::get(&journal.stats().refused);
        if refused > 0 {
            alarms.push(format!("{refused} messages refused by the journal (disk full or hard cap)"));
        }
    }
    if free.is_some_and(|f| f < 100 * 1024 * 1024) {
        alarms.push("less than 100 MB of disk left".to_owned());
    }
    let kafka = kafka_routes(crate::forward::ops::status(data_dir), &mut alarms);
    let soon = crate::timefmt::now_ms() + 30 * 86_400_000;
    for cert in state.ops().list_certs().await? {
        if cert.revoked_at.is_none() && cert.not_after < soon {
            alarms.push(format!(
                "certificate {} expires {}",
                cert.common_name,
                crate::timefmt::format(cert.not_after)
            ));
        }
    }
    Ok(Overview {
        version: env!("CARGO_PKG_VERSION"),
        uptime: duration(broker.uptime().as_secs()),
        clients: stats.clients_connected,
        sessions: stats.sessions,
        subscriptions: stats.subscriptions,
        retained: stats.retained,
        received,
        sent,
        in_rate: in_rate.round() as u64,
        out_rate: out_rate.round() as u64,
        journal,
        free_disk: free.map_or_else(|| "unknown".to_owned(), bytes),
        kafka,
        alarms,
    })
}

/// The Kafka routes by state, as the forwarder last reported them; a lag alarm, a stalled route and a route in
/// error are alarms.
fn kafka_routes(view: crate::forward::ops::StatusView, alarms: &mut Vec<String>) -> String {
    use crate::forward::status::RouteState;
    if !crate::forward::BUILT {
        return "not in this build".to_owned();
    }
    let Some(report) = view.report.filter(|_| view.running) else { return "none running".to_owned() };
    let mut states: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for r in &report.routes {
        *states.entry(r.state.as_str()).or_default() += 1;
        if r.lag_alarm {
            alarms.push(format!(
                "Kafka route {}: lag alarm, the oldest unforwarded message is {} s old",
                r.name,
                r.lag_ms / 1000
            ));
        }
        if matches!(r.state, RouteState::Stalled | RouteState::Error) {
            let why = r.last_error.as_deref().unwrap_or("no acknowledgement");
            alarms.push(format!("Kafka route {} is {}: {why}", r.name, r.state.as_str()));
        }
    }
    states.iter().map(|(state, n)| format!("{n} {state}")).collect::<Vec<_>>().join(", ")
}

/// `1.2 GB`, `340 MB`, `12 kB`.
pub(super) fn bytes(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1} GB", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.0} MB", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.0} kB", n as f64 / 1e3),
        n => format!("{n} B"),
    }
}

/// `3 d 4 h`, `5 h 12 min`, `42 s`.
fn duration(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{} min {} s", s / 60, s % 60),
        s => format!("{s} s"),
    }
}
