//! The order in which packets reached the gateway, across connections, and the router's short memory of the
//! publishes it has routed, so that a SUBSCRIBE that arrived before a PUBLISH is in force for it.
//!
//! Two connections' packets are read by whichever worker thread the scheduler gives each connection's task, so a
//! PUBLISH can reach the router before a SUBSCRIBE that arrived on the network first (measured: B's SUBSCRIBE
//! sent, then A's PUBLISH at once; B missed the message in 44-51 % of rounds). Making every read wait for older
//! ones costs every publish (a global order across threads: p50 latency 12 ms instead of 0.24 ms). Instead, the
//! kernel stamps each TCP read with the time its bytes arrived (`SO_TIMESTAMPNS`, [`crate::mqtt::net`]), and the
//! router remembers what it routed lately with those stamps. A SUBSCRIBE then also gets the remembered publishes
//! that arrived after it and that it would have matched: the order the gateway observed, at the cost of one
//! pointer per routed message and a scan of the memory per SUBSCRIBE.
//!
//! A read's stamp is that of the last segment it took, so it is never earlier than the arrival of any packet it
//! completed. A publish that the publisher saw acknowledged before the subscriber sent its SUBSCRIBE was read before
//! that SUBSCRIBE existed, so its stamp is earlier, and it is never delivered this way: only publishes that really
//! raced the SUBSCRIBE are.

use std::collections::VecDeque;
use std::sync::Arc;

use super::Message;

/// When a packet's bytes reached this host: nanoseconds of the real-time clock, as the kernel stamped the read
/// that completed the packet. Comparable across connections; unknown for messages the gateway makes itself and
/// for transports without stamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Arrival(i64);

impl Arrival {
    pub const UNKNOWN: Arrival = Arrival(0);

    pub fn from_nanos(nanos: i64) -> Arrival {
        Arrival(nanos.max(0))
    }

    pub fn nanos(self) -> Option<i64> {
        (self.0 > 0).then_some(self.0)
    }
}

/// Publishes remembered: at most this many, ...
const MAX_ENTRIES: usize = 1024;
/// ... of at most this many payload and topic bytes together, ...
const MAX_BYTES: usize = 1024 * 1024;
/// ... that arrived at most this long before the newest. A SUBSCRIBE read later than this after a publish that
/// raced it misses that publish, as before.
const MAX_AGE_NANOS: i64 = 1_000_000_000;

/// The router's memory of what it routed lately, in routing order, with each message's arrival.
#[derive(Debug, Default)]
pub(super) struct RecentPublishes {
    entries: VecDeque<(i64, Arc<Message>)>,
    bytes: usize,
}

impl RecentPublishes {
    pub(super) fn remember(&mut self, arrival: Arrival, message: &Arc<Message>) {
        let Some(at) = arrival.nanos() else { return };
        self.entries.push_back((at, message.clone()));
        self.bytes += size(message);
        while let Some((oldest, m)) = self.entries.front() {
            if self.entries.len() <= MAX_ENTRIES && self.bytes <= MAX_BYTES && oldest + MAX_AGE_NANOS >= at {
                break;
            }
            self.bytes -= size(m);
            self.entries.pop_front();
        }
    }

    /// The remembered publishes that arrived after `arrival`, in the order they were routed.
    pub(super) fn arrived_after(&self, arrival: Arrival) -> impl Iterator<Item = &Arc<Message>> {
        let after = arrival.nanos();
        self.entries.iter().filter(move |(at, _)| after.is_some_and(|after| *at > after)).map(|(_, m)| m)
    }
}

fn size(message: &Message) -> usize {
    message.payload.len() + message.topic.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::codec::QoS;

    fn message(topic: &str, payload: usize) -> Arc<Message> {
        Arc::new(Message::new(topic, vec![0u8; payload], QoS::AtLeastOnce, false))
    }

    fn topics<'a>(it: impl Iterator<Item = &'a Arc<Message>>) -> Vec<String> {
        it.map(|m| m.topic.to_string()).collect()
    }

    #[test]
    fn only_publishes_that_arrived_after_are_given() {
        let mut recent = RecentPublishes::default();
        recent.remember(Arrival::from_nanos(100), &message("a", 1));
        recent.remember(Arrival::from_nanos(300), &message("c", 1));
        // Routed after "c" but arrived before it: another worker read it later.
        recent.remember(Arrival::from_nanos(200), &message("b", 1));
        recent.remember(Arrival::UNKNOWN, &message("made-by-the-gateway", 1));
        assert_eq!(topics(recent.arrived_after(Arrival::from_nanos(150))), ["c", "b"]);
        assert_eq!(topics(recent.arrived_after(Arrival::from_nanos(300))), Vec::<String>::new());
        assert_eq!(
            topics(recent.arrived_after(Arrival::UNKNOWN)),
            Vec::<String>::new(),
            "no stamp, no order"
        );
    }

    #[test]
    fn the_memory_is_bounded_by_count_bytes_and_age() {
        let mut recent = RecentPublishes::default();
        for i in 1..=(MAX_ENTRIES as i64 + 10) {
            recent.remember(Arrival::from_nanos(i), &message("t", 1));
        }
        assert_eq!(recent.entries.len(), MAX_ENTRIES);

        let mut recent = RecentPublishes::default();
        for i in 1..=20 {
            recent.remember(Arrival::from_nanos(i), &message("t", 100 * 1024));
        }
        assert!(recent.bytes <= MAX_BYTES && recent.entries.len() < 11, "{} entries", recent.entries.len());

        let mut recent = RecentPublishes::default();
        recent.remember(Arrival::from_nanos(1), &message("old", 1));
        recent.remember(Arrival::from_nanos(2 + MAX_AGE_NANOS), &message("new", 1));
        assert_eq!(topics(recent.entries.iter().map(|(_, m)| m)), ["new"]);
    }
}
