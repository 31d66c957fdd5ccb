//! Reading the journal back: history queries with MQTT topic filters, time ranges and keyset pagination, and
//! numeric time series for charts.
//!
//! A topic filter is read through the topic index (a topic, or each of the few topics under its literal prefix: the
//! levels before the first wildcard, and for `a/#` the parent topic `a`), or else by reading the journal in id
//! order with the literal prefix checked by SQLite; what the prefix lets through is matched with the MQTT rules in
//! Rust. Pages are keyset-paginated on the journal id, so reading page 1,000 costs what reading page 1 does, and an
//! export streams page by page in constant memory.

use std::path::Path;

use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};

use super::StoreError;
use super::payload_log::{self, PayloadError, PayloadRef};
use crate::mqtt::codec::topic;

/// The most rows fetched per round trip while filling a page (fewer when the page needs fewer).
const FETCH: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    #[default]
    NewestFirst,
    OldestFirst,
}

#[derive(Debug, Clone)]
pub struct HistoryQuery {
    /// An MQTT topic filter (`+` and `#` allowed).
    pub filter: String,
    /// Unix milliseconds, inclusive.
    pub since: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub until: Option<i64>,
    pub order: Order,
    /// Continue after this journal id (the `next` of the previous page).
    pub after: Option<i64>,
    pub limit: usize,
    /// At most about this many rows read for the page, matching or not, where the journal is read in id order
    /// (see [`query_on`]): the page may then hold fewer than `limit` messages, or none, with `next` saying where to
    /// go on. A consumer's batch sets it, so that a sparse filter in a large backlog costs a bounded time per
    /// batch; `None` fills the page whatever it takes.
    pub max_rows: Option<u64>,
}

impl HistoryQuery {
    pub fn new(filter: &str) -> HistoryQuery {
        HistoryQuery {
            filter: filter.to_owned(),
            since: None,
            until: None,
            order: Order::NewestFirst,
            after: None,
            limit: 100,
            max_rows: None,
        }
    }
}

/// One message as the journal holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredMessage {
    pub id: i64,
    /// Unix milliseconds.
    pub ts: i64,
    pub topic: String,
    #[serde(skip)]
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    #[serde(skip)]
    pub correlation_data: Option<Vec<u8>>,
    pub user_properties: Vec<(String, String)>,
    /// Where the payload is in the payload log while it is not read yet (`payload` is then empty): only within
    /// this module's reads, which read it before they return.
    #[serde(skip)]
    pub(crate) payload_ref: Option<PayloadRef>,
}

/// How a payload is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadView {
    /// UTF-8 text (invalid bytes replaced).
    Text,
    /// Parsed JSON if it is JSON, otherwise a JSON string of the text.
    Json,
    Hex,
}

impl StoredMessage {
    pub fn payload_as(&self, view: PayloadView) -> serde_json::Value {
        match view {
            PayloadView::Text => {
                serde_json::Value::String(String::from_utf8_lossy(&self.payload).into_owned())
            }
            PayloadView::Json => serde_json::from_slice(&self.payload).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&self.payload).into_owned())
            }),
            PayloadView::Hex => serde_json::Value::String(hex(&self.payload)),
        }
    }

    /// The payload as a number: a bare number, or the number at `pointer` (a JSON pointer such as `/temp`) in a
    /// JSON payload, or a JSON payload that is itself a number.
    pub fn number(&self, pointer: Option<&str>) -> Option<f64> {
        let text = std::str::from_utf8(&self.payload).ok()?.trim();
        if pointer.is_none()
            && let Ok(n) = text.parse::<f64>()
        {
            return n.is_finite().then_some(n);
        }
        let json: serde_json::Value = serde_json::from_str(text).ok()?;
        let value = match pointer {
            Some(p) => json.pointer(p)?,
            None => &json,
        };
        match value {
            serde_json::Value::Number(n) => n.as_f64(),
            serde_json::Value::String(s) => s.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
            _ => None,
        }
    }
}

