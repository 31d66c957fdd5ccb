//! The journal's writer: one OS thread that owns the write connection to `journal.sqlite`.
//!
//! Why a thread with its own connection (rusqlite over the same bundled SQLite) rather than an async task on the
//! sqlx pool: every statement through sqlx is a round trip to sqlx's worker thread (a channel send and a thread
//! wake-up each way), and a batch is several statements plus the session updates. Profiles showed those
//! hand-offs costing about as much CPU as SQLite's own work. Here the thread blocks on the journal's channel,
//! takes everything waiting, and runs it with cached prepared statements; appenders wait on their own oneshot.
//! It is the only writer of `journal.sqlite` and of its payload log (`store/payload_log.rs`): cursor commits and
//! the start-up cleanup are operations on the same channel, and the sqlx pool is opened read-only
//! (`query_only`). Reads (history, exports, consumers, start-up) stay on that pool: in WAL mode they never block
//! this writer. Nor does copying the log into the database file: that is the checkpointer's thread
//! (`store/checkpoint.rs`), which the writer wakes after its commits.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio::sync::mpsc;

use super::checkpoint::Checkpointer;
use super::ops::{CursorChange, CursorCommit, Op, Queued, SessionOp, Shared};
use super::payload_log::{self, Log, PayloadRef};
use super::row::{StoredRow, queued_delivery};
use super::settings::{Durability, JournalConfig};
use super::{StoreError, unix_millis};
use crate::mqtt::broker::{ClientId, PresenceChange, Refusal, SpillLoad, Will};

/// Rows per INSERT statement, largest first: 17 parameters a row, well under SQLite's limit of 32,766. Powers of
/// two, so that any batch takes few statements, each prepared once.
const INSERT_SIZES: [usize; 9] = [256, 128, 64, 32, 16, 8, 4, 2, 1];
/// The most rows the writer adds to the topic index in one step.
const INDEX_MAX_ROWS: i64 = 200_000;
/// How far below the hard cap the journal must be for its size to be measured only now and then.
const CAP_MARGIN: u64 = 64 * 1024 * 1024;
/// Rows deleted per pruning step, and steps per pruning round.
const PRUNE_CHUNK: i64 = 2000;
const PRUNE_STEPS: usize = 8;
/// The most presence history rows kept, whatever their age: a client that reconnects in a loop must not fill the
/// disk with its history.
const PRESENCE_EVENTS_MAX: i64 = 1_000_000;

