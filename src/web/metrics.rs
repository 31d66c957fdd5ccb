//! `/metrics` in the Prometheus text format. Open on a console that listens on loopback only (a scraper on the
//! gateway itself); elsewhere it needs a bearer token an administrator made (`weir token add`, or the users
//! page), or a signed-in session.

use std::fmt::Write;

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
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP weir_{name} {help}\n# TYPE weir_{name} {kind}\nweir_{name} {value}");
    };
    metric(
        "messages_received_total",
        "counter",
        "PUBLISH messages received from clients.",
        Metrics::get(&m.messages_received),
    );
    metric(
        "messages_sent_total",
        "counter",
        "PUBLISH messages sent to clients.",
        Metrics::get(&m.messages_sent),
    );
    metric("bytes_received_total", "counter", "Bytes read from clients.", Metrics::get(&m.bytes_received));
    metric("bytes_sent_total", "counter", "Bytes written to clients.", Metrics::get(&m.bytes_sent));
    metric(
        "messages_dropped_total",
        "counter",
        "Deliveries dropped: a full queue or QoS 0 for an offline client.",
        Metrics::get(&m.messages_dropped),
    );
    metric(
        "messages_spilled_total",
        "counter",
        "QoS 1/2 deliveries left in the journal beyond a session's window.",
        Metrics::get(&m.messages_spilled),
    );
    metric(
        "connections_refused_total",
        "counter",
        "Connections refused at CONNECT or at the TLS handshake.",
        Metrics::get(&m.connections_refused),
    );
    metric(
        "protocol_errors_total",
        "counter",
        "Connections closed for a protocol error.",
        Metrics::get(&m.protocol_errors),
    );
    metric("clients_connected", "gauge", "Clients connected now.", stats.clients_connected as u64);
    metric("sessions", "gauge", "Sessions, online and offline.", stats.sessions as u64);
    metric("subscriptions", "gauge", "Subscriptions.", stats.subscriptions as u64);
    metric("retained_messages", "gauge", "Retained messages.", stats.retained as u64);
    metric("uptime_seconds", "gauge", "Seconds since the broker started.", broker.uptime().as_secs());
    if let Some(journal) = &state.inner.journal {
        let j = journal.stats();
        metric(
            "journal_appended_total",
            "counter",
            "Messages written to the journal.",
            Metrics::get(&j.appended),
        );
        metric(
            "journal_refused_total",
            "counter",
            "QoS 1/2 messages the journal refused (disk full, hard cap).",
            Metrics::get(&j.refused),
        );
        metric(
            "journal_dropped_qos0_total",
            "counter",
            "QoS 0 messages not journaled because the writer was behind.",
            Metrics::get(&j.dropped_qos0),
        );
        metric("journal_pruned_total", "counter", "Messages removed by retention.", Metrics::get(&j.pruned));
    }
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    Ok(([(header::CONTENT_TYPE, content_type)], out).into_response())
}
