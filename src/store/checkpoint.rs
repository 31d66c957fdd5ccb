//! The journal's checkpointer: a thread with a connection of its own that copies the WAL into the database file,
//! so that the writer's commits never wait for it.
//!
//! In WAL mode every page is written twice: to the log at commit, then into the database file at checkpoint.
//! SQLite's own automatic checkpoint runs inside the commit that crosses `wal_autocheckpoint` (1,000 pages), on the
//! writer's thread: with 4 KiB payloads that was every commit or two, and the writer spent as long copying and
//! syncing the database file as writing and syncing the log (docs/BENCHMARKS.md, "4 KiB payloads"). Here the writer
//! turns that off and wakes this thread after its commits; a passive checkpoint copies what is committed while the
//! writer goes on appending to the log. Durability is unchanged: an acknowledgement still waits for the commit's
//! sync of the log, and a checkpoint (with `synchronous = FULL`, like the writer) syncs the database file before
//! SQLite lets the log be reused.
//!
//! The log is bounded: SQLite starts it over only at a write transaction that begins when the whole log has been
//! copied, which a checkpointer running beside a busy writer may never see. So once the log holds more than
//! `max_wal_bytes`, the writer waits (bounded) before its next transaction until a pass that began after its last
//! commit has copied everything; that transaction then starts the log over.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::StoreError;

/// The longest the writer waits for the checkpointer to catch up before it writes anyway (the log then grows).
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

/// The writer's side of the checkpointer. Dropping it stops the thread.
pub(super) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    max_wal_bytes: u64,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled by the writer (a commit, or stop) and by the checkpointer (a pass done).
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Commits so far (the writer counts them); a pass copies everything committed before it began.
    commits: u64,
    /// The commit count when the last finished pass began.
    copied_upto: u64,
    /// The log's size in bytes as the last pass found it.
    log_bytes: u64,
    stop: bool,
}

