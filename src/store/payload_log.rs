//! The payload log: payloads of [`JournalConfig::payload_log_min`](super::JournalConfig) bytes and more, kept out
//! of SQLite in append-only segment files beside the journal (`journal.payloads/`), their rows in `messages`
//! pointing into them (`payload_at`, `payload_len`, `payload_crc`; `payload` is empty).
//!
//! Why: everything SQLite writes goes into its log at commit and again into the database file at checkpoint, so
//! a 4 KiB payload went through the kernel three times (the log, the checkpoint's read of it, the file) and had
//! its WAL checksums computed on the way; with 4 KiB QoS 1 messages that was most of the gateway's CPU
//! (docs/BENCHMARKS.md, "4 KiB payloads"). Here a payload is written once, with the rest of its batch in one
//! `pwrite`, and the row that SQLite copies twice is about 60 bytes.
//!
//! **Segments.** Each file is named by the first message id whose payload it holds (`<id>.seg`, 20 digits).
//! Ids reach the writer in ascending order and a new segment starts only between batches, at the batch's first
//! id, so a row's payload is in the segment with the greatest first id not above the row's id. The writer
//! starts a new segment once the current one holds `JournalConfig::payload_segment_bytes` (16 MiB).
//!
//! **Crash safety.** A committed row must never point at payload bytes that are not on disk:
//! - with `synced`, each batch's payloads are written and synced (`fdatasync`) before its transaction commits,
//!   and the transaction records, in `journal_state.payloads_synced`, the newest id whose payload is synced;
//! - with `batched`, they are synced every window (with the log's own sync), and the next commit records how
//!   far;
//! - at start-up, every row above `payloads_synced` with a payload here is read back and checked against its
//!   CRC-32; a row whose payload did not reach the disk (a power cut in `batched` mode) is deleted, and the
//!   count logged. In `synced` mode there are none.
//!
//! **Retention.** Pruning deletes rows; a segment whose rows are all gone is deleted then. A reader that read
//! one of those rows just before finds its payload gone ([`PayloadError::Gone`]) and leaves the message out, as
//! if it had read after the pruning. Retained messages stay in SQLite: one retained value would otherwise keep
//! its whole segment. The hard cap and `max_mb` count the segments with the database file.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension};

/// The key of `journal_state` that records the newest message id whose payload is known to be synced.
pub(super) const SYNCED_KEY: &str = "payloads_synced";

/// The payload log's directory for a journal file: `journal.payloads` beside `journal.sqlite`.
pub fn dir_of(journal: &Path) -> PathBuf {
    journal.with_extension("payloads")
}

/// The bytes the segments in `dir` take on disk.
pub fn disk_bytes(dir: &Path) -> u64 {
    list(dir).map(|segments| segments.values().sum()).unwrap_or(0)
}

/// Puts the payloads of a copy of the journal (`VACUUM INTO`, for a backup) back into its rows, read from the
/// log in `dir`, so that the copy stands alone. A row whose segment retention removed meanwhile is left out of
/// the copy. Returns the rows left out.
pub fn inline_into(copy: &Path, dir: &Path) -> Result<u64, PayloadError> {
    let mut conn = Connection::open(copy)?;
    // A journal an older version wrote, not upgraded yet, has every payload in its rows.
    let logged: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('messages') WHERE name = 'payload_at'",
        [],
        |r| r.get(0),
    )?;
    if !logged {
        return Ok(0);
    }
    let tx = conn.transaction()?;
    let mut reader = Reader::new(dir.to_owned());
    let mut gone = 0;
    {
        let mut select = tx.prepare(
            "SELECT id, payload_at, payload_len, payload_crc FROM messages WHERE payload_at IS NOT NULL \
             ORDER BY id",
        )?;
        let mut update = tx.prepare(
            "UPDATE messages SET payload = ?, payload_at = NULL, payload_len = NULL, payload_crc = NULL \
             WHERE id = ?",
        )?;
        let mut delete = tx.prepare("DELETE FROM messages WHERE id = ?")?;
        let mut rows = select.query([])?;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let Some(at) = PayloadRef::from_columns(row.get(1)?, row.get(2)?, row.get(3)?) else { continue };
            match reader.read(id, at) {
                Ok(payload) => update.execute(rusqlite::params![payload, id])?,
                Err(PayloadError::Gone { .. }) => {
                    gone += 1;
                    delete.execute([id])?
                }
                Err(e) => return Err(e),
            };
        }
    }
    tx.commit()?;
    Ok(gone)
}