/// The INSERT statement for `rows` rows (one of [`INSERT_SIZES`]).
fn insert_sql(rows: usize) -> String {
    let row = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    let values = vec![row; rows].join(", ");
    format!(
        "INSERT INTO messages (id, ts, topic, payload, qos, retain, client_id, username, payload_format, \
         expiry_interval, content_type, response_topic, correlation_data, user_properties, payload_at, \
         payload_len, payload_crc) VALUES {values}"
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Continue,
    Stop,
}

#[derive(Debug)]
enum WriteFailure {
    Full,
    Other(rusqlite::Error),
    /// Writing the payload log.
    Log(std::io::Error),
}

/// SQLITE_FULL: the disk (ENOSPC) or the database's page limit is full.
fn classify(e: rusqlite::Error) -> WriteFailure {
    let full = matches!(&e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
        || e.to_string().contains("database or disk is full");
    if full { WriteFailure::Full } else { WriteFailure::Other(e) }
}

/// ENOSPC (or the file size limit) writing the payload log is a full disk, as SQLITE_FULL is.
fn classify_log(e: std::io::Error) -> WriteFailure {
    match e.kind() {
        std::io::ErrorKind::StorageFull
        | std::io::ErrorKind::FileTooLarge
        | std::io::ErrorKind::QuotaExceeded => WriteFailure::Full,
        _ => WriteFailure::Log(e),
    }
}

pub(super) struct Writer {
    conn: Connection,
    inner: std::sync::Weak<Shared>,
    config: JournalConfig,
    /// The INSERT statements of [`INSERT_SIZES`], by size.
    insert_sql: Vec<(usize, String)>,
    /// The queue generation that last spilled for each client: a read-back from an older generation (a queue
    /// since replaced) gets nothing.
    generations: HashMap<ClientId, u64>,
    /// The newest row committed, and the newest in the topic index (`journal_state.topic_index`).
    last_id: i64,
    indexed_upto: i64,
    last_indexed: Instant,
    last_error_log: Option<Instant>,
    /// The file's size when last measured for the hard cap, and an upper bound of what was appended since.
    measured: Option<(Instant, u64)>,
    unmeasured: u64,
    /// Copies the log into the database file beside this thread; `None` once closed.
    checkpointer: Option<Checkpointer>,
    /// Something was committed since the checkpointer was last woken.
    wrote: bool,
    /// Payloads of `payload_log_min` bytes and more.
    log: Log,
    /// With `batched`: the newest id whose payload the last sync of the log covered, for the next commit to
    /// record (`payload_log::SYNCED_KEY`).
    log_synced_unrecorded: Option<i64>,
}

impl Writer {
    /// Opens the write connection (the file exists and is migrated) and starts the thread. Returns the id the
    /// next message gets.
    pub(super) fn start(
        path: &Path,
        config: JournalConfig,
        inner: std::sync::Weak<Shared>,
        ops: mpsc::UnboundedReceiver<Op>,
    ) -> Result<i64, StoreError> {
        let synchronous = match config.durability {
            Durability::Synced => "FULL",
            Durability::Batched { .. } | Durability::Off => "NORMAL",
        };
        let open = || -> rusqlite::Result<Connection> {
            let conn = Connection::open(path)?;
            conn.busy_timeout(Duration::from_secs(10))?;
            // WAL is a property of the file, set when it was created; these are per connection. Why they are
            // safe on power loss: see `store::connect_options`.
            conn.pragma_update(None, "synchronous", synchronous)?;
            conn.pragma_update(None, "foreign_keys", "ON")?;
            if let Some(pages) = config.max_pages {
                conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
            }
            conn.set_prepared_statement_cache_capacity(64);
            // Commits never checkpoint: the checkpointer does, on its own thread.
            conn.pragma_update(None, "wal_autocheckpoint", 0)?;
            let page_size: u64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let spill = config.max_dirty_bytes / page_size.max(512);
            conn.pragma_update(None, "cache_spill", i64::try_from(spill).unwrap_or(i64::MAX).max(1))?;
            Ok(conn)
        };
        let mut conn = open().map_err(|e| StoreError::Writer(e.to_string()))?;
        let payload_dir = payload_log::dir_of(path);
        let log = Log::open(&payload_dir, config.payload_segment_bytes).map_err(|e| {
            StoreError::Writer(format!("opening the payload log {}: {e}", payload_dir.display()))
        })?;
        payload_log::verify_unsynced(&mut conn, &log)
            .map_err(|e| StoreError::Writer(format!("checking the payload log: {e}")))?;
        let last_id: i64 = conn
            .query_row("SELECT coalesce(max(id), 0) FROM messages", [], |r| r.get(0))
            .map_err(|e| StoreError::Writer(e.to_string()))?;
        // Ids are given before the commit, and session queues may refer to one whose append then failed or was
        // cut short by a crash: such an id is never given again, nor one whose row the payload log's check
        // removed (`payloads_synced` is at least it). Nor is one at or below a payload segment's first id: a
        // row's payload is in the segment with the greatest first id not above the row's.
        let next_id: i64 = conn
            .query_row(
                "SELECT max(?, (SELECT coalesce(max(message_id), 0) FROM session_messages), \
                 (SELECT coalesce(max(position), 0) FROM cursors), \
                 (SELECT coalesce(max(value), 0) FROM journal_state WHERE key = 'payloads_synced')) + 1",
                [last_id],
                |r| r.get(0),
            )
            .map_err(|e| StoreError::Writer(e.to_string()))?;
        let next_id = next_id.max(log.newest_first().map_or(0, |first| first + 1));
        let indexed_upto: i64 = conn
            .query_row(
                "SELECT coalesce(max(value), 0) FROM journal_state WHERE key = 'topic_index'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| StoreError::Writer(e.to_string()))?;
        let checkpointer = Checkpointer::start(path, synchronous, config.max_wal_bytes)?;
        let writer = Writer {
            checkpointer: Some(checkpointer),
            wrote: false,
            log,
            log_synced_unrecorded: None,
            conn,
            inner,
            config,
            insert_sql: INSERT_SIZES.iter().map(|&n| (n, insert_sql(n))).collect(),
            generations: HashMap::new(),
            last_id,
            indexed_upto,
            last_indexed: Instant::now(),
            last_error_log: None,
            measured: None,
            unmeasured: 0,
        };
        std::thread::Builder::new()
            .name("weir-journal".into())
            .spawn(move || writer.run(ops))
            .map_err(|e| StoreError::Writer(format!("starting the journal writer: {e}")))?;
        Ok(next_id)
    }

    fn run(mut self, mut ops: mpsc::UnboundedReceiver<Op>) {
        let mut batch = Vec::with_capacity(self.config.max_batch);
        // When the last batch began, and whether it had company (more than one append).
        let mut last_start = Instant::now();
        let mut last_appends = 0usize;
        while let Some(first) = ops.blocking_recv() {
            // Group commit with a floor: after a batch of several appends, more are coming from several places (or
            // a pipelining publisher), so the next batch gathers for at least `commit_interval` since that one
            // began. Each commit costs system calls (WAL frames, locks, the sync) whatever its size: on a fast disk
            // an unbounded rate of small commits took more CPU than the broker itself (2,000 commits/s at 17k
            // msg/s). A lone publisher waiting for each acknowledgement makes batches of one and never waits.
            // Deliveries do not wait for commits; only acknowledgements (QoS 1) and QoS 2 do.
            if last_appends > 1 {
                let due = last_start + self.config.commit_interval;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            last_start = Instant::now();
            let mut appends = usize::from(matches!(first, Op::Append(_)));
            batch.push(first);
            while appends < self.config.max_batch {
                match ops.try_recv() {
                    Ok(op) => {
                        appends += usize::from(matches!(op, Op::Append(_)));
                        batch.push(op);
                    }
                    Err(_) => break,
                }
            }
            last_appends = appends;
            // Before a transaction that may start the log over (see `Checkpointer::bound_log`).
            if appends > 0
                && let Some(checkpointer) = &self.checkpointer
            {
                checkpointer.bound_log();
            }
            let next = self.process(&mut batch);
            if std::mem::take(&mut self.wrote)
                && let Some(checkpointer) = &self.checkpointer
            {
                checkpointer.committed();
            }
            if next == Next::Stop {
                break;
            }
        }
        tracing::debug!("journal writer stopped");
    }

    fn process(&mut self, batch: &mut Vec<Op>) -> Next {
        let Some(inner) = self.inner.upgrade() else {
            batch.clear();
            return Next::Stop;
        };
        let mut sessions = Vec::new();
        let mut cursors = Vec::new();
        let mut appends = Vec::new();
        let mut after = Vec::new();
        for op in batch.drain(..) {
            match op {
                Op::Append(queued) => appends.push(queued),
                Op::Session(op) => sessions.push(op),
                Op::Cursor(cursor) => cursors.push(cursor),
                other => after.push(other),
            }
        }
        self.write(&inner, appends, sessions, cursors);
        let mut next = Next::Continue;
        let mut pruned = false;
        for op in after {
            match op {
                Op::Flush(done) => {
                    let _ = done.send(());
                }
                Op::Close(done) => {
                    self.index_all();
                    if let Err(e) = self.log.sync() {
                        tracing::warn!("syncing the payload log: {e}");
                    }
                    // Its last pass ends before the journal counts as closed.
                    self.checkpointer = None;
                    let _ = done.send(());
                    next = Next::Stop;
                }
                Op::Prune(done) => {
                    // Timer ticks that piled up behind a long batch make one round, not several.
                    let n = if pruned && done.is_none() { 0 } else { self.prune(Pruning::Round) };
                    pruned = true;
                    inner.stats.pruned.fetch_add(n, Ordering::Relaxed);
                    if let Some(done) = done {
                        let _ = done.send(n);
                    }
                }
                // `batched`: the checkpointer's pass syncs SQLite's log; the payload log is synced here, and the
                // next commit records how far.
                Op::Checkpoint => {
                    self.wrote = true;
                    match self.log.sync() {
                        Ok(()) => self.log_synced_unrecorded = Some(self.log.staged_upto()),
                        Err(e) => tracing::warn!("syncing the payload log: {e}"),
                    }
                }
                Op::Index(done) => match done {
                    Some(done) => {
                        self.index_all();
                        let _ = done.send(());
                    }
                    None => {
                        if self.last_indexed.elapsed() >= self.config.index_interval {
                            self.index_topics();
                        }
                    }
                },
                Op::Restore { window, done } => {
                    self.wrote = true;
                    let _ = done.send(self.restore(window).map_err(|e| e.to_string()));
                }
                Op::Append(_) | Op::Session(_) | Op::Cursor(_) => {}
            }
        }
        if self.last_id - self.indexed_upto >= INDEX_MAX_ROWS {
            self.index_topics();
        }
        next
    }

    /// Commits a batch: its appends, then its session changes and cursor commits, in one transaction (with
    /// `synced`, one sync). The rows go first because session changes sent after an append (a queued delivery, a
    /// read-back) refer to its id, and a cursor sent after it may cover it; a session change sent before it (a
    /// subscription before a publish) is durable no later than that message's acknowledgement. Then completes
    /// the appends (or refuses them all), answers the read-backs and the cursor commits. If the appends cannot
    /// be written (disk full, hard cap), the session changes and cursors are still saved, alone.
    fn write(
        &mut self,
        inner: &Shared,
        appends: Vec<Queued>,
        sessions: Vec<SessionOp>,
        cursors: Vec<CursorCommit>,
    ) {
        if appends.is_empty() {
            self.save_changes(sessions, cursors);
            return;
        }
        let result = match self.over_hard_cap(&appends) {
            true => Err(Failed::Appends(WriteFailure::Full)),
            false => self.commit_together(&appends, &sessions, &cursors),
        };
        match result {
            Ok(loads) => {
                self.completed(inner, appends, Ok(()));
                answer_loads(sessions, loads);
                answer_cursors(cursors, &Ok(()));
            }
            Err(Failed::Appends(failure)) => {
                self.completed(inner, appends, Err(failure));
                self.save_changes(sessions, cursors);
            }
            Err(Failed::Sessions(e)) => {
                tracing::error!(
                    "saving session state or cursors failed ({e}): committing the batch's messages alone"
                );
                let result = self.commit_appends(&appends);
                self.completed(inner, appends, result);
                self.save_changes(sessions, cursors);
            }
        }
    }

    fn commit_together(
        &mut self,
        appends: &[Queued],
        sessions: &[SessionOp],
        cursors: &[CursorCommit],
    ) -> Result<Vec<SpillLoad>, Failed> {
        let mark = self.log.mark();
        let result = (|| {
            let tx = self.conn.transaction().map_err(|e| Failed::Appends(classify(e)))?;
            let newest = insert_appends(
                &tx,
                &self.insert_sql,
                &mut self.log,
                &self.config,
                &mut self.log_synced_unrecorded,
                appends,
            )
            .map_err(Failed::Appends)?;
            let loads = session_statements(&tx, &mut self.generations, self.log.dir(), sessions)
                .map_err(Failed::Sessions)?;
            cursor_statements(&tx, cursors).map_err(Failed::Sessions)?;
            tx.commit().map_err(|e| Failed::Appends(classify(e)))?;
            Ok((newest, loads))
        })();
        let (newest, loads) = result.inspect_err(|_| self.log.rollback(mark))?;
        self.wrote = true;
        self.last_id = self.last_id.max(newest);
        Ok(loads)
    }

    fn commit_appends(&mut self, appends: &[Queued]) -> Result<(), WriteFailure> {
        match self.commit_together(appends, &[], &[]) {
            Ok(_) => Ok(()),
            Err(Failed::Appends(failure)) => Err(failure),
            Err(Failed::Sessions(e)) => Err(WriteFailure::Other(e)),
        }
    }

    /// Session changes and cursor commits in a transaction of their own; a failure is logged (read-backs then
    /// report `failed`) and returned to the cursors' committers.
    fn save_changes(&mut self, ops: Vec<SessionOp>, cursors: Vec<CursorCommit>) {
        if ops.is_empty() && cursors.is_empty() {
            return;
        }
        let result = (|| {
            let tx = self.conn.transaction()?;
            let loads = session_statements(&tx, &mut self.generations, self.log.dir(), &ops)?;
            cursor_statements(&tx, &cursors)?;
            tx.commit()?;
            Ok::<_, rusqlite::Error>(loads)
        })();
        match result {
            Ok(loads) => {
                self.wrote = true;
                answer_loads(ops, loads);
                answer_cursors(cursors, &Ok(()));
            }
            Err(e) => {
                tracing::error!("saving session state or cursors failed: {e}");
                answer_cursors(cursors, &Err(e.to_string()));
            }
        }
    }

    /// The start-up cleanup of the session queues ([`Op::Restore`]), in one transaction. Returns the deliveries
    /// removed.
    fn restore(&mut self, window: usize) -> rusqlite::Result<u64> {
        let tx = self.conn.transaction()?;
        let orphans = tx.execute(
            "DELETE FROM session_messages WHERE client_id NOT IN (SELECT client_id FROM sessions) \
             OR message_id NOT IN (SELECT id FROM messages)",
            [],
        )?;
        if orphans > 0 {
            tracing::info!(orphans, "queued deliveries of ended sessions or pruned messages removed");
        }
        tx.execute(
            "UPDATE session_messages SET spilled = (r.n > ?) FROM (SELECT seq AS s, ROW_NUMBER() OVER \
             (PARTITION BY client_id ORDER BY seq) AS n FROM session_messages WHERE packet_id IS NULL) AS r \
             WHERE session_messages.seq = r.s",
            [i64::try_from(window).unwrap_or(i64::MAX)],
        )?;
        tx.commit()?;
        Ok(orphans as u64)
    }

    /// Completes a batch of appends (or refuses them all) and gives their places in the journal's queue back.
    fn completed(&mut self, inner: &Shared, appends: Vec<Queued>, result: Result<(), WriteFailure>) {
        let count = appends.len();
        let places = appends.iter().map(|a| usize::try_from(a.places).unwrap_or(0)).sum();
        inner.permits.add_permits(places);
        match result {
            Ok(()) => {
                inner.refusing.store(false, Ordering::Relaxed);
                inner.stats.appended.fetch_add(count as u64, Ordering::Relaxed);
                inner.stats.batches.fetch_add(1, Ordering::Relaxed);
                for done in appends.into_iter().filter_map(|a| a.done) {
                    let _ = done.send(Ok(()));
                }
            }
            Err(failure) => {
                let refusal = match &failure {
                    WriteFailure::Full => Refusal::Full,
                    WriteFailure::Other(_) | WriteFailure::Log(_) => Refusal::Unavailable,
                };
                inner.refusing.store(refusal == Refusal::Full, Ordering::Relaxed);
                let mut refused = 0u64;
                let mut dropped = 0u64;
                for append in appends {
                    match append.done {
                        Some(done) => {
                            refused += 1;
                            let _ = done.send(Err(refusal));
                        }
                        None => dropped += 1,
                    }
                }
                inner.stats.refused.fetch_add(refused, Ordering::Relaxed);
                inner.stats.dropped_qos0.fetch_add(dropped, Ordering::Relaxed);
                let why = match &failure {
                    WriteFailure::Full => "the disk or the journal's hard cap is full".to_owned(),
                    WriteFailure::Other(e) => e.to_string(),
                    WriteFailure::Log(e) => format!("writing the payload log: {e}"),
                };
                let now = Instant::now();
                if self.last_error_log.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
                    self.last_error_log = Some(now);
                    tracing::error!(
                        refused,
                        dropped_qos0 = dropped,
                        "journal write failed ({why}): QoS 1/2 publishes are refused and QoS 0 dropped until it succeeds again"
                    );
                }
            }
        }
    }

    /// Adds the rows after `indexed_upto` (at most [`INDEX_MAX_ROWS`]) to the topic index, in topic order, in one
    /// transaction with the new position. History queries scan the rows beyond it, so a failure here only
    /// makes them slower; it is retried at the next interval.
    fn index_topics(&mut self) {
        self.last_indexed = Instant::now();
        if self.last_id <= self.indexed_upto {
            return;
        }
        let end = self.last_id.min(self.indexed_upto + INDEX_MAX_ROWS);
        let from = self.indexed_upto;
        let result = (|| -> rusqlite::Result<()> {
            let tx = self.conn.transaction()?;
            tx.prepare_cached(
                "INSERT OR IGNORE INTO topic_index (topic, id) \
                 SELECT topic, id FROM messages WHERE id > ? AND id <= ? ORDER BY topic, id",
            )?
            .execute(params![from, end])?;
            // The topic catalogue, from the same rows: one upsert per distinct topic of the step.
            tx.prepare_cached(
                "INSERT INTO topics (topic, last_id, count) \
                 SELECT topic, max(id), count(*) FROM messages WHERE id > ? AND id <= ? GROUP BY topic \
                 ON CONFLICT (topic) DO UPDATE SET last_id = max(last_id, excluded.last_id), \
                 count = count + excluded.count",
            )?
            .execute(params![from, end])?;
            tx.prepare_cached("INSERT OR REPLACE INTO journal_state (key, value) VALUES ('topic_index', ?)")?
                .execute([end])?;
            tx.commit()
        })();
        match result {
            Ok(()) => {
                self.indexed_upto = end;
                self.wrote = true;
            }
            Err(e) => {
                tracing::warn!("indexing the journal's topics failed (history queries scan instead): {e}")
            }
        }
    }

    /// Indexes everything committed so far.
    fn index_all(&mut self) {
        while self.indexed_upto < self.last_id {
            let before = self.indexed_upto;
            self.index_topics();
            if self.indexed_upto == before {
                break;
            }
        }
    }

    /// The journal's size in bytes: the file, not counting free pages, and the payload log's segments.
    fn used_bytes(&self) -> rusqlite::Result<u64> {
        let pragma = |sql: &str| self.conn.prepare_cached(sql)?.query_row([], |r| r.get::<_, i64>(0));
        let (pages, free, size) =
            (pragma("PRAGMA page_count")?, pragma("PRAGMA freelist_count")?, pragma("PRAGMA page_size")?);
        Ok(u64::try_from((pages - free).max(0) * size).unwrap_or(0) + self.log.bytes())
    }

    /// Beyond the hard cap even after pruning everything it allows, with `appends` about to be written.
    ///
    /// Measuring the file costs three statements, a tenth of the writer's time when done for every small batch.
    /// So while the last measurement was well below the cap (by [`CAP_MARGIN`]), it is taken again only after a
    /// second, or once what was appended since (counted generously) could have used a quarter of that margin.
    fn over_hard_cap(&mut self, appends: &[Queued]) -> bool {
        let Some(cap) = self.config.retention.hard_cap_bytes else { return false };
        self.unmeasured += appends.iter().map(|a| row_size_bound(&a.message)).sum::<u64>();
        if let Some((at, used)) = self.measured
            && used.saturating_add(CAP_MARGIN) < cap
            && self.unmeasured < CAP_MARGIN / 4
            && at.elapsed() < Duration::from_secs(1)
        {
            return false;
        }
        let mut used = match self.used_bytes() {
            Ok(used) => used,
            Err(_) => return false,
        };
        // Beyond the cap, as pruning counts it (it stops once the file is no larger than the cap).
        if used > cap {
            self.prune(Pruning::BelowHardCap);
            used = self.used_bytes().unwrap_or(used);
        }
        self.measured = Some((Instant::now(), used));
        self.unmeasured = 0;
        used > cap
    }

    /// One bounded round of retention. Returns the rows deleted.
    fn prune(&mut self, pruning: Pruning) -> u64 {
        match self.prune_inner(pruning) {
            Ok(n) => {
                if n > 0 {
                    tracing::debug!(rows = n, "journal pruned");
                    self.wrote = true;
                }
                n
            }
            Err(e) => {
                tracing::warn!("journal pruning failed: {e}");
                0
            }
        }
    }

    fn prune_inner(&mut self, pruning: Pruning) -> rusqlite::Result<u64> {
        let mut retention = self.config.retention.clone();
        if pruning == Pruning::BelowHardCap {
            // Just below the hard cap, first what no one needs: the rest of a round waits for the next one.
            retention.max_age = None;
            retention.max_bytes = retention.hard_cap_bytes;
        }
        // Rows up to the slowest durable consumer's cursor are done with; later rows are protected.
        let protected_from: Option<i64> =
            self.conn.query_row("SELECT min(position) FROM cursors", [], |r| r.get(0)).optional()?.flatten();
        // The newest row always stays: row ids are `max(id) + 1`, so an emptied table would hand out ids again
        // that cursors and the topic index have already passed.
        let newest_kept = self.last_id - 1;
        let limit = protected_from.unwrap_or(i64::MAX).min(newest_kept);
        let mut deleted = 0u64;
        if let Some(age) = retention.max_age {
            let cutoff = unix_millis(SystemTime::now()) - i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
            for _ in 0..PRUNE_STEPS {
                let n = self
                    .conn
                    .prepare_cached(
                        "DELETE FROM messages WHERE id IN \
                         (SELECT id FROM messages WHERE ts < ? AND id <= ? \
                          AND id NOT IN (SELECT message_id FROM retained) \
                          AND id NOT IN (SELECT message_id FROM session_messages) ORDER BY id LIMIT ?)",
                    )?
                    .execute(params![cutoff, limit, PRUNE_CHUNK])?;
                deleted += n as u64;
                if n < PRUNE_CHUNK as usize {
                    break;
                }
            }
        }
        if pruning == Pruning::Round {
            deleted_presence(&self.conn, retention.max_age)?;
        }
        // Above `max_bytes`, what no cursor and no session queue needs; above the hard cap, anything but the
        // retained messages.
        let soft = "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE id <= ? \
                    AND id NOT IN (SELECT message_id FROM retained) \
                    AND id NOT IN (SELECT message_id FROM session_messages) ORDER BY id LIMIT ?)";
        let hard = "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE id <= ? \
                    AND id NOT IN (SELECT message_id FROM retained) ORDER BY id LIMIT ?)";
        for (bound, cap, sql) in
            [(limit, retention.max_bytes, soft), (newest_kept, retention.hard_cap_bytes, hard)]
        {
            let Some(cap) = cap else { continue };
            for _ in 0..PRUNE_STEPS {
                if self.used_bytes()? <= cap {
                    break;
                }
                let n = self.conn.prepare_cached(sql)?.execute(params![bound, PRUNE_CHUNK])?;
                deleted += n as u64;
                if n == 0 {
                    break;
                }
                // Segments left without rows go now, and no longer count.
                self.log.remove_unreferenced(&self.conn)?;
            }
        }
        if deleted > 0 && pruning == Pruning::Round {
            // Topics whose newest message is gone leave the catalogue.
            self.conn
                .prepare_cached(
                    "DELETE FROM topics WHERE last_id < (SELECT coalesce(min(id), 0) FROM messages)",
                )?
                .execute([])?;
            self.conn.execute_batch("PRAGMA incremental_vacuum")?;
        }
        self.log.remove_unreferenced(&self.conn)?;
        Ok(deleted)
    }
}

/// How much retention does at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pruning {
    /// A round (every `prune_interval`, or asked for): by age, then down to `max_mb`, then to the hard cap, at
    /// most [`PRUNE_STEPS`] chunks each; old presence history; the topic catalogue; free pages back to the file
    /// system.
    Round,
    /// Before a batch that finds the journal above its hard cap: only what takes it below, what no one needs
    /// first. Deleting down to `max_mb` there (16,000 rows at a time) held up the batch's acknowledgements for
    /// tens of milliseconds, every few batches at 4 KiB and 85,000 msg/s.
    BelowHardCap,
}

/// Presence history older than `max_age` goes (in bounded steps, with the messages), and so does the last
/// presence of clients offline since then; beyond [`PRESENCE_EVENTS_MAX`] rows the oldest go whatever their age.
fn deleted_presence(conn: &Connection, max_age: Option<Duration>) -> rusqlite::Result<()> {
    if let Some(age) = max_age {
        let cutoff = unix_millis(SystemTime::now()) - i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        conn.prepare_cached(
            "DELETE FROM presence_events WHERE id IN (SELECT id FROM presence_events WHERE ts < ? ORDER BY ts LIMIT ?)",
        )?
        .execute(params![cutoff, PRUNE_CHUNK])?;
        conn.prepare_cached("DELETE FROM presence WHERE state <> 'online' AND ts < ?")?.execute([cutoff])?;
    }
    // Ids only grow (rowids above the newest), so the newest `PRESENCE_EVENTS_MAX` are those above this bound:
    // two index seeks rather than a count of the table.
    conn.prepare_cached(
        "DELETE FROM presence_events WHERE id IN (SELECT id FROM presence_events WHERE id <= \
         (SELECT coalesce(max(id), 0) FROM presence_events) - ? ORDER BY id LIMIT ?)",
    )?
    .execute(params![PRESENCE_EVENTS_MAX, PRUNE_CHUNK])?;
    Ok(())
}

/// Reads back the oldest `limit` spilled deliveries of `client` and takes them out of the spilled set: kept as
/// queued rows (`keep`, a persistent session, whose later transitions update them) or deleted. Rows whose
/// message expired or is gone (removed at the hard cap) are deleted; the gone ones are counted as missing.
fn load_spilled(
    tx: &Transaction<'_>,
    payload_dir: &Path,
    client: &ClientId,
    limit: usize,
    keep: bool,
) -> rusqlite::Result<SpillLoad> {
    let now = unix_millis(SystemTime::now());
    let mut load = SpillLoad::default();
    let mut gone = Vec::new();
    let mut log = payload_log::Reader::new(payload_dir.to_owned());
    let mut last = None;
    {
        let mut statement = tx.prepare_cached(
            "SELECT s.seq, s.qos AS delivered_qos, s.retain AS delivered_retain, s.sub_ids, m.* \
             FROM session_messages s LEFT JOIN messages m ON m.id = s.message_id \
             WHERE s.client_id = ? AND s.spilled = 1 ORDER BY s.seq LIMIT ?",
        )?;
        let mut rows = statement.query(params![client.as_str(), i64::try_from(limit).unwrap_or(i64::MAX)])?;
        while let Some(row) = rows.next()? {
            load.consumed += 1;
            let seq: i64 = row.get("seq")?;
            last = Some(seq);
            if row.get::<_, Option<i64>>("id")?.is_none() {
                load.missing += 1;
                gone.push(seq);
                continue;
            }
            let stored = StoredRow::from_rusqlite(row)?;
            let Some(message) = stored.into_message(now, false, &mut log) else {
                gone.push(seq);
                continue;
            };
            load.deliveries.push(queued_delivery(
                message,
                row.get("delivered_qos")?,
                row.get("delivered_retain")?,
                row.get("sub_ids")?,
            ));
        }
    }
    for seq in gone {
        tx.prepare_cached("DELETE FROM session_messages WHERE seq = ?")?.execute([seq])?;
    }
    if let Some(last) = last {
        let sql = match keep {
            true => {
                "UPDATE session_messages SET spilled = 0 WHERE client_id = ? AND spilled = 1 AND seq <= ?"
            }
            false => "DELETE FROM session_messages WHERE client_id = ? AND spilled = 1 AND seq <= ?",
        };
        tx.prepare_cached(sql)?.execute(params![client.as_str(), last])?;
    }
    if load.missing > 0 {
        tracing::warn!(
            client = %client,
            lost = load.missing,
            "queued messages were gone from the journal (removed at its hard cap, or refused when published) \
             before this session could take them"
        );
    }
    Ok(load)
}

/// Runs a batch's session changes in `tx`. Returns what each read-back (`SessionOp::Load`) read, in order: they
/// are answered after the commit that takes their deliveries out of the spilled set.
fn session_statements(
    tx: &Transaction<'_>,
    generations: &mut HashMap<ClientId, u64>,
    payload_dir: &Path,
    ops: &[SessionOp],
) -> rusqlite::Result<Vec<SpillLoad>> {
    let mut loads = Vec::new();
    for op in ops {
        match op {
            SessionOp::Save(r) => {
                let will = r.will.as_ref();
                let p = WillProperties::of(will);
                tx.prepare_cached(
                    "INSERT INTO sessions (client_id, expiry, disconnected_at, will_topic, will_payload, will_qos, \
                     will_retain, will_delay, will_due, username, will_payload_format, will_expiry, \
                     will_content_type, will_response_topic, will_correlation_data, will_user_properties) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                     ON CONFLICT (client_id) DO UPDATE SET expiry = excluded.expiry, username = excluded.username, \
                     disconnected_at = excluded.disconnected_at, will_topic = excluded.will_topic, \
                     will_payload = excluded.will_payload, will_qos = excluded.will_qos, \
                     will_retain = excluded.will_retain, will_delay = excluded.will_delay, \
                     will_due = excluded.will_due, will_payload_format = excluded.will_payload_format, \
                     will_expiry = excluded.will_expiry, will_content_type = excluded.will_content_type, \
                     will_response_topic = excluded.will_response_topic, \
                     will_correlation_data = excluded.will_correlation_data, \
                     will_user_properties = excluded.will_user_properties",
                )?
                .execute(params![
                    r.client_id.as_str(),
                    i64::from(r.expiry),
                    r.disconnected_at,
                    will.map(|w| w.message.topic.to_string()),
                    will.map(|w| &w.message.payload[..]),
                    will.map(|w| w.message.qos as i64),
                    will.map(|w| w.message.retain),
                    will.map(|w| i64::from(w.delay)),
                    r.will_due,
                    r.username.as_deref(),
                    p.payload_format,
                    p.expiry,
                    p.content_type,
                    p.response_topic,
                    p.correlation_data,
                    p.user_properties,
                ])?;
            }
            SessionOp::Remove(client) => {
                // Spilled deliveries stay: the queue may live on as a clean session (expiry set to 0), and
                // `Discard` forgets them when it ends.
                for sql in [
                    "DELETE FROM sessions WHERE client_id = ?",
                    "DELETE FROM subscriptions WHERE client_id = ?",
                    "DELETE FROM session_messages WHERE client_id = ? AND spilled = 0",
                ] {
                    tx.prepare_cached(sql)?.execute([client.as_str()])?;
                }
            }
            SessionOp::Subscribe(client, f, id) => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO subscriptions (client_id, filter, qos, no_local, retain_as_published, \
                     retain_handling, subscription_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                )?
                .execute(params![
                    client.as_str(),
                    f.filter,
                    f.options.qos as i64,
                    f.options.no_local,
                    f.options.retain_as_published,
                    f.options.retain_handling as i64,
                    id.map(i64::from),
                ])?;
            }
            SessionOp::Unsubscribe(client, filter) => {
                tx.prepare_cached("DELETE FROM subscriptions WHERE client_id = ? AND filter = ?")?
                    .execute(params![client.as_str(), filter])?;
            }
            SessionOp::Queued { client, message_id, qos, retain, sub_ids, spilled } => {
                let sub_ids = (!sub_ids.is_empty()).then(|| serde_json::to_string(&sub_ids).ok()).flatten();
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO session_messages (client_id, message_id, qos, retain, sub_ids, spilled) \
                     VALUES (?, ?, ?, ?, ?, ?)",
                )?
                .execute(params![client.as_str(), message_id, *qos as i64, retain, sub_ids, spilled.is_some()])?;
                if let Some(generation) = spilled
                    && generations.get(client) != Some(generation)
                {
                    generations.insert(client.clone(), *generation);
                }
            }
            SessionOp::InFlight { client, message_id, packet_id, released } => {
                tx.prepare_cached(
                    "UPDATE session_messages SET packet_id = ?, released = ? WHERE client_id = ? AND message_id = ?",
                )?
                .execute(params![i64::from(*packet_id), released, client.as_str(), message_id])?;
            }
            SessionOp::Delivered { client, message_id } => {
                tx.prepare_cached("DELETE FROM session_messages WHERE client_id = ? AND message_id = ?")?
                    .execute(params![client.as_str(), message_id])?;
            }
            SessionOp::Load { client, generation, limit, keep, .. } => {
                let stale = generations.get(client).is_some_and(|g| g != generation);
                let load = match stale {
                    true => SpillLoad::default(),
                    false => load_spilled(tx, payload_dir, client, *limit, *keep)?,
                };
                loads.push(load);
            }
            SessionOp::Discard(client) => {
                tx.prepare_cached("DELETE FROM session_messages WHERE client_id = ?")?
                    .execute([client.as_str()])?;
                generations.remove(client);
            }
            SessionOp::Presence(change) => presence_statements(tx, change)?,
        }
    }
    Ok(loads)
}

