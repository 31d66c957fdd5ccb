//! `/metrics` in the Prometheus text format. Open on a console that listens on loopback only (a scraper on the
//! gateway itself); elsewhere it needs a bearer token an administrator made (`weir token add`, or the users
//! page), or a signed-in session.

use std::fmt::Write;
use std::sync::atomic::AtomicU64;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::{AppState, WebError};
use crate::mqtt::broker::Metrics;

pub(super) async fn metrics_get(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    if !state.inner.loopback && state.signed_in(&headers).is_none() {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let known = match bearer {
            Some(token) => state.ops().check_token(token.trim()).await?.is_some(),
            None => false,
        };
        if !known {
            return Err(WebError::Forbidden("metrics need a bearer token (weir token add) on this address"));
        }
    }
    let broker = &state.inner.broker;
    let stats = broker.stats().await.map_err(|e| WebError::Internal(e.to_string()))?;
    let m = broker.metrics();
    let counter = |counter: &AtomicU64| ("counter", Metrics::get(counter));
    let gauge = |value: u64| ("gauge", value);
    // Each family: its name after `weir_`, its help, and its type and value.
    let mut families = vec![
        ("messages_received_total", "PUBLISH messages received from clients.", counter(&m.messages_received)),
        ("messages_sent_total", "PUBLISH messages sent to clients.", counter(&m.messages_sent)),
        ("bytes_received_total", "Bytes read from clients.", counter(&m.bytes_received)),
        ("bytes_sent_total", "Bytes written to clients.", counter(&m.bytes_sent)),
        (
            "messages_dropped_total",
            "Deliveries dropped: a full queue or QoS 0 for an offline client.",
            counter(&m.messages_dropped),
        ),
        (
            "messages_spilled_total",
            "QoS 1/2 deliveries left in the journal beyond a session's window.",
            counter(&m.messages_spilled),
        ),
        (
            "connections_refused_total",
            "Connections refused at CONNECT or at the TLS handshake.",
            counter(&m.connections_refused),
        ),
        ("protocol_errors_total", "Connections closed for a protocol error.", counter(&m.protocol_errors)),
        ("clients_connected", "Clients connected now.", gauge(stats.clients_connected as u64)),
        ("sessions", "Sessions, online and offline.", gauge(stats.sessions as u64)),
        ("subscriptions", "Subscriptions.", gauge(stats.subscriptions as u64)),
        ("retained_messages", "Retained messages.", gauge(stats.retained as u64)),
        ("uptime_seconds", "Seconds since the broker started.", gauge(broker.uptime().as_secs())),
    ];
    if let Some(journal) = &state.inner.journal {
        let j = journal.stats();
        families.extend([
            ("journal_appended_total", "Messages written to the journal.", counter(&j.appended)),
            (
                "journal_refused_total",
                "QoS 1/2 messages the journal refused (disk full, hard cap).",
                counter(&j.refused),
            ),
            (
                "journal_dropped_qos0_total",
                "QoS 0 messages not journaled because the writer was behind.",
                counter(&j.dropped_qos0),
            ),
            ("journal_pruned_total", "Messages removed by retention.", counter(&j.pruned)),
        ]);
    }
    let mut out = String::new();
    for (name, help, (kind, value)) in families {
        let _ = writeln!(out, "# HELP weir_{name} {help}\n# TYPE weir_{name} {kind}\nweir_{name} {value}");
    }
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    Ok(([(header::CONTENT_TYPE, content_type)], out).into_response())
}
