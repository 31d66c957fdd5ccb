//! The journal's syncer: with `durability = "synced"`, a thread that syncs the log (the `-wal` file) after the
//! writer's commits and only then completes their appends, so that the writer writes the next batch while the
//! disk syncs the last one.
//!
//! With `synchronous = FULL` every commit ended in an fsync of the log on the writer's thread, and nothing else was
//! written meanwhile: with 4 KiB payloads the writer waited for the disk about as long as it worked. Here the
//! writer commits with `synchronous = NORMAL` (SQLite writes the commit's frames to the log and returns) and hands
//! the commit's completions to this thread, which syncs the log and then sends them; every commit handed over while
//! a sync runs shares the next one.
//!
//! "Acknowledged means on disk" holds: a completion is sent only after an `fdatasync` of the log that began after
//! its commit's frames were written (Linux syncs a file's data whichever descriptor wrote it). A power cut may lose
//! commits whose sync had not ended; none of them was acknowledged, their publishers send them again, and SQLite's
//! log with `synchronous = NORMAL` stays consistent (a torn tail is ignored at recovery). The checkpointer's passes
//! sync the log before copying it, as before.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};

use tokio::sync::oneshot;

use super::StoreError;
use super::ops::{Answer, Done, Shared as Journal};
use crate::mqtt::broker::Refusal;

/// What waits for the next sync of the log.
#[derive(Debug)]
pub(super) enum AfterSync {
    /// The completions of a committed batch of appends.
    Appends(Vec<Done>),
    /// The committers of a batch's cursor commits.
    Cursors(Vec<Answer<()>>),
    /// A flush: everything committed before it is on disk.
    Flush(oneshot::Sender<()>),
}

/// The writer's side of the syncer. Dropping it syncs what waits, completes it, and stops the thread.
#[derive(Debug)]
pub(super) struct Syncer {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    waiting: Vec<AfterSync>,
    stop: bool,
}

impl Syncer {
    /// Opens the log of the journal at `path` (it exists once a connection has read the journal) and starts the
    /// thread. The directory is synced once, so that the log's own name is on disk too. Syncs are counted in
    /// `journal`'s stats.
    pub(super) fn start(path: &Path, journal: Weak<Journal>) -> Result<Syncer, StoreError> {
        let mut log_path = path.as_os_str().to_owned();
        log_path.push("-wal");
        let opened = File::open(&log_path).and_then(|log| {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
            Ok(log)
        });
        let log =
            opened.map_err(|e| StoreError::Writer(format!("opening the journal's log to sync it: {e}")))?;
        let shared = Arc::new(Shared::default());
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("weir-sync".into())
                .spawn(move || run(&log, &shared, &journal))
                .map_err(|e| StoreError::Writer(format!("starting the journal's syncer: {e}")))?
        };
        Ok(Syncer { shared, thread: Some(thread) })
    }

    /// After a commit (or for a flush): `what` is completed once the log is synced.
    pub(super) fn after_sync(&self, what: AfterSync) {
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner).waiting.push(what);
        self.shared.changed.notify_one();
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner).stop = true;
        self.shared.changed.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread: takes everything waiting, syncs the log once, completes it; until stopped with nothing waiting.
fn run(log: &File, shared: &Shared, journal: &Weak<Journal>) {
    loop {
        let waiting = {
            let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            while state.waiting.is_empty() && !state.stop {
                state = match shared.changed.wait(state) {
                    Ok(state) => state,
                    Err(poisoned) => poisoned.into_inner(),
                };
            }
            if state.waiting.is_empty() {
                return;
            }
            std::mem::take(&mut state.waiting)
        };
        let synced = log.sync_data();
        if let Some(journal) = journal.upgrade() {
            journal.stats.syncs.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = &synced {
            // What was committed may not be on disk: refused, so that publishers keep their messages and send them
            // again (a commit that did reach the disk then holds a duplicate, which QoS 1 allows and QoS 2's
            // packet-id check absorbs while the publisher's session lasts).
            tracing::error!("syncing the journal's log failed: {e}; the publishes it carried are refused");
        }
        for what in waiting {
            match what {
                AfterSync::Appends(dones) => {
                    let result = synced.as_ref().map(|_| ()).map_err(|_| Refusal::Unavailable);
                    for done in dones {
                        let _ = done.send(result);
                    }
                }
                AfterSync::Cursors(dones) => {
                    let result =
                        synced.as_ref().map(|_| ()).map_err(|e| format!("syncing the journal's log: {e}"));
                    for done in dones {
                        let _ = done.send(result.clone());
                    }
                }
                AfterSync::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syncer(dir: &Path) -> Syncer {
        let path = dir.join("journal.sqlite");
        std::fs::write(dir.join("journal.sqlite-wal"), b"frames").unwrap();
        Syncer::start(&path, Weak::new()).unwrap()
    }

    #[test]
    fn what_waits_is_completed_after_a_sync_in_the_order_it_came() {
        let dir = tempfile::tempdir().unwrap();
        let syncer = syncer(dir.path());
        let (first, mut first_done) = oneshot::channel();
        let (second, mut second_done) = oneshot::channel();
        let (flush, flushed) = oneshot::channel();
        syncer.after_sync(AfterSync::Appends(vec![first, second]));
        syncer.after_sync(AfterSync::Flush(flush));
        flushed.blocking_recv().unwrap();
        assert_eq!(first_done.try_recv().unwrap(), Ok(()), "completed before the flush that came after it");
        assert_eq!(second_done.try_recv().unwrap(), Ok(()));

        // What waits when the writer lets the syncer go is synced and completed first.
        let (last, mut last_done) = oneshot::channel();
        syncer.after_sync(AfterSync::Appends(vec![last]));
        drop(syncer);
        assert_eq!(last_done.try_recv().unwrap(), Ok(()));
    }

    #[test]
    fn without_a_log_there_is_no_syncer() {
        let dir = tempfile::tempdir().unwrap();
        let error = Syncer::start(&dir.path().join("journal.sqlite"), Weak::new()).unwrap_err();
        assert!(error.to_string().contains("opening the journal's log"), "{error}");
    }
}
