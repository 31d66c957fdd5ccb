//! Where password hashing runs: a bounded number of argon2 computations, each in memory kept for reuse.

use std::sync::{Arc, Mutex, PoisonError};

use crate::auth::password::Argon2Memory;

/// Where argon2 runs: at most one computation per core, each on a blocking thread (argon2 is deliberately slow;
/// it stays off the async workers) in working memory that belongs to its slot.
///
/// Why the memory is kept: a computation fills 8 MiB. Allocated per login and freed, it stays with glibc, in
/// the arena of whichever blocking thread ran it: after 1,000 distinct users logged in at once the process kept
/// ~200-260 MB. Kept per slot, argon2 never holds more than cores x 8 MiB, allocated at the first login and
/// then reused. The buffers are pooled apart from the permits (a buffer is taken by whoever holds a permit), and
/// a permit is released only when its computation has finished and put its buffer back, even if the login
/// waiting for it was abandoned: so there are never more buffers than permits.
#[derive(Debug)]
pub(super) struct Argon2Slots {
    pub(super) permits: Arc<tokio::sync::Semaphore>,
    /// Buffers not in use now; at most one per permit.
    pub(super) idle: Arc<Mutex<Vec<Argon2Memory>>>,
}

/// The right to run one argon2 computation.
#[derive(Debug)]
pub(super) struct Argon2Slot {
    permit: tokio::sync::OwnedSemaphorePermit,
    idle: Arc<Mutex<Vec<Argon2Memory>>>,
}

impl Argon2Slots {
    pub(super) fn new(slots: usize) -> Argon2Slots {
        Argon2Slots {
            permits: Arc::new(tokio::sync::Semaphore::new(slots)),
            idle: Arc::new(Mutex::new(Vec::with_capacity(slots))),
        }
    }

    /// Waits for a free slot (`None` only if the semaphore were closed, which it never is).
    pub(super) async fn acquire(&self) -> Option<Argon2Slot> {
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        Some(Argon2Slot { permit, idle: self.idle.clone() })
    }
}

impl Argon2Slot {
    /// Runs `work` on a blocking thread with this slot's memory (`None` if it panicked).
    pub(super) async fn run<T: Send + 'static>(
        self,
        work: impl FnOnce(&mut Argon2Memory) -> T + Send + 'static,
    ) -> Option<T> {
        let Argon2Slot { permit, idle } = self;
        tokio::task::spawn_blocking(move || {
            let mut memory = idle.lock().unwrap_or_else(PoisonError::into_inner).pop().unwrap_or_default();
            let result = work(&mut memory);
            idle.lock().unwrap_or_else(PoisonError::into_inner).push(memory);
            drop(permit);
            result
        })
        .await
        .ok()
    }
}