/// Records a presence change: the client's last presence (with its will while online) and a history row.
fn presence_statements(tx: &Transaction<'_>, c: &PresenceChange) -> rusqlite::Result<()> {
    let will = c.will.as_ref();
    let p = WillProperties::of(will);
    tx.prepare_cached(
        "INSERT INTO presence (client_id, state, reason, ts, username, peer, will_topic, will_payload, will_qos, \
         will_retain, will_delay, will_payload_format, will_expiry, will_content_type, will_response_topic, \
         will_correlation_data, will_user_properties) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (client_id) DO UPDATE SET \
         state = excluded.state, reason = excluded.reason, ts = excluded.ts, username = excluded.username, \
         peer = excluded.peer, will_topic = excluded.will_topic, will_payload = excluded.will_payload, \
         will_qos = excluded.will_qos, will_retain = excluded.will_retain, will_delay = excluded.will_delay, \
         will_payload_format = excluded.will_payload_format, will_expiry = excluded.will_expiry, \
         will_content_type = excluded.will_content_type, will_response_topic = excluded.will_response_topic, \
         will_correlation_data = excluded.will_correlation_data, will_user_properties = excluded.will_user_properties",
    )?
    .execute(params![
        c.client_id.as_str(),
        c.state.as_str(),
        c.reason.as_deref(),
        c.ts,
        c.username.as_deref(),
        c.peer.as_deref(),
        will.map(|w| w.message.topic.to_string()),
        will.map(|w| &w.message.payload[..]),
        will.map(|w| w.message.qos as i64),
        will.map(|w| w.message.retain),
        will.map(|w| i64::from(w.delay)),
        p.payload_format,
        p.expiry,
        p.content_type,
        p.response_topic,
        p.correlation_data,
        p.user_properties,
    ])?;
    tx.prepare_cached(
        "INSERT INTO presence_events (ts, client_id, username, peer, state, reason) VALUES (?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        c.ts,
        c.client_id.as_str(),
        c.username.as_deref(),
        c.peer.as_deref(),
        c.state.as_str(),
        c.reason.as_deref(),
    ])?;
    Ok(())
}