/// One page of results and where the next one starts.
#[derive(Debug, Clone)]
pub struct Page {
    pub messages: Vec<StoredMessage>,
    /// Pass as `after` to get the next page; `None` at the end. Every message up to it (oldest first), or from it
    /// (newest first), that matches is in this page or an earlier one.
    pub next: Option<i64>,
    /// Rows read from the database to fill this page, matching the filter or not: what the page cost. Through
    /// the topic index, about the matching rows; in id order, the journal ids the page went through.
    pub rows_read: u64,
}

/// Runs a history query.
pub async fn query(pool: &SqlitePool, q: &HistoryQuery) -> Result<Page, StoreError> {
    let mut conn = pool.acquire().await?;
    query_on(&mut conn, q).await
}

/// Runs a history query on one connection: inside a transaction, several queries see the same snapshot of the
/// journal (a consumer with several filters merges their pages).
///
/// Three ways to read, by the filter:
/// - a topic (no wildcard), or a wildcard whose literal prefix holds at most [`MAX_SEEK_TOPICS`] topics (and no
///   time range): through the topic index, each topic a seek at the page's position;
/// - anything else (`#`, `+/...`, a wildcard over more topics, a time range): the journal in id order from the
///   page's position, window by window, the literal prefix checked by SQLite and the rest of the filter here, so
///   that a page costs the rows between its position and its last match, wherever it is in a large backlog;
/// - a page of that scan that has read [`SCAN_BEFORE_INDEX`] rows (or 16 per message asked for) without filling
///   up, and has a literal prefix, goes on through a range of the topic index instead: a sparse filter in a large
///   journal costs what its own rows do. A query with [`HistoryQuery::max_rows`] (a consumer's batch) never does:
///   it ends the page there, with what it found and where to go on.
pub async fn query_on(conn: &mut SqliteConnection, q: &HistoryQuery) -> Result<Page, StoreError> {
    let mut page = query_rows(&mut *conn, q).await?;
    page.messages = with_payloads(conn, page.messages).await?;
    Ok(page)
}

/// Reads the payloads of `messages` that are in the payload log, on a blocking thread (they are file reads).
/// A message whose payload cannot be read is left out: pruned meanwhile, or (logged) damaged on disk.
async fn with_payloads(
    conn: &mut SqliteConnection,
    mut messages: Vec<StoredMessage>,
) -> Result<Vec<StoredMessage>, StoreError> {
    if messages.iter().all(|m| m.payload_ref.is_none()) {
        return Ok(messages);
    }
    // The log is beside the database file this connection reads.
    let file: String = sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
        .fetch_one(conn)
        .await?;
    let dir = payload_log::dir_of(Path::new(&file));
    tokio::task::spawn_blocking(move || {
        let mut log = payload_log::Reader::new(dir);
        messages.retain_mut(|m| {
            let Some(at) = m.payload_ref.take() else { return true };
            match log.read(m.id, at) {
                Ok(payload) => {
                    m.payload = payload;
                    true
                }
                // Pruned since this read's rows were: as if it had read after.
                Err(PayloadError::Gone { .. }) => false,
                Err(e) => {
                    tracing::warn!("{e}: the message is left out");
                    false
                }
            }
        });
        messages
    })
    .await
    .map_err(|e| StoreError::Writer(format!("reading payloads: {e}")))
}

