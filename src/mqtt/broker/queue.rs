//! A session's outgoing queue: the messages waiting for a subscriber and those in flight to it.
//!
//! The router pushes deliveries in; the subscriber's connection task (or in-process link) takes them out. This is
//! the one piece of session state that two tasks touch, so it sits behind a plain `std` mutex that is held only
//! for a few pointer moves and never across an `.await`. The queue outlives connections: when a persistent
//! session's client goes away, its pending and in-flight messages wait here for the next connection.
//!
//! Only a window of QoS 1/2 deliveries (`max_queued`) is held in memory. Beyond it, a delivery of a journaled
//! message is *spilled*: the store keeps a reference to it (see [`Durable::spill`]) and nothing else is held
//! here but a count. When the subscriber has taken the window down to half, the queue asks the store for the
//! next spilled deliveries, in order, and appends them. While anything is spilled or being read back, later
//! deliveries spill too, so the order is kept. A slow or offline subscriber therefore costs disk, not memory,
//! and loses nothing until the journal's hard cap.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Instant;

use tokio::sync::Notify;

use super::message::{ClientId, Delivery};
use super::{Durable, RestoredDelivery, SpillLoad};
use crate::mqtt::codec::QoS;

/// Where a persistent session's queue reports its QoS 1/2 transitions, so that the store can put the queue back
/// after a restart: queued, in flight under a packet id, released (QoS 2), done.
#[derive(Debug, Clone)]
pub struct StoreHook {
    pub client: ClientId,
    pub durable: std::sync::Arc<dyn Durable>,
}

impl StoreHook {
    fn queued(&self, delivery: &Delivery) {
        if delivery.qos != QoS::AtMostOnce
            && let Some(&id) = delivery.message.journal_id.get()
        {
            self.durable.queued(&self.client, id, delivery);
        }
    }

    fn in_flight(&self, delivery: &Delivery, packet_id: u16, released: bool) {
        if let Some(&id) = delivery.message.journal_id.get() {
            self.durable.in_flight(&self.client, id, packet_id, released);
        }
    }

    fn delivered(&self, delivery: &Delivery) {
        if delivery.qos != QoS::AtMostOnce
            && let Some(&id) = delivery.message.journal_id.get()
        {
            self.durable.delivered(&self.client, id);
        }
    }
}

/// Where a queue keeps the QoS 1/2 deliveries beyond its in-memory window.
#[derive(Debug, Clone)]
pub struct SpillHook {
    pub client: ClientId,
    pub durable: std::sync::Arc<dyn Durable>,
    /// Unique to this queue among the broker's queues, so that a read-back requested by a queue that has since
    /// been replaced (a new session under the same client id) cannot take the new queue's deliveries.
    pub generation: u64,
}

/// Spilled deliveries read back at a time: small enough to keep the journal writer's transaction short.
const SPILL_LOAD_BATCH: usize = 1_000;

/// How many messages a queue holds, and what happens beyond that.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// QoS 1 and 2 messages waiting (not yet in flight) in memory for one session; beyond it they are spilled
    /// to the store if the session has one, and dropped (counted) if not.
    pub max_queued: usize,
    /// QoS 0 messages waiting for one online session; QoS 0 is never queued for an offline one.
    pub max_queued_qos0: usize,
    /// In-process consumers that must not lose anything: when full, the router waits for room instead of
    /// dropping (backpressure on every publisher).
    pub lossless: bool,
}

#[derive(Debug)]
pub struct SessionQueue {
    /// This queue, for the task that appends spilled deliveries read back from the store.
    me: Weak<SessionQueue>,
    state: Mutex<QueueState>,
    /// Wakes whoever drains this queue.
    ready: Notify,
    /// Wakes a router that waits for room in a lossless queue.
    room: Notify,
    limits: QueueLimits,
}

#[derive(Debug, Default)]
struct QueueState {
    pending: VecDeque<Delivery>,
    pending_qos0: usize,
    /// In the order first sent, which is also the order to resend in after a reconnect.
    inflight: VecDeque<Inflight>,
    last_packet_id: u16,
    online: bool,
    /// Packet identifiers of QoS 2 messages received from this client whose PUBREL has not come yet: a
    /// retransmitted PUBLISH with one of these is acknowledged again but not routed twice.
    incoming_qos2: HashSet<u16>,
    dropped: u64,
    /// Set while the session is persistent.
    store: Option<StoreHook>,
    /// Set when there is a store to spill to.
    spill: Option<SpillHook>,
    /// Spill requests made, and how many of them are accounted for by read-backs: the difference is what waits
    /// in the store.
    spill_sent: u64,
    spill_accounted: u64,
    /// A read-back is under way.
    loading: bool,
    /// Deliveries spilled over this queue's life, for statistics.
    spilled_total: u64,
    /// The broker is shutting down: nothing more will be pushed (see [`SessionQueue::close`]).
    closed: bool,
}