/// Stores durable consumers' positions (`Op::Cursor`), in the order they were sent.
fn cursor_statements(tx: &Transaction<'_>, cursors: &[CursorCommit]) -> rusqlite::Result<()> {
    let now = unix_millis(SystemTime::now());
    for cursor in cursors {
        match cursor.change {
            CursorChange::Position(position) => tx
                .prepare_cached(
                    "INSERT INTO cursors (name, position, updated) VALUES (?, ?, ?) \
                     ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated = excluded.updated",
                )?
                .execute(params![cursor.name, position, now])?,
            CursorChange::Gap { from, to, at } => tx
                .prepare_cached(
                    "UPDATE cursors SET gap_total = gap_total + ?, gap_from = ?, gap_to = ?, gap_at = ? \
                     WHERE name = ?",
                )?
                .execute(params![to - from + 1, from, to, at, cursor.name])?,
            CursorChange::Delete => tx.prepare_cached("DELETE FROM cursors WHERE name = ?")?.execute([&cursor.name])?,
        };
    }
    Ok(())
}

/// Tells each cursor's committer how its commit went.
fn answer_cursors(cursors: Vec<CursorCommit>, result: &Result<(), String>) {
    for cursor in cursors {
        let _ = cursor.done.send(result.clone());
    }
}