impl Checkpointer {
    /// Opens the checkpointer's connection to the journal at `path` and starts its thread. `synchronous` is the
    /// writer's: FULL syncs the database file at every checkpoint (NORMAL does too); never OFF, which would let
    /// SQLite reuse the log before the copies are on disk.
    pub(super) fn start(
        path: &Path,
        synchronous: &str,
        max_wal_bytes: u64,
    ) -> Result<Checkpointer, StoreError> {
        let open = || -> rusqlite::Result<(Connection, u64)> {
            let conn = Connection::open(path)?;
            conn.busy_timeout(Duration::from_secs(10))?;
            conn.pragma_update(None, "synchronous", synchronous)?;
            conn.pragma_update(None, "wal_autocheckpoint", 0)?;
            let page_size: u64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            Ok((conn, page_size))
        };
        let (conn, page_size) = open().map_err(|e| StoreError::Writer(format!("the checkpointer: {e}")))?;
        let shared = Arc::new(Shared::default());
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("weir-checkpoint".into())
                .spawn(move || run(&conn, &shared, page_size))
                .map_err(|e| StoreError::Writer(format!("starting the checkpointer: {e}")))?
        };
        Ok(Checkpointer { shared, thread: Some(thread), max_wal_bytes })
    }

    /// After a commit: there is something new to copy.
    pub(super) fn committed(&self) {
        let mut state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.commits += 1;
        self.shared.changed.notify_all();
    }

    /// Before a write transaction: if the log has grown beyond its bound, asks for a pass and waits (bounded) until
    /// it is done, so that the log is copied up to the last commit and this transaction starts it over (unless a
    /// reader still uses the log's end: then it grows a little more and the next transaction asks again).
    pub(super) fn bound_log(&self) {
        let mut state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.log_bytes <= self.max_wal_bytes || state.stop {
            return;
        }
        state.commits += 1;
        let target = state.commits;
        self.shared.changed.notify_all();
        let deadline = Instant::now() + CATCH_UP_WAIT;
        while state.copied_upto < target && !state.stop {
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(
                    log_bytes = state.log_bytes,
                    "the journal's checkpoint has not caught up with its log; writing on (the log grows)"
                );
                break;
            }
            state = match self.shared.changed.wait_timeout(state, deadline - now) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        // Taken as started over until the next pass says otherwise, so that the next transaction does not wait
        // for that pass as well.
        state.log_bytes = 0;
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner).stop = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread: waits for commits, and copies the log after each wake-up until nothing new was committed.
fn run(conn: &Connection, shared: &Shared, page_size: u64) {
    let mut last_error: Option<Instant> = None;
    loop {
        let upto = {
            let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            while state.commits == state.copied_upto && !state.stop {
                state = match shared.changed.wait(state) {
                    Ok(state) => state,
                    Err(poisoned) => poisoned.into_inner(),
                };
            }
            if state.stop {
                return;
            }
            state.commits
        };
        // (busy, frames in the log, frames copied); frames are page-sized plus a 24-byte header.
        let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1));
        let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(frames) => {
                state.log_bytes = u64::try_from(frames.max(0)).unwrap_or(0) * (page_size + 24);
                state.copied_upto = upto;
            }
            Err(e) => {
                // Counted as a pass so that the writer is not held: the log grows until a pass succeeds.
                state.copied_upto = upto;
                if last_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    last_error = Some(Instant::now());
                    tracing::warn!("journal checkpoint failed: {e}");
                }
            }
        }
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::mqtt::broker::{ClientId, Message};
    use crate::mqtt::codec::QoS;
    use crate::store::{JOURNAL_FILE, Journal, JournalConfig};

    async fn journal(dir: &Path, max_wal_bytes: u64) -> Journal {
        // Payloads of 4 KiB in the rows, through SQLite's log, not in the payload log.
        let mut config =
            JournalConfig { max_wal_bytes, payload_log_min: usize::MAX, ..JournalConfig::default() };
        config.retention.prune_interval = Duration::from_secs(3600);
        Journal::open(dir, config).await.unwrap()
    }

    /// Appends `n` messages of 4 KiB from `first` on, `per_batch` at a time, each batch waited for as publishers
    /// wait for their acknowledgements. Calls `after_batch` after each.
    async fn append_4k(j: &Journal, first: usize, n: usize, per_batch: usize, mut after_batch: impl FnMut()) {
        for start in (first..first + n).step_by(per_batch) {
            let mut completions = Vec::new();
            for i in start..(start + per_batch).min(first + n) {
                let mut payload = format!("message {i} ").into_bytes();
                payload.resize(4096, b'.');
                let mut m =
                    Message::new(&format!("plant/line-{}/camera", i % 7), payload, QoS::AtLeastOnce, false);
                m.origin = Some(ClientId::new("camera-1"));
                completions.push(j.append(&Arc::new(m)).await);
            }
            for c in completions {
                c.await.unwrap().unwrap();
            }
            after_batch();
        }
    }

    fn file_len(dir: &Path, suffix: &str) -> u64 {
        std::fs::metadata(dir.join(format!("{JOURNAL_FILE}{suffix}"))).map(|m| m.len()).unwrap_or(0)
    }

    async fn count(j: &Journal) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM messages").fetch_one(j.pool()).await.unwrap()
    }

    #[tokio::test]
    async fn the_checkpointer_copies_the_log_into_the_file_and_keeps_the_log_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let bound = 1024 * 1024;
        let j = journal(dir.path(), bound).await;
        // 2,000 messages of 4 KiB: about 9.5 MB through the log, nine times its bound. SQLite's own automatic
        // checkpoint (1,000 pages) would let it reach 4 MB; without any checkpoint it would hold everything.
        let mut largest_log = 0;
        append_4k(&j, 0, 2000, 100, || largest_log = largest_log.max(file_len(dir.path(), "-wal"))).await;
        assert!(largest_log < 3 * bound, "the log reached {largest_log} bytes (bound {bound})");
        // The rows reach the database file itself, without a checkpoint by the writer or at close.
        let deadline = Instant::now() + Duration::from_secs(20);
        while file_len(dir.path(), "") < 8_000_000 {
            assert!(Instant::now() < deadline, "the database file holds {} bytes", file_len(dir.path(), ""));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(count(&j).await, 2000);
        let payload: Vec<u8> = sqlx::query_scalar("SELECT payload FROM messages WHERE id = 1234")
            .fetch_one(j.pool())
            .await
            .unwrap();
        assert!(payload.starts_with(b"message 1233 ") && payload.len() == 4096);
        j.close().await;
    }

    #[tokio::test]
    async fn a_journal_made_before_the_checkpointer_with_its_own_page_size_and_a_full_log_still_works() {
        for page_size in [1024_i64, 4096] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(JOURNAL_FILE);
            // The file as an earlier gateway left it: made with its page size (before any table), in WAL mode,
            // migrated and written by that gateway, then rows committed to the log and never checkpointed.
            {
                let file = Connection::open(&path).unwrap();
                file.pragma_update(None, "page_size", page_size).unwrap();
                file.pragma_update(None, "auto_vacuum", "INCREMENTAL").unwrap();
                let mode: String = file.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).unwrap();
                assert_eq!(mode, "wal");
            }
            let old = journal(dir.path(), 64 * 1024 * 1024).await;
            append_4k(&old, 0, 50, 10, || {}).await;
            old.close().await;
            let beside = Connection::open(&path).unwrap();
            beside.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
            beside
                .execute_batch(
                    "INSERT INTO messages (id, ts, topic, payload, qos, retain) \
                     VALUES (51, 1, 'plant/old', randomblob(4096), 1, 0), (52, 2, 'plant/old', x'01', 1, 0);",
                )
                .unwrap();
            assert!(file_len(dir.path(), "-wal") > 4096, "the rows wait in the log");

            let j = journal(dir.path(), 256 * 1024).await;
            drop(beside);
            let kept: i64 = sqlx::query_scalar("PRAGMA page_size").fetch_one(j.pool()).await.unwrap();
            assert_eq!(kept, page_size, "an existing file keeps its page size");
            assert_eq!(count(&j).await, 52);
            // New messages get the ids after the old ones, and everything is read back, through the log's
            // bound and restarts.
            let mut largest_log = 0;
            append_4k(&j, 52, 300, 50, || largest_log = largest_log.max(file_len(dir.path(), "-wal"))).await;
            assert!(largest_log < 4 * 1024 * 1024, "log {largest_log} bytes");
            j.index_now().await;
            let ids: Vec<i64> =
                sqlx::query_scalar("SELECT id FROM messages ORDER BY id").fetch_all(j.pool()).await.unwrap();
            assert_eq!(ids, (1..=352).collect::<Vec<i64>>());
            let query = crate::store::history::HistoryQuery::new("plant/line-3/#");
            let page = crate::store::history::query(j.pool(), &query).await.unwrap();
            assert!(!page.messages.is_empty());
            j.close().await;
            // Reopened, all of it is there.
            let j = journal(dir.path(), 256 * 1024).await;
            assert_eq!(count(&j).await, 352);
            j.close().await;
        }
    }
}