impl QueueState {
    fn spilled(&self) -> u64 {
        self.spill_sent.saturating_sub(self.spill_accounted)
    }

    fn queued_qos12(&self) -> usize {
        self.pending.len() - self.pending_qos0
    }
}

#[derive(Debug, Clone)]
struct Inflight {
    packet_id: u16,
    delivery: Delivery,
    state: InflightState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflightState {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREL sent, waiting for PUBCOMP.
    Released,
}

/// What became of a pushed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Beyond the in-memory window: left in the store, to be read back in order.
    Spilled,
    /// Dropped by the queue's policy (counted): QoS 0 for an offline session or beyond `max_queued_qos0`, QoS 1/2
    /// beyond `max_queued`.
    Dropped,
    /// A lossless queue is full: nothing was queued; wait with [`SessionQueue::wait_for_room`] and push again.
    Full,
}

/// Something the drainer should send next.
#[derive(Debug)]
pub enum Outgoing {
    Publish { packet_id: Option<u16>, delivery: Delivery, dup: bool },
    PubRel { packet_id: u16 },
}

impl SessionQueue {
    pub fn new(limits: QueueLimits) -> Arc<SessionQueue> {
        Arc::new_cyclic(|me| SessionQueue {
            me: me.clone(),
            state: Mutex::new(QueueState::default()),
            ready: Notify::new(),
            room: Notify::new(),
            limits,
        })
    }

    pub fn limits(&self) -> QueueLimits {
        self.limits
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // The state stays consistent even if a holder panicked: every critical section is a few field updates.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn push(&self, delivery: Delivery) -> Pushed {
        let mut state = self.lock();
        let queued_qos12 = state.queued_qos12();
        let fits = match delivery.qos {
            QoS::AtMostOnce => state.online && state.pending_qos0 < self.limits.max_queued_qos0,
            QoS::AtLeastOnce | QoS::ExactlyOnce => {
                let behind = state.spilled() > 0 || state.loading;
                if (behind || queued_qos12 >= self.limits.max_queued)
                    && !self.limits.lossless
                    && let Some(hook) = &state.spill
                    && let Some(&id) = delivery.message.journal_id.get()
                {
                    hook.durable.spill(&hook.client, hook.generation, id, &delivery);
                    state.spill_sent += 1;
                    state.spilled_total += 1;
                    return Pushed::Spilled;
                }
                // Not journaled (an excluded topic, or no journal): held in memory up to the bound. Its topic
                // never spills, so taking it ahead of spilled deliveries keeps every topic's order.
                queued_qos12 < self.limits.max_queued
            }
        };
        if !fits {
            if self.limits.lossless {
                return Pushed::Full;
            }
            state.dropped += 1;
            return Pushed::Dropped;
        }
        if delivery.qos == QoS::AtMostOnce {
            state.pending_qos0 += 1;
        }
        if let Some(store) = &state.store {
            store.queued(&delivery);
        }
        state.pending.push_back(delivery);
        drop(state);
        self.ready.notify_one();
        Pushed::Queued
    }

    /// Reports every later QoS 1/2 transition to the store (the session became persistent), or stops (`None`).
    pub fn set_store(&self, store: Option<StoreHook>) {
        self.lock().store = store;
    }

    /// Lets the queue spill QoS 1/2 deliveries beyond its in-memory window to the store.
    pub fn set_spill(&self, spill: SpillHook) {
        self.lock().spill = Some(spill);
    }

    /// Whether the store may hold deliveries of this queue that it must forget when the session ends.
    pub fn has_spilled(&self) -> bool {
        let state = self.lock();
        state.spilled_total > 0 || state.spilled() > 0
    }

