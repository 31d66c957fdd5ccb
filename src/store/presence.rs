//! The presence history in `journal.sqlite` (table `presence_events`, written by the journal writer), read
//! beside a running gateway.

use sqlx::{Row, SqlitePool};

use super::StoreError;

/// One connect, disconnect or loss.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PresenceEventRow {
    pub id: i64,
    /// Unix ms.
    pub ts: i64,
    pub client_id: String,
    pub username: Option<String>,
    pub peer: Option<String>,
    /// `online`, `offline` or `lost`.
    pub state: String,
    pub reason: Option<String>,
}

/// Events of one client (or all) with `since <= ts < until`, at most `limit`, oldest first if `oldest_first`.
pub async fn events(
    pool: &SqlitePool,
    client: Option<&str>,
    since: Option<i64>,
    until: Option<i64>,
    limit: usize,
    oldest_first: bool,
) -> Result<Vec<PresenceEventRow>, StoreError> {
    let sql = match oldest_first {
        true => {
            "SELECT * FROM presence_events WHERE (?1 IS NULL OR client_id = ?1) AND ts >= ?2 AND ts < ?3 \
             ORDER BY ts ASC, id ASC LIMIT ?4"
        }
        false => {
            "SELECT * FROM presence_events WHERE (?1 IS NULL OR client_id = ?1) AND ts >= ?2 AND ts < ?3 \
             ORDER BY ts DESC, id DESC LIMIT ?4"
        }
    };
    let rows = sqlx::query(sql)
        .bind(client)
        .bind(since.unwrap_or(i64::MIN))
        .bind(until.unwrap_or(i64::MAX))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await?;
    rows.iter().map(event_from_row).collect()
}

/// Each client's last event before `at` (one client, or all): the state it was in when a range starts.
pub async fn last_before(
    pool: &SqlitePool,
    client: Option<&str>,
    at: i64,
) -> Result<Vec<PresenceEventRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT e.* FROM presence_events e JOIN (SELECT client_id, max(id) AS id FROM presence_events \
         WHERE (?1 IS NULL OR client_id = ?1) AND ts < ?2 GROUP BY client_id) AS l ON e.id = l.id \
         ORDER BY e.client_id",
    )
    .bind(client)
    .bind(at)
    .fetch_all(pool)
    .await?;
    rows.iter().map(event_from_row).collect()
}

fn event_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<PresenceEventRow, StoreError> {
    Ok(PresenceEventRow {
        id: row.try_get("id")?,
        ts: row.try_get("ts")?,
        client_id: row.try_get("client_id")?,
        username: row.try_get("username")?,
        peer: row.try_get("peer")?,
        state: row.try_get("state")?,
        reason: row.try_get("reason")?,
    })
}
