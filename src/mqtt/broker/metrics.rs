//! Counters updated on the hot path by connection tasks and read by `$SYS` and the console. Relaxed atomics:
//! each counter is independent and only ever read as an approximate snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Messages a subscriber did not get because its queue was full or it was offline (QoS 0).
    pub messages_dropped: AtomicU64,
    /// QoS 1/2 deliveries beyond a session's in-memory window, left in the journal to be read back in order.
    pub messages_spilled: AtomicU64,
    /// Publishes that matched no subscription at all.
    pub messages_unrouted: AtomicU64,
    pub connections_refused: AtomicU64,
    pub protocol_errors: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
