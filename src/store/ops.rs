//! What the journal's handles and its writer thread share: the operations a handle sends the writer, in order on
//! one channel, and the state both touch (the places in the writer's queue, the counters, whether appends are
//! being refused). The handle ([`super::journal`]) depends on the writer ([`super::writer`]), and both on this.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use tokio::sync::{Semaphore, oneshot};

use crate::mqtt::broker::{ClientId, Message, PresenceChange, Refusal, SessionRecord, SpillLoad};
use crate::mqtt::codec::{QoS, SubscribeFilter};

/// A change to a session's stored state, applied in the order the router made them.
#[derive(Debug)]
pub(super) enum SessionOp {
    Save(Box<SessionRecord>),
    Remove(ClientId),
    Subscribe(ClientId, SubscribeFilter, Option<u32>),
    Unsubscribe(ClientId, String),
    /// A QoS 1/2 delivery queued; `spilled` (with the queue's generation) if it waits only here.
    Queued {
        client: ClientId,
        message_id: i64,
        qos: QoS,
        retain: bool,
        sub_ids: Vec<u32>,
        spilled: Option<u64>,
    },
    InFlight {
        client: ClientId,
        message_id: i64,
        packet_id: u16,
        released: bool,
    },
    Delivered {
        client: ClientId,
        message_id: i64,
    },
    Load {
        client: ClientId,
        generation: u64,
        limit: usize,
        keep: bool,
        done: oneshot::Sender<SpillLoad>,
    },
    Discard(ClientId),
    /// A client attached or detached: its last presence (with its will while online) and a history row.
    Presence(Box<PresenceChange>),
}

#[derive(Debug)]
pub(super) enum Op {
    Append(Queued),
    Session(SessionOp),
    Prune(Option<oneshot::Sender<u64>>),
    Checkpoint,
    Flush(oneshot::Sender<()>),
    /// Add the newest rows to the topic index: everything committed so far (and answer), or, from the timer,
    /// what is due.
    Index(Option<oneshot::Sender<()>>),
    /// Commit what is queued, then stop the writer and release its connection.
    Close(oneshot::Sender<()>),
    /// A durable consumer's progress. Committed in the transaction of its batch's session changes, after the
    /// batch's appends: a cursor is never visible before the rows it covers that were sent before it.
    Cursor(CursorCommit),
    /// The start-up cleanup of the session queues, before they are read back to be restored: deliveries of
    /// sessions that are not persistent and of messages no longer in the journal are removed, and each session's
    /// queued deliveries beyond the first `window` are marked spilled. Answered with the number removed. Sent
    /// before the broker starts, so no session change of the broker's is in its batch.
    Restore {
        window: usize,
        done: Answer<u64>,
    },
}

/// Told once a request is committed (with `synced`, on disk), or why it failed.
pub(super) type Answer<T> = oneshot::Sender<Result<T, String>>;

/// A durable consumer's cursor, committed by the writer.
#[derive(Debug)]
pub(super) struct CursorCommit {
    pub(super) name: String,
    pub(super) change: CursorChange,
    pub(super) done: Answer<()>,
}

#[derive(Debug)]
pub(super) enum CursorChange {
    /// The last journal id the consumer has fully processed.
    Position(i64),
    /// Journal ids `from..=to` were gone before the consumer read them, found at `at` (unix ms): added to the
    /// cursor's gap count, and its last gap.
    Gap { from: i64, to: i64, at: i64 },
    /// Its consumer is gone: retention may prune what it held.
    Delete,
}

/// Told when an append is committed, or why it was refused.
pub(super) type Done = oneshot::Sender<Result<(), Refusal>>;

/// An append on its way to the writer and then waiting for its batch's commit.
#[derive(Debug)]
pub(super) struct Queued {
    /// Its row id, given when it was sent (the journal handle's `next_id`).
    pub(super) id: i64,
    pub(super) ts: i64,
    pub(super) message: Arc<Message>,
    /// Its places in the writer's queue (the journal handle's `places`).
    pub(super) places: u32,
    pub(super) done: Option<Done>,
}

/// The state the journal's handles and its writer both touch. The writer holds it weakly: once the last handle is
/// gone, it stops.
#[derive(Debug)]
pub(super) struct Shared {
    /// Places for appends waiting for the writer (`JournalConfig::queue`): an appender takes its message's
    /// [`Queued::places`], the writer gives them back once the append is committed or refused.
    pub(super) permits: Semaphore,
    pub(super) stats: JournalStats,
    /// Set while the disk is full or the hard cap is reached; cleared by the next successful commit.
    pub(super) refusing: AtomicBool,
}

/// Counters for `$SYS`, the console and benchmarks.
#[derive(Debug, Default)]
pub struct JournalStats {
    pub appended: AtomicU64,
    pub batches: AtomicU64,
    /// QoS 0 messages not recorded because the writer was behind.
    pub dropped_qos0: AtomicU64,
    /// QoS 1/2 messages refused (disk full or hard cap).
    pub refused: AtomicU64,
    pub pruned: AtomicU64,
}