/// Where a row's payload is in its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PayloadRef {
    pub(crate) at: u64,
    pub(crate) len: u32,
    pub(crate) crc: u32,
}

impl PayloadRef {
    /// From the columns `payload_at`, `payload_len`, `payload_crc`: `None` for a payload kept in the row.
    pub(crate) fn from_columns(at: Option<i64>, len: Option<i64>, crc: Option<i64>) -> Option<PayloadRef> {
        Some(PayloadRef {
            at: u64::try_from(at?).ok()?,
            len: u32::try_from(len?).ok()?,
            crc: u32::try_from(crc?).ok()?,
        })
    }
}

/// A payload that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("message {id}: its payload is gone from the payload log (its segment was removed by retention)")]
    Gone { id: i64 },
    #[error("message {id}: its payload in the payload log is damaged ({why})")]
    Damaged { id: i64, why: String },
    #[error("message {id}: reading its payload: {source}")]
    Io { id: i64, source: io::Error },
    #[error("the copy of the journal: {0}")]
    Copy(#[from] rusqlite::Error),
}

fn segment_name(first: i64) -> String {
    format!("{first:020}.seg")
}

/// The segments in `dir`, by first id, with their sizes. A missing directory has none.
fn list(dir: &Path) -> io::Result<BTreeMap<i64, u64>> {
    let mut segments = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(segments),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(first) = name.to_str().and_then(|n| n.strip_suffix(".seg")).and_then(|n| n.parse().ok())
        else {
            continue;
        };
        segments.insert(first, entry.metadata()?.len());
    }
    Ok(segments)
}

/// Reads payloads from the log, opening each segment once.
pub(crate) struct Reader {
    dir: PathBuf,
    firsts: Option<Vec<i64>>,
    open: HashMap<i64, File>,
}

impl Reader {
    pub(crate) fn new(dir: PathBuf) -> Reader {
        Reader { dir, firsts: None, open: HashMap::new() }
    }

    /// The payload of message `id`, checked against its CRC.
    pub(crate) fn read(&mut self, id: i64, at: PayloadRef) -> Result<Vec<u8>, PayloadError> {
        match self.read_listed(id, at) {
            // Listed before a newer segment was started, or before one was removed: look again.
            Err(PayloadError::Damaged { .. }) => {
                self.firsts = None;
                self.open.clear();
                self.read_listed(id, at)
            }
            result => result,
        }
    }