async fn query_rows(conn: &mut SqliteConnection, q: &HistoryQuery) -> Result<Page, StoreError> {
    if !topic::valid_topic_filter(&q.filter) {
        return Err(StoreError::InvalidQuery(format!("{:?} is not a valid topic filter", q.filter)));
    }
    let filter = Filter::of(&q.filter);
    let mut reading = Reading {
        messages: Vec::with_capacity(q.limit.clamp(1, MAX_LIMIT).min(1024)),
        limit: q.limit.clamp(1, MAX_LIMIT),
        position: q.after,
        rows_read: 0,
    };
    // A wildcard over a few topics is read per topic: each seeks its own next ids (the index is by topic, then
    // id), so a page costs about `fetch` index entries per topic, wherever the position is in the backlog.
    let seek_topics = match &filter.range {
        Some((from, Some(to))) if q.since.is_none() && q.until.is_none() => {
            topics_in_range(&mut *conn, from, to, filter.parent).await?
        }
        _ => None,
    };
    if !filter.literal && seek_topics.is_none() {
        let give_up = match (&filter.range, q.max_rows) {
            (Some(_), None) => Some(SCAN_BEFORE_INDEX.max(16 * reading.limit as u64)),
            _ => None,
        };
        if let Scanned::Page(next) = scan(&mut *conn, q, &filter, &mut reading, give_up).await? {
            return Ok(Page { messages: reading.messages, next, rows_read: reading.rows_read });
        }
    }
    by_index(conn, q, &filter, seek_topics.as_deref(), reading).await
}

/// The most messages in one page.
const MAX_LIMIT: usize = 10_000;

/// The journal ids one statement of [`scan`] reads at most, matching or not.
const SCAN_WINDOW: i64 = 8_192;

/// Rows a page of [`scan`] without `max_rows` reads before a filter with a literal prefix turns to the topic index.
const SCAN_BEFORE_INDEX: u64 = 32_768;

/// The SELECT list every read of full rows uses (`m` is `messages`).
const COLUMNS: &str = "SELECT m.id, m.ts, m.topic, m.payload, m.qos, m.retain, m.client_id, m.username, \
                       m.content_type, m.response_topic, m.correlation_data, m.user_properties, m.payload_at, \
                       m.payload_len, m.payload_crc";

/// What a topic filter gives SQLite to narrow a read.
struct Filter<'a> {
    text: &'a str,
    /// No wildcard: one topic.
    literal: bool,
    /// The topic (literal), or the range `[prefix, prefix + U+10FFFF)` of the levels before the first wildcard,
    /// with their trailing `/` (`a/b/` for `a/b/+` or `a/b/#`), so that it holds no sibling that merely starts
    /// alike (`a/bc`). `None` without literal levels (`#`, `+/...`).
    range: Option<(String, Option<String>)>,
    /// `a/b/#` also matches `a/b` itself, the parent.
    parent: Option<&'a str>,
}

impl Filter<'_> {
    fn of(text: &str) -> Filter<'_> {
        let literal = !text.contains(['+', '#']);
        let prefix = text.split(['+', '#']).next().unwrap_or("");
        let parent = match text.strip_suffix('#') {
            Some(rest) if rest == prefix => prefix.strip_suffix('/').filter(|p| !p.is_empty()),
            _ => None,
        };
        let range = match (literal, prefix.is_empty()) {
            (true, _) => Some((text.to_owned(), None)),
            (false, false) => Some((prefix.to_owned(), Some(format!("{prefix}\u{10FFFF}")))),
            (false, true) => None,
        };
        Filter { text, literal, range, parent }
    }

    fn matches(&self, topic_name: &str) -> bool {
        self.literal || topic::matches(self.text, topic_name)
    }

    /// ` AND <the topic constraint>` on `column`'s table, if there is one.
    fn push_constraint(&self, sql: &mut QueryBuilder<Sqlite>, column: &str) {
        let Some((from, to)) = &self.range else { return };
        match to {
            None => {
                sql.push(format_args!(" AND {column}.topic = ")).push_bind(from.clone());
            }
            Some(to) => {
                sql.push(format_args!(" AND (({column}.topic >= ")).push_bind(from.clone());
                sql.push(format_args!(" AND {column}.topic < ")).push_bind(to.clone());
                sql.push(")");
                if let Some(parent) = self.parent {
                    sql.push(format_args!(" OR {column}.topic = ")).push_bind(parent.to_owned());
                }
                sql.push(")");
            }
        }
    }
}

