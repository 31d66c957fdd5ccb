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

/// The journal of a data directory, for reading. A journal that an older version wrote and the gateway has not
/// opened since (which upgrades it) is refused with a clear error: reading opens it without migrating it.
pub async fn open(data_dir: &Path) -> Result<SqlitePool, OpsError> {
    let pool = store::open_for_reading(data_dir, store::Database::Journal)
        .await
        .map_err(|_| OpsError::NoData { what: "history", dir: data_dir.to_owned() })?;
    let current: bool = sqlx::query_scalar(
        "SELECT count(*) > 0 FROM pragma_table_info('messages') WHERE name = 'payload_at'",
    )
    .fetch_one(&pool)
    .await
    .unwrap_or(false);
    if !current {
        pool.close().await;
        return Err(OpsError::Invalid(format!(
            "the journal in {} was written by an older weir, or is not a journal: start the gateway once (it \
             upgrades the journal), then read it",
            data_dir.display()
        )));
    }
    Ok(pool)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_journal_an_older_weir_wrote_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        // The messages table as it was before the payload log.
        let old = rusqlite::Connection::open(dir.path().join(store::JOURNAL_FILE)).unwrap();
        old.execute_batch(
            "CREATE TABLE messages (id INTEGER PRIMARY KEY, ts INTEGER, topic TEXT, payload BLOB)",
        )
        .unwrap();
        drop(old);
        let error = open(dir.path()).await.unwrap_err().to_string();
        assert!(
            error.contains("written by an older weir") && error.contains("start the gateway once"),
            "{error}"
        );

        let current = tempfile::tempdir().unwrap();
        store::Journal::open(current.path(), store::JournalConfig::default()).await.unwrap().close().await;
        let journal = open(current.path()).await.unwrap();
        let page =
            query(&journal, &Selection { filter: "#".into(), since: None, until: None }, 10, false).await;
        assert!(page.unwrap().messages.is_empty());
    }
}
