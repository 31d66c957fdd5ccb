//! Message history: queries and exports, read from the journal beside a running gateway.

use std::io::Write;
use std::path::Path;

use sqlx::SqlitePool;

use super::OpsError;
use crate::store;
use crate::store::export::{self, Format};
use crate::store::history::{self, HistoryQuery, Order, Page, PayloadView};
use crate::timefmt;

/// Which messages: a topic filter and a time range as the operator wrote them.
#[derive(Debug, Clone)]
pub struct Selection {
    /// An MQTT topic filter; `+` and `#` allowed.
    pub filter: String,
    /// From this time on: `2026-11-25T10:00:00Z`, `2026-11-25`, unix milliseconds, or `15m` / `2h` / `7d` ago.
    pub since: Option<String>,
    /// Before this time (same forms).
    pub until: Option<String>,
}

impl Selection {
    /// The query for this selection, with its times resolved against now.
    pub fn query(&self) -> Result<HistoryQuery, OpsError> {
        let now = timefmt::now_ms();
        let time = |t: &Option<String>| {
            t.as_deref().map(|t| timefmt::parse(t, now)).transpose().map_err(OpsError::Invalid)
        };
        let mut query = HistoryQuery::new(&self.filter);
        query.since = time(&self.since)?;
        query.until = time(&self.until)?;
        Ok(query)
    }
}

/// The journal of a data directory, for reading.
pub async fn open(data_dir: &Path) -> Result<SqlitePool, OpsError> {
    store::open_for_reading(data_dir, store::Database::Journal)
        .await
        .map_err(|_| OpsError::NoData { what: "history", dir: data_dir.to_owned() })
}

/// Up to `limit` matching messages, newest first unless `oldest_first`.
pub async fn query(
    journal: &SqlitePool,
    selection: &Selection,
    limit: usize,
    oldest_first: bool,
) -> Result<Page, OpsError> {
    let mut query = selection.query()?;
    query.limit = limit;
    if oldest_first {
        query.order = Order::OldestFirst;
    }
    Ok(history::query(journal, &query).await?)
}

/// Streams every matching message, oldest first, into `out`; `progress` is called with the count so far.
/// Returns how many were written. Runs in constant memory whatever the size.
pub async fn export(
    journal: &SqlitePool,
    selection: &Selection,
    format: Format,
    view: PayloadView,
    out: &mut impl Write,
    progress: impl FnMut(u64),
) -> Result<u64, OpsError> {
    let query = selection.query()?;
    Ok(export::export(journal, &query, format, view, out, progress).await?)
}

/// One message as a line of text: time, topic, QoS and the payload as `view` shows it.
pub fn text_line(m: &history::StoredMessage, view: PayloadView) -> String {
    let payload = match m.payload_as(view) {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    };
    format!("{} {} q{} {}", timefmt::format(m.ts), m.topic, m.qos, payload)
}