/// A page being filled.
struct Reading {
    messages: Vec<StoredMessage>,
    limit: usize,
    /// Everything matching up to here (oldest first) or from here (newest first) has been read.
    position: Option<i64>,
    rows_read: u64,
}

impl Reading {
    /// What the next statement should fetch: no more rows than the page may still use.
    fn fetch(&self) -> usize {
        FETCH.min(self.limit - self.messages.len())
    }

    fn full(&self) -> bool {
        self.messages.len() >= self.limit
    }
}

/// Reads the journal in id order from the page's position, at most [`SCAN_WINDOW`] ids per statement, with the
/// filter's literal prefix (and the time range) checked by SQLite and the rest of the filter here, until the page
/// is done or it has read `give_up` rows without filling it.
///
/// The journal's ids only grow and are never reused, and what a reader sees is every row up to the newest it
/// sees, so a window of ids holds every row there is in it: going on from a window's end skips nothing.
async fn scan(
    conn: &mut SqliteConnection,
    q: &HistoryQuery,
    filter: &Filter<'_>,
    reading: &mut Reading,
    give_up: Option<u64>,
) -> Result<Scanned, StoreError> {
    // Two subqueries: SQLite answers a lone min() or max() from the rowid's ends.
    let (oldest, newest): (Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT (SELECT min(id) FROM messages), (SELECT max(id) FROM messages)")
            .fetch_one(&mut *conn)
            .await?;
    let (Some(oldest), Some(newest)) = (oldest, newest) else { return Ok(Scanned::Page(None)) };
    // Where the page starts, clamped to the ids there are (a consumer's position may be long pruned).
    let mut position = match (q.order, reading.position) {
        (Order::OldestFirst, p) => p.unwrap_or(i64::MIN).max(oldest - 1),
        (Order::NewestFirst, p) => p.unwrap_or(i64::MAX).min(newest + 1),
    };
    let mut examined = 0u64;
    loop {
        let end = match q.order {
            Order::OldestFirst if position >= newest => return Ok(Scanned::Page(None)),
            Order::NewestFirst if position <= oldest => return Ok(Scanned::Page(None)),
            Order::OldestFirst => position.saturating_add(SCAN_WINDOW).min(newest),
            Order::NewestFirst => position.saturating_sub(SCAN_WINDOW).max(oldest),
        };
        let fetch = reading.fetch();
        let mut sql = QueryBuilder::<Sqlite>::new(format!("{COLUMNS} FROM messages m WHERE m.id "));
        let direction = match q.order {
            Order::OldestFirst => {
                sql.push("> ").push_bind(position).push(" AND m.id <= ").push_bind(end);
                "ASC"
            }
            Order::NewestFirst => {
                sql.push("< ").push_bind(position).push(" AND m.id >= ").push_bind(end);
                "DESC"
            }
        };
        filter.push_constraint(&mut sql, "m");
        // `+m.ts`: not through the index on time; the rowid range is what bounds the read.
        if let Some(since) = q.since {
            sql.push(" AND +m.ts >= ").push_bind(since);
        }
        if let Some(until) = q.until {
            sql.push(" AND +m.ts < ").push_bind(until);
        }
        sql.push(format_args!(" ORDER BY m.id {direction} LIMIT "));
        sql.push_bind(i64::try_from(fetch).unwrap_or(i64::MAX));
        let rows = sql.build().fetch_all(&mut *conn).await?;
        // A full fetch ends at its last row (more may follow in the window); a short one covers the window.
        let reached = match rows.last() {
            Some(last) if rows.len() == fetch => last.try_get("id")?,
            _ => end,
        };
        for row in &rows {
            let message = stored(row)?;
            if filter.matches(&message.topic) {
                reading.messages.push(message);
            }
        }
        examined += reached.abs_diff(position);
        reading.rows_read += reached.abs_diff(position);
        position = reached;
        reading.position = Some(position);
        if reading.full() || q.max_rows.is_some_and(|max| examined >= max) {
            return Ok(Scanned::Page(Some(position)));
        }
        if give_up.is_some_and(|max| examined >= max) {
            return Ok(Scanned::GaveUp);
        }
    }
}

/// How a [`scan`] ended.
enum Scanned {
    /// The page is done: full, at the end of the journal (`None`), or at `max_rows`. Its `next`.
    Page(Option<i64>),
    /// It read `give_up` rows without filling the page: the index goes on from the position it reached.
    GaveUp,
}

/// Reads through the topic index (one topic, a range of topics, or `seek_topics` one by one) up to where the
/// writer has filled it, and the rows after it (about the last second) by id, merged.
async fn by_index(
    conn: &mut SqliteConnection,
    q: &HistoryQuery,
    filter: &Filter<'_>,
    seek_topics: Option<&[String]>,
    mut reading: Reading,
) -> Result<Page, StoreError> {
    let indexed_upto: i64 =
        sqlx::query_scalar("SELECT coalesce(max(value), 0) FROM journal_state WHERE key = 'topic_index'")
            .fetch_one(&mut *conn)
            .await?;
    // Without a time range, the index part picks the page's ids from the index alone and reads only their rows:
    // joined, SQLite read the row of every indexed message in the range before sorting them by id, so a
    // consumer's batch over a large backlog read all of it (a catch-up quadratic in the backlog).
    let ids_first = q.since.is_none() && q.until.is_none();
    loop {
        let mut rows = Vec::new();
        let mut more = false;
        // What the page still needs: a small page (a consumer's batch) reads no more rows than it may use, unless
        // rows in the range do not match (`+`), which the next round reads past.
        let fetch = reading.fetch();
        let position = reading.position;
        for part in [Part::Indexed, Part::Tail] {
            if part == Part::Indexed
                && ids_first
                && let Some(topics) = seek_topics
            {
                if topics.is_empty() {
                    continue;
                }
                // The ids come from one seek per topic, merged.
                let mut sql = seek_query(topics, indexed_upto, q.order, position, fetch);
                let part_rows = sql.build().fetch_all(&mut *conn).await?;
                more |= part_rows.len() == fetch;
                reading.rows_read += part_rows.len() as u64;
                for row in part_rows {
                    rows.push(stored(&row)?);
                }
                continue;
            }
            let mut sql = QueryBuilder::<Sqlite>::new(match part {
                Part::Indexed if ids_first => {
                    format!(
                        "{COLUMNS} FROM messages m WHERE m.id IN (SELECT t.id FROM topic_index t WHERE t.id <= "
                    )
                }
                Part::Indexed => {
                    format!("{COLUMNS} FROM topic_index t JOIN messages m ON m.id = t.id WHERE t.id <= ")
                }
                Part::Tail => format!("{COLUMNS} FROM messages m WHERE m.id > "),
            });
            sql.push_bind(indexed_upto);
            let column = if part == Part::Indexed { "t" } else { "m" };
            filter.push_constraint(&mut sql, column);
            if let Some(since) = q.since {
                sql.push(" AND m.ts >= ").push_bind(since);
            }
            if let Some(until) = q.until {
                sql.push(" AND m.ts < ").push_bind(until);
            }
            match (q.order, position) {
                (Order::NewestFirst, Some(p)) => {
                    sql.push(format_args!(" AND {column}.id < ")).push_bind(p);
                }
                (Order::OldestFirst, Some(p)) => {
                    sql.push(format_args!(" AND {column}.id > ")).push_bind(p);
                }
                (_, None) => {}
            }
            let order_limit = |sql: &mut QueryBuilder<Sqlite>, column: &str| {
                sql.push(match q.order {
                    Order::NewestFirst => format!(" ORDER BY {column}.id DESC"),
                    Order::OldestFirst => format!(" ORDER BY {column}.id ASC"),
                });
                sql.push(" LIMIT ").push_bind(i64::try_from(fetch).unwrap_or(i64::MAX));
            };
            order_limit(&mut sql, column);
            if part == Part::Indexed && ids_first {
                sql.push(")");
                order_limit(&mut sql, "m");
            }
            let part_rows = sql.build().fetch_all(&mut *conn).await?;
            more |= part_rows.len() == fetch;
            reading.rows_read += part_rows.len() as u64;
            for row in part_rows {
                rows.push(stored(&row)?);
            }
        }
        // Both parts in one order; beyond `fetch`, the rest comes again with the next round's bound.
        match q.order {
            Order::NewestFirst => rows.sort_by_key(|m| std::cmp::Reverse(m.id)),
            Order::OldestFirst => rows.sort_by_key(|m| m.id),
        }
        if rows.len() > fetch {
            rows.truncate(fetch);
            more = true;
        }
        for message in rows {
            reading.position = Some(message.id);
            if filter.matches(&message.topic) {
                reading.messages.push(message);
                if reading.full() {
                    let next = reading.position;
                    return Ok(Page { messages: reading.messages, next, rows_read: reading.rows_read });
                }
            }
        }
        if !more {
            return Ok(Page { messages: reading.messages, next: None, rows_read: reading.rows_read });
        }
    }
}

/// Topics read one by one (see `seek_topics` in [`query_on`]); beyond this many, one range scan.
const MAX_SEEK_TOPICS: i64 = 64;

/// The journal's topics in `[from, to)` (and `parent`), from the topic catalogue, which the writer keeps in the
/// same transaction as the topic index; `None` when there are more than [`MAX_SEEK_TOPICS`].
async fn topics_in_range(
    conn: &mut SqliteConnection,
    from: &str,
    to: &str,
    parent: Option<&str>,
) -> Result<Option<Vec<String>>, StoreError> {
    let topics: Vec<String> = sqlx::query_scalar(
        "SELECT topic FROM topics WHERE (topic >= ? AND topic < ?) OR topic = ? ORDER BY topic LIMIT ?",
    )
    .bind(from)
    .bind(to)
    .bind(parent)
    .bind(MAX_SEEK_TOPICS + 1)
    .fetch_all(&mut *conn)
    .await?;
    Ok((topics.len() as i64 <= MAX_SEEK_TOPICS).then_some(topics))
}

/// A page of rows whose ids are each topic's own next `fetch` ids in the index (up to `upto`), merged: the first
/// `fetch` of them in `order`. Each topic's part is a seek on the index (topic, id).
fn seek_query(
    topics: &[String],
    upto: i64,
    order: Order,
    position: Option<i64>,
    fetch: usize,
) -> QueryBuilder<Sqlite> {
    let (direction, after) = match order {
        Order::NewestFirst => ("DESC", " AND id < "),
        Order::OldestFirst => ("ASC", " AND id > "),
    };
    let limit = i64::try_from(fetch).unwrap_or(i64::MAX);
    let mut sql = QueryBuilder::<Sqlite>::new(format!("{COLUMNS} FROM messages m WHERE m.id IN ("));
    for (i, topic) in topics.iter().enumerate() {
        if i > 0 {
            sql.push(" UNION ALL ");
        }
        sql.push("SELECT id FROM (SELECT id FROM topic_index WHERE topic = ").push_bind(topic.clone());
        sql.push(" AND id <= ").push_bind(upto);
        if let Some(p) = position {
            sql.push(after).push_bind(p);
        }
        sql.push(format_args!(" ORDER BY id {direction} LIMIT ")).push_bind(limit);
        sql.push(")");
    }
    sql.push(format_args!(" ORDER BY 1 {direction} LIMIT ")).push_bind(limit);
    sql.push(format_args!(") ORDER BY m.id {direction} LIMIT ")).push_bind(limit);
    sql
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Rows in the topic index.
    Indexed,
    /// Rows after the topic index.
    Tail,
}

/// Numeric values of the messages matching `q` (oldest first), for charts: `(unix ms, value)`, at most
/// `max_points` of them (the oldest; a chart asks for a range it can draw).
pub async fn series(
    pool: &SqlitePool,
    q: &HistoryQuery,
    pointer: Option<&str>,
    max_points: usize,
) -> Result<Vec<(i64, f64)>, StoreError> {
    let mut q = q.clone();
    q.order = Order::OldestFirst;
    q.limit = 10_000;
    let mut points = Vec::new();
    loop {
        let page = query(pool, &q).await?;
        points.extend(page.messages.iter().filter_map(|m| Some((m.ts, m.number(pointer)?))));
        if points.len() >= max_points {
            points.truncate(max_points);
            return Ok(points);
        }
        match page.next {
            Some(next) => q.after = Some(next),
            None => return Ok(points),
        }
    }
}

/// One message by its journal id.
pub async fn message(pool: &SqlitePool, id: i64) -> Result<Option<StoredMessage>, StoreError> {
    let mut conn = pool.acquire().await?;
    let row = sqlx::query("SELECT * FROM messages WHERE id = ?").bind(id).fetch_optional(&mut *conn).await?;
    let found = row.as_ref().map(stored).transpose()?;
    Ok(with_payloads(&mut conn, found.into_iter().collect()).await?.pop())
}

/// The retained message of a topic, as the journal keeps it.
pub async fn retained(pool: &SqlitePool, topic: &str) -> Result<Option<StoredMessage>, StoreError> {
    let mut conn = pool.acquire().await?;
    let row =
        sqlx::query("SELECT m.* FROM retained r JOIN messages m ON m.id = r.message_id WHERE r.topic = ?")
            .bind(topic)
            .fetch_optional(&mut *conn)
            .await?;
    let found = row.as_ref().map(stored).transpose()?;
    Ok(with_payloads(&mut conn, found.into_iter().collect()).await?.pop())
}

fn stored(row: &SqliteRow) -> Result<StoredMessage, StoreError> {
    let user_properties: Option<String> = row.try_get("user_properties")?;
    Ok(StoredMessage {
        id: row.try_get("id")?,
        ts: row.try_get("ts")?,
        topic: row.try_get("topic")?,
        payload: row.try_get("payload")?,
        qos: u8::try_from(row.try_get::<i64, _>("qos")?).unwrap_or(0),
        retain: row.try_get("retain")?,
        client_id: row.try_get("client_id")?,
        username: row.try_get("username")?,
        content_type: row.try_get("content_type")?,
        response_topic: row.try_get("response_topic")?,
        correlation_data: row.try_get("correlation_data")?,
        user_properties: user_properties.and_then(|j| serde_json::from_str(&j).ok()).unwrap_or_default(),
        payload_ref: PayloadRef::from_columns(
            row.try_get("payload_at")?,
            row.try_get("payload_len")?,
            row.try_get("payload_crc")?,
        ),
    })
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &str) -> StoredMessage {
        StoredMessage {
            id: 1,
            ts: 0,
            topic: "t".into(),
            payload: payload.as_bytes().to_vec(),
            qos: 0,
            retain: false,
            client_id: None,
            username: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
            payload_ref: None,
        }
    }

    #[test]
    fn numbers_are_read_from_bare_and_json_payloads() {
        assert_eq!(message(" 21.5 ").number(None), Some(21.5));
        assert_eq!(message("{\"temp\": 7, \"unit\": \"C\"}").number(Some("/temp")), Some(7.0));
        assert_eq!(message("{\"a\": {\"b\": \"3.5\"}}").number(Some("/a/b")), Some(3.5));
        assert_eq!(message("running").number(None), None);
        assert_eq!(message("{\"temp\": null}").number(Some("/temp")), None);
        assert_eq!(message("NaN").number(None), None);
    }

    #[test]
    fn payload_views() {
        let m = message("{\"x\":1}");
        assert_eq!(m.payload_as(PayloadView::Json), serde_json::json!({"x": 1}));
        assert_eq!(m.payload_as(PayloadView::Text), serde_json::json!("{\"x\":1}"));
        assert_eq!(message("\u{1}A").payload_as(PayloadView::Hex), serde_json::json!("0141"));
    }
}