/// Answers each read-back of `ops` with what it read (`loads`, in the same order).
fn answer_loads(ops: Vec<SessionOp>, loads: Vec<SpillLoad>) {
    let dones = ops.into_iter().filter_map(|op| match op {
        SessionOp::Load { done, .. } => Some(done),
        _ => None,
    });
    for (done, load) in dones.zip(loads) {
        let _ = done.send(load);
    }
}

/// Which part of a batch's transaction failed.
#[derive(Debug)]
enum Failed {
    /// The rows, or the commit: the appends are refused.
    Appends(WriteFailure),
    /// A session change or a cursor: the appends are tried again alone.
    Sessions(rusqlite::Error),
}

/// A will's MQTT 5 properties as the `will_*` columns of `sessions` and `presence` keep them (those of
/// `messages`): without them a will published after a crash would lose what the client gave.
struct WillProperties<'a> {
    payload_format: Option<i64>,
    expiry: Option<i64>,
    content_type: Option<&'a str>,
    response_topic: Option<&'a str>,
    correlation_data: Option<&'a [u8]>,
    user_properties: Option<String>,
}

impl WillProperties<'_> {
    fn of(will: Option<&Will>) -> WillProperties<'_> {
        let p = will.and_then(|w| w.message.properties.as_deref());
        WillProperties {
            payload_format: p.and_then(|p| p.payload_format_indicator).map(i64::from),
            expiry: p.and_then(|p| p.message_expiry_interval).map(i64::from),
            content_type: p.and_then(|p| p.content_type.as_deref()),
            response_topic: p.and_then(|p| p.response_topic.as_deref()),
            correlation_data: p.and_then(|p| p.correlation_data.as_deref()),
            user_properties: p
                .filter(|p| !p.user_properties.is_empty())
                .and_then(|p| serde_json::to_string(&p.user_properties).ok()),
        }
    }
}