    fn read_listed(&mut self, id: i64, at: PayloadRef) -> Result<Vec<u8>, PayloadError> {
        let io_error = |source| PayloadError::Io { id, source };
        let file = match self.file(id, false).map_err(io_error)? {
            Some(file) => file,
            // Listed before its segment was written: look again.
            None => self.file(id, true).map_err(io_error)?.ok_or(PayloadError::Gone { id })?,
        };
        let mut payload = vec![0; at.len as usize];
        match file.read_exact_at(&mut payload, at.at) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(PayloadError::Damaged { id, why: "the segment ends before it".into() });
            }
            Err(source) => return Err(PayloadError::Io { id, source }),
        }
        if crc32fast::hash(&payload) != at.crc {
            return Err(PayloadError::Damaged { id, why: "its CRC does not match".into() });
        }
        Ok(payload)
    }

    /// The segment holding message `id`'s payload, opened; `None` if there is none.
    fn file(&mut self, id: i64, relist: bool) -> io::Result<Option<&File>> {
        if relist || self.firsts.is_none() {
            self.firsts = Some(list(&self.dir)?.into_keys().collect());
        }
        let firsts = self.firsts.as_deref().unwrap_or_default();
        let Some(&first) = firsts.iter().rev().find(|&&f| f <= id) else { return Ok(None) };
        if !self.open.contains_key(&first) {
            match File::open(self.dir.join(segment_name(first))) {
                Ok(file) => {
                    self.open.insert(first, file);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(self.open.get(&first))
    }
}

/// Where the log was before a batch: [`Log::rollback`] goes back there if the batch is not committed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mark {
    first: Option<i64>,
    written: u64,
}

/// The writer's side of the log.
pub(super) struct Log {
    dir: PathBuf,
    /// Every segment by first id, with its size; the last is the one being appended to.
    segments: BTreeMap<i64, u64>,
    /// The last segment, open for writing.
    current: Option<(i64, File)>,
    /// The payloads staged for the batch being written, and where they start in the current segment (or in a new
    /// one starting at `new_first`).
    pending: Vec<u8>,
    pending_at: u64,
    new_first: Option<i64>,
    /// The newest message id staged so far.
    staged_upto: i64,
    /// Everything written is synced.
    synced: bool,
    /// A segment holding this much is closed, and the next batch starts a new one.
    segment_bytes: u64,
}

impl Log {
    /// Opens the log in `dir` (created if need be): appends go on at the end of its last segment.
    pub(super) fn open(dir: &Path, segment_bytes: u64) -> io::Result<Log> {
        std::fs::DirBuilder::new().recursive(true).mode(crate::files::PRIVATE_DIR).create(dir)?;
        let segments = list(dir)?;
        let current = match segments.last_key_value() {
            Some((&first, _)) => Some((
                first,
                std::fs::OpenOptions::new().read(true).write(true).open(dir.join(segment_name(first)))?,
            )),
            None => None,
        };
        Ok(Log {
            dir: dir.to_owned(),
            segments,
            current,
            pending: Vec::new(),
            pending_at: 0,
            new_first: None,
            staged_upto: 0,
            synced: true,
            segment_bytes: segment_bytes.max(1),
        })
    }

    /// The greatest first id of a segment: message ids from here on must be above it.
    pub(super) fn newest_first(&self) -> Option<i64> {
        self.segments.last_key_value().map(|(&first, _)| first)
    }

    /// The bytes the segments take.
    pub(super) fn bytes(&self) -> u64 {
        self.segments.values().sum()
    }

    /// The log's directory.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// A reader of this log.
    pub(super) fn reader(&self) -> Reader {
        Reader::new(self.dir.clone())
    }

    pub(super) fn mark(&self) -> Mark {
        Mark { first: self.current.as_ref().map(|(first, _)| *first), written: self.current_len() }
    }

    fn current_len(&self) -> u64 {
        self.current.as_ref().and_then(|(first, _)| self.segments.get(first)).copied().unwrap_or(0)
    }

    /// Stages message `id`'s payload for the batch being written; returns where it will be.
    pub(super) fn stage(&mut self, id: i64, payload: &[u8]) -> PayloadRef {
        if self.pending.is_empty() {
            let full = self.current.is_none() || self.current_len() >= self.segment_bytes;
            self.new_first = full.then_some(id);
            self.pending_at = if full { 0 } else { self.current_len() };
        }
        let at = self.pending_at + self.pending.len() as u64;
        self.pending.extend_from_slice(payload);
        self.staged_upto = self.staged_upto.max(id);
        PayloadRef {
            at,
            len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
            crc: crc32fast::hash(payload),
        }
    }

    /// Something is staged and not written yet.
    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The newest message id staged so far.
    pub(super) fn staged_upto(&self) -> i64 {
        self.staged_upto
    }

    /// Writes what is staged, in one `pwrite`, and with `sync` syncs it before returning. A new segment is
    /// created (and the previous one synced) first if one is due.
    pub(super) fn write(&mut self, sync: bool) -> io::Result<()> {
        if self.pending.is_empty() {
            return if sync { self.sync() } else { Ok(()) };
        }
        if let Some(first) = self.new_first.take() {
            self.sync()?;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .mode(crate::files::PRIVATE_FILE)
                .open(self.dir.join(segment_name(first)))?;
            // The new name must survive a power cut with the data written into it.
            File::open(&self.dir)?.sync_all()?;
            self.segments.insert(first, 0);
            self.current = Some((first, file));
        }
        let Some((first, file)) = &self.current else {
            return Err(io::Error::other("no segment to write to"));
        };
        let first = *first;
        if let Err(e) = file.write_all_at(&self.pending, self.pending_at) {
            let _ = file.set_len(self.pending_at);
            self.pending.clear();
            return Err(e);
        }
        let end = self.pending_at + self.pending.len() as u64;
        self.segments.insert(first, end);
        self.pending.clear();
        self.synced = false;
        if sync { self.sync() } else { Ok(()) }
    }

    /// Syncs what was written to the current segment.
    pub(super) fn sync(&mut self) -> io::Result<()> {
        if !self.synced
            && let Some((_, file)) = &self.current
        {
            file.sync_data()?;
        }
        self.synced = true;
        Ok(())
    }

    /// Undoes what was staged and written since `mark`: the batch was not committed.
    pub(super) fn rollback(&mut self, mark: Mark) {
        self.pending.clear();
        self.new_first = None;
        if let Some((first, file)) = &self.current {
            let keep = if mark.first == Some(*first) { mark.written } else { 0 };
            if self.segments.get(first).is_some_and(|&len| len > keep) && file.set_len(keep).is_ok() {
                self.segments.insert(*first, keep);
            }
        }
    }

    /// Deletes the segments (but the current one) whose rows are all gone. Returns the bytes freed.
    pub(super) fn remove_unreferenced(&mut self, conn: &Connection) -> rusqlite::Result<u64> {
        let firsts: Vec<i64> = self.segments.keys().copied().collect();
        let mut freed = 0;
        for (&first, &next) in firsts.iter().zip(firsts.iter().skip(1)) {
            let referenced = conn
                .prepare_cached(
                    "SELECT 1 FROM messages WHERE id >= ? AND id < ? AND payload_at IS NOT NULL LIMIT 1",
                )?
                .query_row([first, next], |_| Ok(()))
                .optional()?
                .is_some();
            if referenced {
                continue;
            }
            match std::fs::remove_file(self.dir.join(segment_name(first))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!("removing the payload segment {first}: {e}");
                    continue;
                }
            }
            freed += self.segments.remove(&first).unwrap_or(0);
        }
        Ok(freed)
    }
}

