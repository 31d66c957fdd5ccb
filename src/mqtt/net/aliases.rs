//! Topic aliases the gateway assigns on the PUBLISH packets it sends to one MQTT 5 client (§3.3.2.3.4).
//!
//! A client that announces a Topic Alias Maximum lets the server replace a topic with a 2-byte alias after the
//! first message on it: on a thin link, most of a small message can be its topic. Aliases belong to one network
//! connection and are chosen here, when a delivery is encoded; messages, retained messages and the journal never
//! see them.
//!
//! The table holds at most `capacity` topics (the smaller of the client's maximum and `[mqtt]
//! server_topic_aliases`). When it is full, a new topic takes the alias of the topic delivered least often
//! (counts are halved every `8 × capacity` deliveries, so that a topic that was busy long ago does not keep its
//! alias forever; ties go to the one used longest ago). A topic delivered once therefore cannot push out a busy
//! one for long: it is the next to go. Finding that topic scans the table, so its cost is bounded by the
//! capacity, and only for a topic not in the table.

use std::collections::HashMap;
use std::sync::Arc;

/// What to put in an outgoing PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Alias {
    /// No alias: the topic alone.
    None,
    /// The topic and this alias: the client learns (or relearns) the mapping.
    Set(u16),
    /// This alias and an empty topic: the client knows the mapping.
    Use(u16),
}

#[derive(Debug)]
pub(super) struct OutgoingAliases {
    capacity: u16,
    topics: HashMap<Arc<str>, Entry>,
    /// Aliases given back by [`OutgoingAliases::forget`].
    free: Vec<u16>,
    /// The next alias never handed out (`u32`: it passes 65,535 when the table is full).
    next: u32,
    /// Deliveries encoded, for aging and recency.
    clock: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    alias: u16,
    uses: u32,
    last: u64,
}

impl OutgoingAliases {
    /// `None` when no alias may be used (the client allows none, or the gateway is configured to assign none).
    pub(super) fn new(client_maximum: u16, configured: u16) -> Option<OutgoingAliases> {
        let capacity = client_maximum.min(configured);
        (capacity > 0).then(|| OutgoingAliases {
            capacity,
            topics: HashMap::new(),
            free: Vec::new(),
            next: 1,
            clock: 0,
        })
    }

    /// The alias for a delivery on `topic`.
    pub(super) fn alias_for(&mut self, topic: &Arc<str>) -> Alias {
        self.clock += 1;
        if self.clock.is_multiple_of(8 * u64::from(self.capacity)) {
            for entry in self.topics.values_mut() {
                entry.uses /= 2;
            }
        }
        let clock = self.clock;
        if let Some(entry) = self.topics.get_mut(topic) {
            entry.uses = entry.uses.saturating_add(1);
            entry.last = clock;
            return Alias::Use(entry.alias);
        }
        let alias = if let Some(alias) = self.free.pop() {
            alias
        } else if let Ok(alias) = u16::try_from(self.next)
            && alias <= self.capacity
        {
            self.next += 1;
            alias
        } else {
            let victim = self
                .topics
                .iter()
                .min_by_key(|(_, e)| (e.uses, e.last))
                .map(|(topic, e)| (topic.clone(), e.alias));
            let Some((victim, alias)) = victim else { return Alias::None };
            self.topics.remove(&victim);
            alias
        };
        self.topics.insert(topic.clone(), Entry { alias, uses: 1, last: clock });
        Alias::Set(alias)
    }

    /// The PUBLISH that would have set `topic`'s alias was not sent (larger than the client accepts): forget the
    /// mapping, so that the next delivery on it sets it again. The client may still map the alias to an older
    /// topic; that is harmless, since an alias is only ever used after a PUBLISH that set it.
    pub(super) fn forget(&mut self, topic: &Arc<str>) {
        if let Some(entry) = self.topics.remove(topic) {
            self.free.push(entry.alias);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn no_aliases_when_either_side_allows_none() {
        assert!(OutgoingAliases::new(0, 64).is_none());
        assert!(OutgoingAliases::new(10, 0).is_none());
        assert_eq!(OutgoingAliases::new(10, 64).map(|a| a.capacity), Some(10));
        assert_eq!(OutgoingAliases::new(100, 64).map(|a| a.capacity), Some(64));
    }

    #[test]
    fn an_alias_is_set_once_then_used() {
        let mut a = OutgoingAliases::new(2, 64).unwrap();
        assert_eq!(a.alias_for(&topic("x")), Alias::Set(1));
        assert_eq!(a.alias_for(&topic("x")), Alias::Use(1));
        assert_eq!(a.alias_for(&topic("y")), Alias::Set(2));
        assert_eq!(a.alias_for(&topic("x")), Alias::Use(1));
        assert_eq!(a.alias_for(&topic("y")), Alias::Use(2));
    }

    #[test]
    fn busy_topics_keep_their_aliases_and_never_exceed_the_client_maximum() {
        let mut a = OutgoingAliases::new(3, 64).unwrap();
        for _ in 0..10 {
            a.alias_for(&topic("busy/1"));
            a.alias_for(&topic("busy/2"));
        }
        // One-off topics between them share the third alias; the busy ones keep 1 and 2.
        for i in 0..100 {
            match a.alias_for(&topic(&format!("once/{i}"))) {
                Alias::Set(alias) => assert_eq!(alias, 3),
                other => panic!("a new topic gets a new mapping: {other:?}"),
            }
            assert_eq!(a.alias_for(&topic("busy/1")), Alias::Use(1));
            assert_eq!(a.alias_for(&topic("busy/2")), Alias::Use(2));
            assert!(a.topics.len() <= 3);
        }
    }

    #[test]
    fn a_forgotten_mapping_is_set_again() {
        let mut a = OutgoingAliases::new(4, 64).unwrap();
        assert_eq!(a.alias_for(&topic("a")), Alias::Set(1));
        assert_eq!(a.alias_for(&topic("b")), Alias::Set(2));
        a.forget(&topic("b"));
        assert!(matches!(a.alias_for(&topic("b")), Alias::Set(_)));
        assert!(matches!(a.alias_for(&topic("b")), Alias::Use(_)));
        assert_eq!(a.alias_for(&topic("a")), Alias::Use(1));
    }
}