    /// Puts back what the store kept: in-flight deliveries under their packet ids, then the queued ones, and
    /// the count of those it left spilled.
    pub fn restore(&self, deliveries: Vec<RestoredDelivery>, spilled: u64) {
        let mut state = self.lock();
        state.spill_sent += spilled;
        for r in deliveries {
            match r.packet_id {
                Some(packet_id) => {
                    let inflight_state =
                        if r.released { InflightState::Released } else { InflightState::Published };
                    state.last_packet_id = state.last_packet_id.max(packet_id);
                    state.inflight.push_back(Inflight {
                        packet_id,
                        delivery: r.delivery,
                        state: inflight_state,
                    });
                }
                None => state.pending.push_back(r.delivery),
            }
        }
    }

    /// Queues regardless of the bounds, for the finite burst of retained messages a new subscription gets. QoS 0
    /// for an offline session is still dropped.
    pub fn push_unbounded(&self, delivery: Delivery) -> Pushed {
        let mut state = self.lock();
        if delivery.qos == QoS::AtMostOnce {
            if !state.online {
                state.dropped += 1;
                return Pushed::Dropped;
            }
            state.pending_qos0 += 1;
        }
        state.pending.push_back(delivery);
        drop(state);
        self.ready.notify_one();
        Pushed::Queued
    }

    /// Resolves when a lossless queue may have room again.
    pub async fn wait_for_room(&self) {
        self.room.notified().await;
    }

    /// Resolves when there may be something to take.
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Tells the drainer that nothing more will come (the broker is shutting down), and wakes it.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Wakes the drainer, for example after an acknowledgement freed a place in the send window.
    pub fn wake(&self) {
        self.ready.notify_one();
    }

    /// Marks the session connected or not. Going offline discards waiting QoS 0 messages (counted), as a QoS 0
    /// message is never kept for an absent client.
    pub fn set_online(&self, online: bool) {
        let mut state = self.lock();
        state.online = online;
        if !online && state.pending_qos0 > 0 {
            let before = state.pending.len();
            state.pending.retain(|d| d.qos != QoS::AtMostOnce);
            let removed = before - state.pending.len();
            state.dropped += removed as u64;
            state.pending_qos0 = 0;
        }
    }

    /// Messages to resend after a reconnect: every in-flight message, as PUBLISH with DUP or as PUBREL.
    pub fn resend(&self) -> Vec<Outgoing> {
        self.lock()
            .inflight
            .iter()
            .map(|f| match f.state {
                InflightState::Published => Outgoing::Publish {
                    packet_id: Some(f.packet_id),
                    delivery: f.delivery.clone(),
                    dup: true,
                },
                InflightState::Released => Outgoing::PubRel { packet_id: f.packet_id },
            })
            .collect()
    }

    /// Takes up to `max` messages to send now. QoS 1/2 messages are moved in flight under a fresh packet
    /// identifier while fewer than `send_quota` are in flight (the client's receive maximum). Expired messages
    /// are discarded on the way.
    pub fn take(&self, send_quota: usize, max: usize, now: Instant, out: &mut Vec<Outgoing>) {
        let mut state = self.lock();
        let mut taken = 0;
        while taken < max {
            let Some(front) = state.pending.front() else { break };
            let qos = front.qos;
            if qos != QoS::AtMostOnce && state.inflight.len() >= send_quota {
                break;
            }
            let Some(delivery) = state.pending.pop_front() else { break };
            if qos == QoS::AtMostOnce {
                state.pending_qos0 -= 1;
            }
            if delivery.message.is_expired(now) {
                if let Some(store) = &state.store {
                    store.delivered(&delivery);
                }
                continue;
            }
            let packet_id = if qos == QoS::AtMostOnce {
                None
            } else {
                let id = state.next_packet_id();
                if let Some(store) = &state.store {
                    store.in_flight(&delivery, id, false);
                }
                state.inflight.push_back(Inflight {
                    packet_id: id,
                    delivery: delivery.clone(),
                    state: InflightState::Published,
                });
                Some(id)
            };
            out.push(Outgoing::Publish { packet_id, delivery, dup: false });
            taken += 1;
        }
        let had_room = taken > 0;
        let load = self.start_load(&mut state);
        drop(state);
        if had_room && self.limits.lossless {
            self.room.notify_one();
        }
        if let Some(load) = load {
            tokio::spawn(load);
        }
    }