/// Checks every row above `journal_state.payloads_synced` whose payload is in the log, deletes those whose
/// payload did not reach the disk, and records the newest id as checked. Returns the rows deleted.
pub(super) fn verify_unsynced(conn: &mut Connection, log: &Log) -> rusqlite::Result<u64> {
    let synced: i64 = conn
        .query_row("SELECT value FROM journal_state WHERE key = ?", [SYNCED_KEY], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    let mut reader = log.reader();
    let mut damaged = Vec::new();
    let mut newest = synced;
    {
        let mut statement = conn.prepare(
            "SELECT id, payload_at, payload_len, payload_crc FROM messages \
             WHERE id > ? AND payload_at IS NOT NULL ORDER BY id",
        )?;
        let mut rows = statement.query([synced])?;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            newest = id;
            let Some(at) = PayloadRef::from_columns(row.get(1)?, row.get(2)?, row.get(3)?) else { continue };
            if let Err(e) = reader.read(id, at) {
                tracing::debug!("{e}");
                damaged.push(id);
            }
        }
    }
    // Every row up to the newest is checked now (with none in the log, there was nothing to check).
    let newest: i64 =
        conn.query_row("SELECT max(?, coalesce(max(id), 0)) FROM messages", [newest], |r| r.get(0))?;
    let tx = conn.transaction()?;
    for id in &damaged {
        tx.execute("DELETE FROM messages WHERE id = ?", [id])?;
    }
    tx.execute(
        "INSERT OR REPLACE INTO journal_state (key, value) VALUES (?, max(?, coalesce((SELECT value FROM \
         journal_state WHERE key = ?), 0)))",
        rusqlite::params![SYNCED_KEY, newest, SYNCED_KEY],
    )?;
    tx.commit()?;
    if !damaged.is_empty() {
        tracing::warn!(
            lost = damaged.len(),
            "messages whose payloads had not reached the disk before a power cut (durability \"batched\") were \
             removed from the journal"
        );
    }
    Ok(damaged.len() as u64)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::mqtt::broker::Message;
    use crate::mqtt::codec::QoS;
    use crate::store::history::{self, HistoryQuery, Order};
    use crate::store::{Durability, JOURNAL_FILE, Journal, JournalConfig, Retention};

    async fn journal(dir: &Path, adjust: impl FnOnce(&mut JournalConfig)) -> Journal {
        let mut config = JournalConfig { payload_segment_bytes: 64 * 1024, ..JournalConfig::default() };
        config.retention.prune_interval = Duration::from_secs(3600);
        adjust(&mut config);
        Journal::open(dir, config).await.unwrap()
    }

    /// Appends each message and waits for all of them to be committed.
    async fn append_all(j: &Journal, messages: impl IntoIterator<Item = Message>) -> Vec<i64> {
        let mut completions = Vec::new();
        let mut ids = Vec::new();
        for m in messages {
            let m = Arc::new(m);
            completions.push(j.append(&m).await);
            ids.push(*m.journal_id.get().unwrap());
        }
        for c in completions {
            c.await.unwrap().unwrap();
        }
        ids
    }

    fn big(topic: &str, i: usize, retain: bool) -> Message {
        Message::new(topic, payload(i, 4096), QoS::AtLeastOnce, retain)
    }

    /// Every message of `filter`, oldest first, as (id, payload).
    async fn history_of(j: &Journal, filter: &str) -> Vec<(i64, Vec<u8>)> {
        let q = HistoryQuery { order: Order::OldestFirst, limit: 10_000, ..HistoryQuery::new(filter) };
        let page = history::query(j.pool(), &q).await.unwrap();
        page.messages.into_iter().map(|m| (m.id, m.payload)).collect()
    }

    fn segments(dir: &Path) -> BTreeMap<i64, u64> {
        list(&dir_of(&dir.join(JOURNAL_FILE))).unwrap()
    }

    #[tokio::test]
    async fn large_payloads_are_written_once_to_the_log_and_read_back_by_every_reader() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = journal(dir.path(), |_| {}).await;
        let mut ids = Vec::new();
        for batch in 0..5 {
            ids.extend(
                append_all(
                    &j,
                    (batch * 20..batch * 20 + 20).map(|i| big(&format!("cam/{}", i % 3), i, false)),
                )
                .await,
            );
        }
        append_all(&j, (0..50).map(|i| Message::new("cam/small", format!("{i}"), QoS::AtLeastOnce, false)))
            .await;
        let retained = append_all(&j, [big("cam/last", 1000, true)]).await[0];

        // The 100 payloads are in the log, not in SQLite; the small ones and the retained one are in their rows.
        let (logged, empty): (i64, i64) = sqlx::query_as(
            "SELECT count(payload_at), sum(payload_at IS NOT NULL AND length(payload) = 0) FROM messages",
        )
        .fetch_one(j.pool())
        .await
        .unwrap();
        assert_eq!((logged, empty), (100, 100));
        let in_row: (Option<i64>, i64) =
            sqlx::query_as("SELECT payload_at, length(payload) FROM messages WHERE id = ?")
                .bind(retained)
                .fetch_one(j.pool())
                .await
                .unwrap();
        assert_eq!(in_row, (None, 4096));
        // A batch goes to one segment; the next starts a new one once it holds 64 KiB.
        assert!(segments(dir.path()).len() >= 2, "{:?}", segments(dir.path()));
        assert_eq!(segments(dir.path()).values().sum::<u64>(), 100 * 4096, "each payload written once");
        let log_dir = dir_of(&dir.path().join(JOURNAL_FILE));
        let mode =
            |p: &Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions());
        assert_eq!(mode(&log_dir) & 0o777, 0o700);
        let (first, _) = segments(dir.path()).into_iter().next().unwrap();
        assert_eq!(mode(&log_dir.join(segment_name(first))) & 0o777, 0o600);
        // `synced`: the commit recorded the newest id whose payload is synced.
        let synced: i64 = sqlx::query_scalar("SELECT value FROM journal_state WHERE key = ?")
            .bind(SYNCED_KEY)
            .fetch_one(j.pool())
            .await
            .unwrap();
        assert_eq!(synced, ids[99]);

        for round in ["before", "after reopening"] {
            let got = history_of(&j, "cam/+").await;
            let want: Vec<(i64, Vec<u8>)> =
                ids.iter().enumerate().map(|(i, &id)| (id, payload(i, 4096))).collect();
            let got_big: Vec<_> = got.iter().filter(|(id, _)| ids.contains(id)).cloned().collect();
            assert_eq!(got_big, want, "{round}");
            assert_eq!(got.len(), 151, "{round}");
            let one = history::message(j.pool(), ids[42]).await.unwrap().unwrap();
            assert_eq!(one.payload, payload(42, 4096), "{round}");
            let kept = history::retained(j.pool(), "cam/last").await.unwrap().unwrap();
            assert_eq!(kept.payload, payload(1000, 4096), "{round}");
            let restored = j.retained().await.unwrap();
            assert_eq!(&restored[0].payload[..], &payload(1000, 4096)[..], "{round}");
            if round == "before" {
                j.close().await;
                j = journal(dir.path(), |_| {}).await;
            }
        }
    }

    #[tokio::test]
    async fn a_journal_with_payloads_in_its_rows_goes_on_with_the_log() {
        let dir = tempfile::tempdir().unwrap();
        // As a journal written before the payload log: every payload in its row.
        let j = journal(dir.path(), |c| c.payload_log_min = usize::MAX).await;
        let before = append_all(&j, (0..10).map(|i| big("cam/1", i, false))).await;
        j.close().await;
        assert!(segments(dir.path()).is_empty());
        let j = journal(dir.path(), |_| {}).await;
        let after = append_all(&j, (10..20).map(|i| big("cam/1", i, false))).await;
        let logged: i64 =
            sqlx::query_scalar("SELECT count(payload_at) FROM messages").fetch_one(j.pool()).await.unwrap();
        assert_eq!(logged, 10, "only the new ones are in the log");
        let want: Vec<(i64, Vec<u8>)> =
            before.iter().chain(&after).enumerate().map(|(i, &id)| (id, payload(i, 4096))).collect();
        assert_eq!(history_of(&j, "cam/1").await, want, "both kinds in one page");
    }

    #[tokio::test]
    async fn after_a_power_cut_only_the_rows_whose_payloads_were_lost_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // `batched` with a window longer than the test: nothing is synced or recorded as synced.
        let batched =
            |c: &mut JournalConfig| c.durability = Durability::Batched { window: Duration::from_secs(3600) };
        let j = journal(dir.path(), batched).await;
        let ids = append_all(&j, (0..12).map(|i| big("cam/1", i, false))).await;
        j.close().await;
        // The power cut: the disk kept the rows but only the first 7 payloads and part of the 8th.
        let (first, _) = segments(dir.path()).into_iter().next().unwrap();
        let segment = dir_of(&dir.path().join(JOURNAL_FILE)).join(segment_name(first));
        std::fs::OpenOptions::new().write(true).open(&segment).unwrap().set_len(7 * 4096 + 100).unwrap();

        let j = journal(dir.path(), batched).await;
        let got = history_of(&j, "cam/1").await;
        let want: Vec<(i64, Vec<u8>)> =
            ids[..7].iter().enumerate().map(|(i, &id)| (id, payload(i, 4096))).collect();
        assert_eq!(got, want);
        let rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM messages").fetch_one(j.pool()).await.unwrap();
        assert_eq!(rows, 7, "the rows whose payloads were cut are gone");
        // New messages go on after them, and read back.
        let more = append_all(&j, [big("cam/1", 99, false)]).await;
        assert!(more[0] > ids[11]);
        assert_eq!(history_of(&j, "cam/1").await.last().unwrap(), &(more[0], payload(99, 4096)));
    }

    #[tokio::test]
    async fn pruning_deletes_segments_whose_rows_are_gone_and_the_hard_cap_counts_the_log() {
        const CAP: u64 = 1024 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let j = journal(dir.path(), |c| {
            c.retention = Retention {
                max_age: None,
                max_bytes: None,
                hard_cap_bytes: Some(CAP),
                ..c.retention.clone()
            };
        })
        .await;
        // A durable consumer that has read nothing: below the hard cap it would keep every row.
        j.commit_cursor("kafka:stalled", 0).await.unwrap();
        // 4 MB of payloads in batches of 20, under a 1 MiB cap: the oldest go, and their segments with them.
        let mut ids = Vec::new();
        for batch in 0..50 {
            ids.extend(append_all(&j, (0..20).map(|i| big("cam/1", batch * 20 + i, false))).await);
            let log: u64 = segments(dir.path()).values().sum();
            assert!(log <= CAP + 64 * 1024 + 20 * 4096, "batch {batch}: the log holds {log} bytes");
        }
        let got = history_of(&j, "cam/1").await;
        assert!(got.len() < 256, "{} of 1,000 rows left", got.len());
        assert_eq!(got.last().unwrap(), &(ids[999], payload(999, 4096)), "the newest is kept and reads back");
        // What is left reads back whole: no row lost its segment.
        for (id, p) in &got {
            let i = ids.iter().position(|x| x == id).unwrap();
            assert_eq!(p, &payload(i, 4096));
        }
        // The segments left start at or after the oldest row left (the first may hold older, pruned ones).
        let oldest = got[0].0;
        let firsts: Vec<i64> = segments(dir.path()).into_keys().collect();
        assert!(firsts.iter().filter(|&&f| f <= oldest).count() <= 1, "{firsts:?} with rows from {oldest}");
    }

    /// Sets this process's soft file size limit (`RLIMIT_FSIZE`), `None` for none, with prlimit(1).
    fn set_file_size_limit(limit: Option<u64>) {
        let limit = limit.map_or("unlimited".to_owned(), |l| l.to_string());
        let status = std::process::Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--fsize={limit}:"))
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[tokio::test]
    async fn a_payload_log_that_cannot_grow_refuses_visibly_loses_nothing_and_recovers() {
        // The file size limit of this test's process stands in for a full disk: a write beyond it fails (EFBIG)
        // as one on a full disk does (ENOSPC), where the rest of the journal still has room. SIGXFSZ, which would
        // end the process, is caught. The limit holds for every thread of the process, so the test runs only in a
        // process of its own, as nextest (`.ci/test`) runs each test; beside other tests it would fail them.
        if std::env::var("NEXTEST_EXECUTION_MODE").as_deref() != Ok("process-per-test") {
            eprintln!("skipped: it changes its process's file size limit; run it with cargo nextest");
            return;
        }
        let _caught =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(libc::SIGXFSZ)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let j = journal(dir.path(), |c| c.payload_segment_bytes = 64 * 1024 * 1024).await;
        let mut accepted = append_all(&j, (0..100).map(|i| big("cam/1", i, false))).await;
        let (first, size) = segments(dir.path()).into_iter().next().unwrap();
        assert_eq!(size, 100 * 4096);
        // Room for five more payloads and part of a sixth.
        set_file_size_limit(Some(size + 5 * 4096 + 100));
        let mut refused = None;
        for i in 100..120 {
            let m = Arc::new(big("cam/1", i, false));
            match j.append(&m).await.await.unwrap() {
                Ok(()) => accepted.push(*m.journal_id.get().unwrap()),
                Err(e) => {
                    refused = Some((i, e));
                    break;
                }
            }
        }
        assert_eq!(refused, Some((105, crate::mqtt::broker::Refusal::Full)), "refused as a full disk is");
        assert!(j.is_refusing());
        let segment = dir_of(&dir.path().join(JOURNAL_FILE)).join(segment_name(first));
        assert_eq!(std::fs::metadata(&segment).unwrap().len(), 105 * 4096, "the cut-off write is taken back");

        // Space comes back: the next publish is taken, and everything accepted reads back.
        set_file_size_limit(None);
        accepted.extend(append_all(&j, [big("cam/1", 200, false)]).await);
        assert!(!j.is_refusing());
        let got = history_of(&j, "cam/1").await;
        let numbers = (0..105).chain([200]);
        let want: Vec<(i64, Vec<u8>)> =
            accepted.iter().zip(numbers).map(|(&id, i)| (id, payload(i, 4096))).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_copy_of_a_journal_from_before_the_log_is_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("copy.sqlite");
        let old = Connection::open(&copy).unwrap();
        old.execute_batch(
            "CREATE TABLE messages (id INTEGER PRIMARY KEY, topic TEXT, payload BLOB); \
             INSERT INTO messages VALUES (1, 'a', x'00ff');",
        )
        .unwrap();
        drop(old);
        assert_eq!(inline_into(&copy, &dir.path().join("none")).unwrap(), 0);
        let payload: Vec<u8> = Connection::open(&copy)
            .unwrap()
            .query_row("SELECT payload FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(payload, [0, 255]);
    }

    #[tokio::test]
    async fn a_journal_backup_holds_the_payloads_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let ops = crate::ops::Ops::open(&data).await.unwrap();
        let j = journal(&data, |_| {}).await;
        let ids = append_all(&j, (0..30).map(|i| big("cam/1", i, false))).await;
        j.close().await;
        let mut backup = Vec::new();
        crate::ops::backup::create(&data, "a long passphrase", true, &mut backup).await.unwrap();
        // After the backup: more messages, which the restore takes back.
        let j = journal(&data, |_| {}).await;
        append_all(&j, (30..40).map(|i| big("cam/1", i, false))).await;
        j.close().await;

        crate::ops::backup::stage(&data, backup.as_slice(), "a long passphrase").await.unwrap();
        drop(ops);
        let aside = crate::ops::backup::apply_staged(&data).unwrap().unwrap();
        assert!(dir_of(&aside.join(JOURNAL_FILE)).exists(), "the replaced payload log is kept aside");
        let j = journal(&data, |_| {}).await;
        let want: Vec<(i64, Vec<u8>)> =
            ids.iter().enumerate().map(|(i, &id)| (id, payload(i, 4096))).collect();
        assert_eq!(history_of(&j, "cam/1").await, want);
        let logged: i64 =
            sqlx::query_scalar("SELECT count(payload_at) FROM messages").fetch_one(j.pool()).await.unwrap();
        assert_eq!(logged, 0, "the restored journal holds the payloads in its rows");
        // And it goes on: new payloads to a new log, after the restored ids.
        let more = append_all(&j, [big("cam/1", 77, false)]).await;
        assert_eq!(history_of(&j, "cam/1").await.last().unwrap(), &(more[0], payload(77, 4096)));
    }

    fn payload(i: usize, len: usize) -> Vec<u8> {
        let mut p = format!("payload {i} ").into_bytes();
        p.resize(len, b'.');
        p
    }

    #[test]
    fn payloads_are_read_back_across_segments_and_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), 16 * 1024 * 1024).unwrap();
        let mut refs = Vec::new();
        // 6 batches of 1,000 x 4 KiB: a new segment once one holds 16 MiB, at a batch's first id.
        for batch in 0..6 {
            for i in 0..1000 {
                let id = batch * 1000 + i + 1;
                refs.push((id, log.stage(id as i64, &payload(id, 4096))));
            }
            log.write(true).unwrap();
        }
        assert_eq!(list(dir.path()).unwrap().keys().copied().collect::<Vec<_>>(), [1, 5001]);
        let mut reader = log.reader();
        for &(id, at) in &refs {
            assert_eq!(reader.read(id as i64, at).unwrap(), payload(id, 4096), "message {id}");
        }
        drop(log);
        let log = Log::open(dir.path(), 16 * 1024 * 1024).unwrap();
        assert_eq!(log.newest_first(), Some(5001));
        assert_eq!(log.bytes(), 6000 * 4096);
        let mut reader = log.reader();
        let (id, at) = refs[4321];
        assert_eq!(reader.read(id as i64, at).unwrap(), payload(id, 4096));
    }

    #[test]
    fn a_rolled_back_batch_leaves_nothing_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), 16 * 1024 * 1024).unwrap();
        let kept = log.stage(1, &payload(1, 3000));
        log.write(true).unwrap();
        let mark = log.mark();
        let lost = log.stage(2, &payload(2, 3000));
        log.write(true).unwrap();
        log.rollback(mark);
        assert_eq!(std::fs::metadata(dir.path().join(segment_name(1))).unwrap().len(), 3000);
        let mut reader = log.reader();
        assert_eq!(reader.read(1, kept).unwrap(), payload(1, 3000));
        assert!(matches!(reader.read(2, lost), Err(PayloadError::Damaged { id: 2, .. })));
        let wrong = PayloadRef { crc: kept.crc ^ 1, ..kept };
        assert!(matches!(reader.read(1, wrong), Err(PayloadError::Damaged { id: 1, .. })));
        assert!(matches!(
            Reader::new(dir.path().join("none")).read(1, kept),
            Err(PayloadError::Gone { id: 1 })
        ));
    }
}