/// Inserts the rows of `appends` in `tx`, their larger payloads staged in the payload log, and writes those
/// (with `synced`, synced, and the newest id they cover recorded in `tx`) before the caller commits. With
/// `batched`, records instead how far the last sync of the log went (`synced_unrecorded`), if it is not yet.
fn insert_appends(
    tx: &Transaction<'_>,
    insert_sql: &[(usize, String)],
    log: &mut Log,
    config: &JournalConfig,
    synced_unrecorded: &mut Option<i64>,
    appends: &[Queued],
) -> Result<i64, WriteFailure> {
    let newest = insert_rows(tx, insert_sql, appends, log, config.payload_log_min)?;
    let synced = config.durability == Durability::Synced;
    let recorded = match log.has_pending() {
        true => {
            log.write(synced).map_err(classify_log)?;
            synced.then(|| log.staged_upto())
        }
        false => None,
    };
    if let Some(upto) = recorded.or_else(|| synced_unrecorded.take()) {
        tx.prepare_cached("INSERT OR REPLACE INTO journal_state (key, value) VALUES (?, ?)")
            .and_then(|mut s| s.execute(params![payload_log::SYNCED_KEY, upto]))
            .map_err(classify)?;
    }
    Ok(newest)
}

/// Inserts `appends` under their ids, and updates the retained table for those that are retained. Returns the
/// newest id.
fn insert_rows(
    tx: &Transaction<'_>,
    insert_sql: &[(usize, String)],
    appends: &[Queued],
    log: &mut Log,
    log_min: usize,
) -> Result<i64, WriteFailure> {
    let mut newest = 0;
    let mut rest = appends;
    while !rest.is_empty() {
        let Some((rows, sql)) = insert_sql.iter().find(|(n, _)| *n <= rest.len()) else { break };
        let (chunk, tail) = rest.split_at(*rows);
        rest = tail;
        let mut statement = tx.prepare_cached(sql).map_err(classify)?;
        let mut at = 1;
        for Queued { id, ts, message: m, .. } in chunk {
            let p = m.properties.as_deref();
            let user_properties = p
                .filter(|p| !p.user_properties.is_empty())
                .and_then(|p| serde_json::to_string(&p.user_properties).ok());
            // Retained messages stay in the row: one would keep its whole segment of the log.
            let logged: Option<PayloadRef> =
                (m.payload.len() >= log_min && !m.retain).then(|| log.stage(*id, &m.payload));
            let bind = |statement: &mut rusqlite::CachedStatement<'_>, at: &mut usize| {
                statement.raw_bind_parameter(*at, id)?;
                statement.raw_bind_parameter(*at + 1, ts)?;
                statement.raw_bind_parameter(*at + 2, &*m.topic)?;
                statement
                    .raw_bind_parameter(*at + 3, if logged.is_some() { &[][..] } else { &m.payload[..] })?;
                statement.raw_bind_parameter(*at + 4, m.qos as i64)?;
                statement.raw_bind_parameter(*at + 5, m.retain)?;
                statement.raw_bind_parameter(*at + 6, m.origin.as_ref().map(|c| c.as_str()))?;
                statement.raw_bind_parameter(*at + 7, m.username.as_deref())?;
                statement
                    .raw_bind_parameter(*at + 8, p.and_then(|p| p.payload_format_indicator).map(i64::from))?;
                statement
                    .raw_bind_parameter(*at + 9, p.and_then(|p| p.message_expiry_interval).map(i64::from))?;
                statement.raw_bind_parameter(*at + 10, p.and_then(|p| p.content_type.as_deref()))?;
                statement.raw_bind_parameter(*at + 11, p.and_then(|p| p.response_topic.as_deref()))?;
                statement.raw_bind_parameter(*at + 12, p.and_then(|p| p.correlation_data.as_deref()))?;
                statement.raw_bind_parameter(*at + 13, user_properties.as_deref())?;
                statement.raw_bind_parameter(*at + 14, logged.map(|l| l.at as i64))?;
                statement.raw_bind_parameter(*at + 15, logged.map(|l| i64::from(l.len)))?;
                statement.raw_bind_parameter(*at + 16, logged.map(|l| i64::from(l.crc)))?;
                *at += 17;
                Ok::<(), rusqlite::Error>(())
            };
            bind(&mut statement, &mut at).map_err(classify)?;
        }
        statement.raw_execute().map_err(classify)?;
        drop(statement);
        for queued in chunk {
            newest = newest.max(queued.id);
            let id = queued.id;
            if queued.message.retain {
                let topic = &*queued.message.topic;
                if queued.message.payload.is_empty() {
                    tx.prepare_cached("DELETE FROM retained WHERE topic = ?")
                        .and_then(|mut s| s.execute([topic]))
                        .map_err(classify)?;
                } else {
                    tx.prepare_cached("INSERT OR REPLACE INTO retained (topic, message_id) VALUES (?, ?)")
                        .and_then(|mut s| s.execute(params![topic, id]))
                        .map_err(classify)?;
                }
            }
        }
    }
    Ok(newest)
}

/// More than the bytes one message can add to the journal: its row with the properties, its page overhead, and its
/// entries in the time and topic indexes (the topic twice), at a generous factor.
fn row_size_bound(m: &crate::mqtt::broker::Message) -> u64 {
    let properties = m.properties.as_deref().map_or(0, |p| {
        p.content_type.as_ref().map_or(0, String::len)
            + p.response_topic.as_ref().map_or(0, String::len)
            + p.correlation_data.as_ref().map_or(0, |c| c.len())
            + p.user_properties.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>()
    });
    let bytes = m.payload.len() + 3 * m.topic.len() + properties + 64;
    u64::try_from(bytes * 2).unwrap_or(u64::MAX)
}