    /// When the in-memory window is down to half and deliveries wait in the store, asks the store for the next
    /// of them (the request is ordered after every spill made so far) and returns the task that appends them.
    fn start_load(
        &self,
        state: &mut QueueState,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let queued = state.queued_qos12();
        if state.loading || state.spilled() == 0 || queued > self.limits.max_queued / 2 {
            return None;
        }
        let hook = state.spill.as_ref()?;
        let limit = self.limits.max_queued.saturating_sub(queued).clamp(1, SPILL_LOAD_BATCH);
        let keep = state.store.is_some();
        let read = hook.durable.load_spilled(&hook.client, hook.generation, limit, keep);
        state.loading = true;
        let requested_at = state.spill_sent;
        let me = self.me.clone();
        Some(async move {
            let load = read.await;
            if let Some(queue) = me.upgrade() {
                queue.loaded(load, requested_at, limit);
            }
        })
    }

    /// Appends deliveries read back from the store and settles the count of those still there.
    fn loaded(&self, load: SpillLoad, requested_at: u64, limit: usize) {
        let mut state = self.lock();
        state.loading = false;
        if load.failed {
            drop(state);
            return;
        }
        state.dropped += load.missing as u64;
        state.spill_accounted = if load.consumed < limit {
            // Fewer than asked for: everything spilled before the request has been read (or was lost).
            requested_at.max(state.spill_accounted)
        } else {
            (state.spill_accounted + load.consumed as u64).min(requested_at)
        };
        state.pending.extend(load.deliveries);
        drop(state);
        self.ready.notify_one();
    }

    /// Takes the next message for an in-process consumer, which acknowledges by taking.
    pub fn pop(&self) -> Option<Delivery> {
        let mut state = self.lock();
        let delivery = state.pending.pop_front()?;
        if delivery.qos == QoS::AtMostOnce {
            state.pending_qos0 -= 1;
        }
        drop(state);
        self.room.notify_one();
        Some(delivery)
    }

    /// PUBACK, PUBCOMP, or a PUBREC with an error code: the message is done. False if the identifier was not
    /// in flight in the expected state.
    pub fn complete(&self, packet_id: u16, expected: InflightState) -> bool {
        let mut state = self.lock();
        let position = state.inflight.iter().position(|f| f.packet_id == packet_id && f.state == expected);
        match position {
            Some(i) => {
                if let Some(done) = state.inflight.remove(i)
                    && let Some(store) = &state.store
                {
                    store.delivered(&done.delivery);
                }
                drop(state);
                self.ready.notify_one();
                true
            }
            None => false,
        }
    }

    /// PUBREC: the message moves to its second phase (the caller sends PUBREL). True if it was in flight; a
    /// repeated PUBREC for an already released message is also answered with PUBREL.
    pub fn received(&self, packet_id: u16) -> bool {
        let mut state = self.lock();
        let QueueState { inflight, store, .. } = &mut *state;
        match inflight.iter_mut().find(|f| f.packet_id == packet_id) {
            Some(f) => {
                if f.state != InflightState::Released
                    && let Some(store) = store
                {
                    store.in_flight(&f.delivery, packet_id, true);
                }
                f.state = InflightState::Released;
                true
            }
            None => false,
        }
    }

    /// Records an incoming QoS 2 PUBLISH; false if this identifier is already awaiting its PUBREL (a
    /// retransmission that must not be routed again).
    pub fn begin_incoming_qos2(&self, packet_id: u16) -> bool {
        self.lock().incoming_qos2.insert(packet_id)
    }

    /// PUBREL from the client; false if the identifier was unknown.
    pub fn release_incoming_qos2(&self, packet_id: u16) -> bool {
        self.lock().incoming_qos2.remove(&packet_id)
    }

    pub fn incoming_qos2_len(&self) -> usize {
        self.lock().incoming_qos2.len()
    }

