//! How the journal is configured: durability, what is recorded, batching, retention.

use std::time::Duration;

/// How accepted messages are made durable. The trade-off between safety and speed, explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The default. QoS 1/2 are acknowledged only after their group's commit is synced to disk: nothing
    /// acknowledged is lost, even on power loss.
    Synced,
    /// Acknowledged after commit without a sync; the log is synced at least every `window`. Survives a crash
    /// or kill -9 of the gateway; a power cut may lose the last `window` of messages.
    Batched { window: Duration },
    /// No journal and no history: acknowledged at once, as Mosquitto does without persistence.
    Off,
}

#[derive(Debug, Clone)]
pub struct Retention {
    pub max_age: Option<Duration>,
    /// Prune the oldest rows (that no cursor needs) while the journal file is larger than this.
    pub max_bytes: Option<u64>,
    /// Beyond this the oldest rows go even if a cursor needs them, and if the file is still larger, QoS 1/2
    /// messages are refused until space returns.
    pub hard_cap_bytes: Option<u64>,
    pub prune_interval: Duration,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            max_age: Some(Duration::from_secs(30 * 24 * 3600)),
            max_bytes: Some(1024 * 1024 * 1024),
            hard_cap_bytes: Some(2 * 1024 * 1024 * 1024),
            prune_interval: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone)]
pub struct JournalConfig {
    pub durability: Durability,
    /// Topic filters recorded; empty means all.
    pub include: Vec<String>,
    /// Topic filters not recorded, even if included.
    pub exclude: Vec<String>,
    /// Most messages in one transaction.
    pub max_batch: usize,
    /// Places for appends waiting for the writer, before publishers are slowed down (QoS 1/2) or QoS 0 is not
    /// recorded. A message takes one place per started KiB of topic and payload (most take one), so this bounds
    /// both how many messages wait and how much memory they hold: 16,384 places, at most 16 MiB of payloads.
    pub queue: usize,
    pub retention: Retention,
    /// SQLite's `max_page_count`: beyond this many pages the database reports itself full, exactly as on a
    /// full disk. A safety net below the file system's own limit; `None` leaves SQLite's default.
    pub max_pages: Option<u32>,
    /// How often the writer adds the newest rows to the topic index (history queries scan the rows after it).
    /// Short steps keep the pause each one causes short: 250 ms roughly halved the QoS 1 p99.9 at 12.6k msg/s
    /// against 1 s (docs/BENCHMARKS.md).
    pub index_interval: Duration,
    /// The shortest time between the starts of two commits while appends arrive from several publishers (a lone
    /// publisher waiting for each acknowledgement is never held back). Fewer, larger commits cost less CPU; the
    /// price is at most this much on an acknowledgement, never on a delivery.
    pub commit_interval: Duration,
    /// How large the write-ahead log may grow before the writer waits for the checkpointer to catch up (see
    /// `store/checkpoint.rs`). Larger means fewer such waits and more disk held by the log.
    pub max_wal_bytes: u64,
    /// How much the writer may hold dirty in a transaction before SQLite writes pages to the log early
    /// (`cache_spill`): with SQLite's default (its 2 MB cache), a batch of 4 KiB payloads (1,000 of them is
    /// 4.7 MB) was written out in pieces in the middle of its transaction. Memory only while a batch is written:
    /// after the commit the cache shrinks back to its 2 MB. The queue's places bound a batch's payloads to
    /// 16 MiB, so 32 MiB is never reached in practice.
    pub max_dirty_bytes: u64,
    /// Payloads of at least this many bytes go to the payload log (`store/payload_log.rs`), written once,
    /// rather than into SQLite, which writes everything twice (its log, then the file). Smaller ones stay in
    /// the row, where a history page reads them without a file read each; so do retained messages. `usize::MAX`
    /// keeps every payload in SQLite.
    pub payload_log_min: usize,
    /// The size at which a segment of the payload log is closed and the next batch starts a new one. Retention
    /// deletes whole segments, once every row in one is gone.
    pub payload_segment_bytes: u64,
}

impl Default for JournalConfig {
    fn default() -> JournalConfig {
        JournalConfig {
            durability: Durability::Synced,
            include: Vec::new(),
            exclude: vec!["$SYS/#".into()],
            max_batch: 4096,
            queue: 16 * 1024,
            retention: Retention::default(),
            max_pages: None,
            index_interval: Duration::from_millis(250),
            commit_interval: Duration::from_millis(2),
            max_wal_bytes: 64 * 1024 * 1024,
            max_dirty_bytes: 32 * 1024 * 1024,
            payload_log_min: 2048,
            payload_segment_bytes: 16 * 1024 * 1024,
        }
    }
}