    pub fn stats(&self) -> QueueStats {
        let state = self.lock();
        QueueStats {
            pending: state.pending.len(),
            inflight: state.inflight.len(),
            dropped: state.dropped,
            spilled: state.spilled(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Waiting in memory.
    pub pending: usize,
    pub inflight: usize,
    pub dropped: u64,
    /// Waiting in the store, beyond the in-memory window.
    pub spilled: u64,
}

impl QueueState {
    /// The next packet identifier not in flight. There is always one: the in-flight window is bounded by a
    /// receive maximum of at most 65,535, and identifiers run 1..=65,535.
    fn next_packet_id(&mut self) -> u16 {
        loop {
            self.last_packet_id = self.last_packet_id.checked_add(1).unwrap_or(1);
            let id = self.last_packet_id;
            if !self.inflight.iter().any(|f| f.packet_id == id) {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::mqtt::broker::message::Message;

    fn delivery(qos: QoS) -> Delivery {
        Delivery {
            message: Arc::new(Message::new("t", "p", qos, false)),
            qos,
            retain: false,
            subscription_ids: Vec::new(),
        }
    }

    fn queue(lossless: bool) -> Arc<SessionQueue> {
        SessionQueue::new(QueueLimits { max_queued: 2, max_queued_qos0: 1, lossless })
    }

    #[test]
    fn qos0_is_not_queued_offline_and_dropped_beyond_bound() {
        let q = queue(false);
        assert_eq!(q.push(delivery(QoS::AtMostOnce)), Pushed::Dropped);
        q.set_online(true);
        assert_eq!(q.push(delivery(QoS::AtMostOnce)), Pushed::Queued);
        assert_eq!(q.push(delivery(QoS::AtMostOnce)), Pushed::Dropped);
        assert_eq!(q.stats().dropped, 2);
        q.set_online(false);
        assert_eq!(q.stats(), QueueStats { pending: 0, inflight: 0, dropped: 3, spilled: 0 });
    }

    #[test]
    fn qos1_respects_bound_and_send_quota() {
        let q = queue(false);
        assert_eq!(q.push(delivery(QoS::AtLeastOnce)), Pushed::Queued);
        assert_eq!(q.push(delivery(QoS::AtLeastOnce)), Pushed::Queued);
        assert_eq!(q.push(delivery(QoS::AtLeastOnce)), Pushed::Dropped);
        let mut out = Vec::new();
        q.take(1, 10, Instant::now(), &mut out);
        assert_eq!(out.len(), 1);
        let Outgoing::Publish { packet_id: Some(id), .. } = out[0] else { panic!("expected a publish") };
        assert_eq!(id, 1);
        out.clear();
        q.take(1, 10, Instant::now(), &mut out);
        assert!(out.is_empty(), "quota of one is used");
        assert!(q.complete(1, InflightState::Published));
        assert!(!q.complete(1, InflightState::Published), "completing twice");
        q.take(1, 10, Instant::now(), &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn inflight_is_resent_after_reconnect() {
        let q = queue(false);
        q.push(delivery(QoS::ExactlyOnce));
        q.push(delivery(QoS::AtLeastOnce));
        let mut out = Vec::new();
        q.take(10, 10, Instant::now(), &mut out);
        assert!(q.received(1));
        let resend = q.resend();
        assert!(matches!(resend[0], Outgoing::PubRel { packet_id: 1 }));
        assert!(matches!(resend[1], Outgoing::Publish { packet_id: Some(2), dup: true, .. }));
    }

    #[test]
    fn lossless_queue_reports_full_instead_of_dropping() {
        let q = queue(true);
        q.set_online(true);
        assert_eq!(q.push(delivery(QoS::AtMostOnce)), Pushed::Queued);
        assert_eq!(q.push(delivery(QoS::AtMostOnce)), Pushed::Full);
        assert_eq!(q.stats().dropped, 0);
        assert!(q.pop().is_some());
        assert_eq!(q.push(delivery(QoS::AtMostOnce)), Pushed::Queued);
    }

    #[test]
    fn packet_ids_skip_those_in_flight_and_wrap() {
        let q = SessionQueue::new(QueueLimits { max_queued: 10, max_queued_qos0: 0, lossless: false });
        q.lock().last_packet_id = u16::MAX - 1;
        for _ in 0..3 {
            q.push(delivery(QoS::AtLeastOnce));
        }
        let mut out = Vec::new();
        q.take(10, 10, Instant::now(), &mut out);
        let ids: Vec<_> = out
            .iter()
            .map(|o| match o {
                Outgoing::Publish { packet_id, .. } => packet_id.unwrap(),
                Outgoing::PubRel { packet_id } => *packet_id,
            })
            .collect();
        assert_eq!(ids, vec![u16::MAX, 1, 2]);
    }

    #[test]
    fn incoming_qos2_is_deduplicated_until_released() {
        let q = queue(false);
        assert!(q.begin_incoming_qos2(7));
        assert!(!q.begin_incoming_qos2(7));
        assert!(q.release_incoming_qos2(7));
        assert!(!q.release_incoming_qos2(7));
        assert!(q.begin_incoming_qos2(7));
    }
}
