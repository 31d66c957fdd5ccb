//! The router task: the single owner of sessions, subscriptions and retained messages.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::arrival::{Arrival, RecentPublishes};
use super::control::ControlSender;
use super::message::{ClientId, Delivery, Message};
use super::metrics::Metrics;
use super::presence::{
    GATEWAY_RESTART, PresenceChange, PresenceEvent, PresenceRecord, PresenceState, presence_message,
};
use super::queue::{Pushed, QueueLimits, SessionQueue, SpillHook, StoreHook};
use super::sparkplug;
use super::subscriptions::{Matched, Subscriber, SubscriptionTree};
use super::{
    Authorizer, BrokerStats, ClientInfo, Command, ConnectOutcome, ConnectRequest, ConnectionId, Control,
    DisconnectNotice, DisconnectReason, LinkError, Restored, SessionRecord, Shared, SubscribeRequest, Will,
};
use crate::auth::Identity;
use crate::mqtt::codec::topic::{self, SharedFilter};
use crate::mqtt::codec::{ProtocolVersion, QoS, ReasonCode, RetainHandling};
use crate::shutdown::StopToken;

/// Session expiry interval meaning "never".
const NEVER: u32 = u32::MAX;
/// How often retained messages whose expiry interval has run out are removed even if no subscription meets them.
const RETAINED_PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// The part of a topic filter before its first wildcard level, without the separator: every topic it matches
/// starts with it (`a/b/#` matches `a/b` itself, so the `/` is left off). Empty for a filter that starts with a
/// wildcard.
fn literal_prefix(filter: &str) -> &str {
    let literal: usize =
        filter.split('/').take_while(|level| *level != "+" && *level != "#").map(|l| l.len() + 1).sum();
    filter.get(..literal.saturating_sub(1)).unwrap_or("")
}

pub(super) struct Router {
    commands: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    sessions: HashMap<ClientId, Session>,
    subscriptions: SubscriptionTree,
    /// In topic order, so that a subscription reads only the range of topics its filter's literal start allows.
    retained: BTreeMap<Arc<str>, Arc<Message>>,
    /// When expired retained messages were last removed (besides those a subscription meets).
    last_retained_purge: Instant,
    /// Reused for every publish, to spare an allocation per message.
    matched: Vec<Matched>,
    /// What was routed lately, with when it arrived, for the SUBSCRIBEs that arrived before it.
    recent: RecentPublishes,
    shutting_down: bool,
    last_sys: Instant,
    /// Rate limit for the "queue full" warning: once per interval, with the count since the last one.
    last_drop_warning: Option<Instant>,
    drops_since_warning: u64,
    /// The last queue generation handed out (see [`SpillHook::generation`]).
    last_generation: u64,
    /// Clients that were connected when the gateway stopped, to be marked lost (and their clean sessions' wills
    /// published) as the router starts.
    lost_at_start: Vec<PresenceRecord>,
}

struct Session {
    queue: Arc<SessionQueue>,
    /// Every subscription of this session, keyed by the filter as subscribed (including `$share/...`), so that
    /// the session can be removed from the tree when it ends.
    subscriptions: HashSet<String>,
    connection: Option<Attached>,
    is_link: bool,
    /// Seconds after disconnection until the session ends; [`NEVER`] for never.
    expiry: u32,
    disconnected_at: Option<Instant>,
    /// A will waiting for its delay interval, and when it is due. Boxed, like `Attached::will`: sessions sit
    /// inline in the router's map, one per client, and most have no will.
    pending_will: Option<Box<(Instant, Message)>>,
    /// The store has this session (it is persistent): tell it when the session changes or ends.
    persisted: bool,
    /// Who the session acts for (the last authenticated connection's user).
    principal: Option<Arc<Identity>>,
}

struct Attached {
    id: ConnectionId,
    control: ControlSender,
    /// Boxed: a `Will` is ~140 bytes and most clients have none (see `Session::pending_will`).
    will: Option<Box<Will>>,
    /// What the console shows of the connection; boxed, read only when it asks.
    about: Box<AttachedInfo>,
}

struct AttachedInfo {
    peer: String,
    protocol: ProtocolVersion,
    keep_alive: u16,
    /// Unix ms.
    since: i64,
}

impl Session {
    fn online(&self) -> bool {
        self.is_link || self.connection.is_some()
    }

    fn take_pending_will(&mut self) -> Option<Message> {
        self.pending_will.take().map(|pending| pending.1)
    }
}

impl Router {
    pub(super) fn new(commands: mpsc::Receiver<Command>, shared: Arc<Shared>, restored: Restored) -> Router {
        let mut router = Router {
            commands,
            shared,
            sessions: HashMap::new(),
            subscriptions: SubscriptionTree::default(),
            retained: restored.retained.into_iter().map(|m| (m.topic.clone(), Arc::new(m))).collect(),
            matched: Vec::new(),
            recent: RecentPublishes::default(),
            shutting_down: false,
            last_sys: Instant::now(),
            last_retained_purge: Instant::now(),
            last_drop_warning: None,
            drops_since_warning: 0,
            last_generation: 0,
            lost_at_start: Vec::new(),
        };
        let mut lost = Vec::new();
        for record in restored.presence {
            if record.state == PresenceState::Online {
                lost.push(record);
            } else {
                let message =
                    presence_message(&record.client_id, record.state, record.reason.as_deref(), record.ts);
                router.retained.insert(message.topic.clone(), Arc::new(message));
            }
        }
        let connected: Vec<(ClientId, Option<String>)> = restored
            .sessions
            .iter()
            .filter(|s| s.disconnected_at.is_none())
            .map(|s| (s.client_id.clone(), s.username.clone()))
            .collect();
        let count = restored.sessions.len();
        for record in restored.sessions {
            router.restore(record);
        }
        if count > 0 {
            tracing::info!(count, "persistent sessions restored");
        }
        // Sessions whose client was connected at the crash are saved as offline since now, with their will's due
        // time: a second restart before the will is due keeps counting from this one, and does not start over.
        for (id, username) in connected {
            router.persist(&id);
            if !lost.iter().any(|r| r.client_id == id) {
                lost.push(PresenceRecord {
                    client_id: id,
                    state: PresenceState::Online,
                    reason: None,
                    ts: 0,
                    username,
                    peer: None,
                    will: None,
                });
            }
        }
        router.lost_at_start = lost;
        router
    }

    /// Marks the clients that were connected when the gateway stopped as lost ("gateway restart"), and publishes
    /// the wills of those whose session ended with the connection (clean sessions: session expiry 0 bounds the
    /// will delay to 0). A persistent session's will was restored with the session and waits for its delay.
    ///
    /// The store learns of the loss (which clears the stored will) before the will is recorded: both travel on
    /// the store's one ordered channel, so they are committed together or the loss first. A crash in between
    /// loses the will rather than publishing it twice.
    async fn settle_lost_at_start(&mut self) {
        let lost = std::mem::take(&mut self.lost_at_start);
        if !lost.is_empty() {
            tracing::info!(count = lost.len(), "clients connected when the gateway stopped are marked lost");
        }
        for record in lost {
            let change = PresenceChange {
                client_id: record.client_id.clone(),
                state: PresenceState::Lost,
                reason: Some(GATEWAY_RESTART.to_owned()),
                ts: crate::timefmt::now_ms(),
                username: record.username,
                peer: record.peer,
                will: None,
            };
            self.store_presence(&change);
            if !self.sessions.contains_key(&record.client_id)
                && let Some(will) = record.will
            {
                self.publish_will(will.message).await;
            }
            self.route_presence(&change).await;
        }
    }

    /// Puts back a persistent session the store kept: offline, its expiry counting from when it went offline
    /// (or from now, if its client was connected when the gateway stopped), its subscriptions in the tree, and
    /// its will pending if the gateway stopped while the client was connected or a delayed will was waiting.
    fn restore(&mut self, record: SessionRecord) {
        let now = Instant::now();
        let now_ms = crate::timefmt::now_ms();
        let ago = |ms: i64| Duration::from_millis(u64::try_from(now_ms.saturating_sub(ms)).unwrap_or(0));
        let disconnected_at = match record.disconnected_at {
            Some(at) => now.checked_sub(ago(at)).unwrap_or(now),
            None => now,
        };
        let pending_will = match (record.will, record.will_due, record.disconnected_at) {
            (Some(will), Some(due), _) => {
                let wait = Duration::from_millis(u64::try_from(due.saturating_sub(now_ms)).unwrap_or(0));
                Some(Box::new((now + wait, will.message)))
            }
            // The connection was lost with the gateway: that is an abnormal loss.
            (Some(will), None, None) => {
                let due = now + Duration::from_secs(u64::from(will.delay.min(record.expiry)));
                Some(Box::new((due, will.message)))
            }
            _ => None,
        };
        let queue = self.new_queue(&record.client_id);
        queue.restore(record.messages, record.spilled);
        if let Some(durable) = self.shared.durable.clone() {
            queue.set_store(Some(StoreHook { client: record.client_id.clone(), durable }));
        }
        let principal = Arc::new(Identity {
            username: record.username.clone(),
            client_id: record.client_id.as_str().to_owned(),
        });
        let mut session = Session {
            queue,
            subscriptions: HashSet::new(),
            connection: None,
            is_link: false,
            expiry: record.expiry,
            disconnected_at: Some(disconnected_at),
            pending_will,
            persisted: true,
            principal: Some(principal.clone()),
        };
        for (filter, id) in record.subscriptions {
            let (group, inner) = split_shared(&filter.filter);
            if topic::valid_topic_filter(inner) {
                let subscriber = Subscriber {
                    client: record.client_id.clone(),
                    options: filter.options,
                    id,
                    principal: Some(principal.clone()),
                };
                self.subscriptions.insert(group, inner, subscriber);
                session.subscriptions.insert(filter.filter);
            }
        }
        self.sessions.insert(record.client_id, session);
    }

    /// Saves a persistent session's state with the store, or forgets it once it is no longer persistent.
    fn persist(&mut self, id: &ClientId) {
        let Some(durable) = self.shared.durable.clone() else { return };
        let Some(session) = self.sessions.get_mut(id) else { return };
        if session.is_link {
            return;
        }
        if session.expiry == 0 {
            if session.persisted {
                session.queue.set_store(None);
                durable.remove_session(id);
                session.persisted = false;
            }
            return;
        }
        let now = Instant::now();
        let now_ms = crate::timefmt::now_ms();
        let to_ms = |at: Instant| {
            let ago = i64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(0);
            let ahead = i64::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(0);
            now_ms - ago + ahead
        };
        let (will, will_due) = match (&session.connection, &session.pending_will) {
            (Some(attached), _) => (attached.will.as_deref().cloned(), None),
            (None, Some(pending)) => {
                let (due, message) = &**pending;
                (Some(Will { message: message.clone(), delay: 0 }), Some(to_ms(*due)))
            }
            (None, None) => (None, None),
        };
        let record = SessionRecord {
            client_id: id.clone(),
            username: session.principal.as_ref().and_then(|p| p.username.clone()),
            expiry: session.expiry,
            disconnected_at: session.disconnected_at.map(to_ms),
            will,
            will_due,
            subscriptions: Vec::new(),
            messages: Vec::new(),
            spilled: 0,
        };
        durable.save_session(&record);
        if !session.persisted {
            session.queue.set_store(Some(StoreHook { client: id.clone(), durable }));
        }
        session.persisted = true;
    }

    /// Routes until `stop` fires and every network connection has then gone (each is told to close, and
    /// detaches as it does, so that its session is saved); in-process links are told and let go. Also returns
    /// if every handle to the broker is gone.
    pub(super) async fn run(mut self, mut stop: StopToken) {
        self.settle_lost_at_start().await;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.shutting_down && !self.sessions.values().any(|s| s.connection.is_some()) {
                break;
            }
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.handle(command).await,
                    None => break,
                },
                _ = tick.tick() => {
                    self.on_tick(Instant::now()).await;
                    // systemd's watchdog (WatchdogSec= in the unit): pinged from here, so that a hung router
                    // stops the pings and gets the gateway restarted. Nothing when not under a watchdog.
                    crate::systemd::notify_watchdog();
                }
                _ = stop.stopped(), if !self.shutting_down => self.shut_down(),
            }
        }
        tracing::info!("router stopped");
    }

    /// Tells every connection to close ("server shutting down") and every link that nothing more will come.
    fn shut_down(&mut self) {
        self.shutting_down = true;
        let mut told = 0;
        for session in self.sessions.values() {
            if let Some(attached) = &session.connection {
                attached.control.send(Control::Disconnect(ReasonCode::SERVER_SHUTTING_DOWN));
                told += 1;
            }
            if session.is_link {
                session.queue.close();
            }
        }
        tracing::info!(connections = told, "router: connections told to close");
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Publish(message, arrival) => {
                self.route(message.clone()).await;
                self.recent.remember(arrival, &message);
                self.sparkplug_certificate(&message).await;
            }
            Command::Connect(request, reply) => {
                let outcome = self.connect(*request).await;
                let _ = reply.send(outcome);
            }
            Command::Subscribe(request, reply) => {
                let reasons = self.subscribe(request);
                let _ = reply.send(reasons);
            }
            Command::Unsubscribe(client, filters, reply) => {
                let reasons = self.unsubscribe(&client, &filters);
                let _ = reply.send(reasons);
            }
            Command::Disconnected(notice) => self.disconnected(*notice).await,
            Command::OpenLink(client, limits, reply) => {
                let _ = reply.send(self.open_link(client, limits));
            }
            Command::CloseLink(client) => self.end_session(&client),
            Command::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            Command::Clients(search, limit, reply) => {
                let _ = reply.send(self.clients(&search, limit));
            }
            Command::Kick(id, reply) => {
                let _ = reply.send(self.kick(&id));
            }
            Command::DropSession(id, reply) => {
                let _ = reply.send(self.drop_session(&id));
            }
            Command::DisconnectUser(username) => {
                for session in self.sessions.values() {
                    let theirs =
                        session.principal.as_ref().is_some_and(|p| p.username.as_deref() == Some(&username));
                    if let (true, Some(attached)) = (theirs, &session.connection) {
                        attached.control.send(Control::Disconnect(ReasonCode::ADMINISTRATIVE_ACTION));
                    }
                }
            }
        }
    }

    async fn connect(&mut self, request: ConnectRequest) -> Result<ConnectOutcome, ReasonCode> {
        if self.shutting_down {
            return Err(ReasonCode::SERVER_UNAVAILABLE);
        }
        let id = request.client_id;
        if self.sessions.get(&id).is_some_and(|s| s.is_link) {
            return Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        }
        let now = Instant::now();
        // Session takeover: the client is connected elsewhere. Close that connection; its will is published
        // unless the session continues and the will has a delay (the client is back before the delay ran out).
        if let Some(old) = self.sessions.get_mut(&id).and_then(|s| s.connection.take()) {
            old.control.send(Control::Disconnect(ReasonCode::SESSION_TAKEN_OVER));
            tracing::info!(client = %id, "session taken over by a new connection from {}", request.peer);
            let change = self.presence_change(
                &id,
                PresenceState::Lost,
                Some("session taken over"),
                Some(old.about.peer),
            );
            self.store_presence(&change);
            if let Some(will) = old.will
                && (request.clean_start || will.delay == 0)
            {
                self.publish_will(will.message).await;
            }
            self.route_presence(&change).await;
        }
        let resume = !request.clean_start && self.sessions.contains_key(&id);
        if !resume {
            if let Some(will) = self.sessions.get_mut(&id).and_then(Session::take_pending_will) {
                self.publish_will(will).await;
            }
            self.end_session(&id);
            let queue = self.new_queue(&id);
            let session = Session {
                queue,
                subscriptions: HashSet::new(),
                connection: None,
                is_link: false,
                expiry: 0,
                disconnected_at: None,
                pending_will: None,
                persisted: false,
                principal: None,
            };
            self.sessions.insert(id.clone(), session);
        }
        let expiry = self.cap_expiry(request.session_expiry);
        let Some(session) = self.sessions.get_mut(&id) else { return Err(ReasonCode::UNSPECIFIED_ERROR) };
        session.pending_will = None;
        session.principal = request.principal.clone();
        let (will, peer) = (request.will.clone(), request.peer.clone());
        session.connection = Some(Attached {
            id: request.connection,
            control: request.control,
            will: request.will.map(Box::new),
            about: Box::new(AttachedInfo {
                peer: request.peer,
                protocol: request.protocol,
                keep_alive: request.keep_alive,
                since: crate::timefmt::now_ms(),
            }),
        });
        session.expiry = expiry;
        session.disconnected_at = None;
        session.queue.set_online(true);
        let queue = session.queue.clone();
        tracing::debug!(client = %id, resume, ?now, "session attached");
        self.persist(&id);
        let mut change = self.presence_change(&id, PresenceState::Online, None, Some(peer));
        change.will = will;
        self.store_presence(&change);
        self.route_presence(&change).await;
        self.birth_or_death(&id, PresenceEvent::Birth).await;
        Ok(ConnectOutcome { session_present: resume, queue })
    }

    fn cap_expiry(&self, requested: u32) -> u32 {
        match self.shared.config.max_session_expiry {
            Some(max) => requested.min(max),
            None => requested,
        }
    }

    async fn disconnected(&mut self, notice: DisconnectNotice) {
        let id = notice.client_id;
        let Some(session) = self.sessions.get_mut(&id) else { return };
        // A connection that was taken over reports its end after the new one attached: nothing to do.
        if session.connection.as_ref().map(|a| a.id) != Some(notice.connection) {
            return;
        }
        let attached = session.connection.take();
        let peer = attached.as_ref().map(|a| a.about.peer.clone());
        session.queue.set_online(false);
        if let Some(expiry) = notice.session_expiry {
            session.expiry = match self.shared.config.max_session_expiry {
                Some(max) => expiry.min(max),
                None => expiry,
            };
        }
        let now = Instant::now();
        session.disconnected_at = Some(now);
        let expiry = session.expiry;
        let (state, reason) = match &notice.reason {
            DisconnectReason::Normal | DisconnectReason::NormalWithWill => (PresenceState::Offline, None),
            DisconnectReason::Lost(reason) => (PresenceState::Lost, Some(reason.as_str())),
        };
        // Stored before the will is recorded, so that a crash cannot leave the will both published and still
        // stored as the will of a connected client (see `settle_lost_at_start`).
        let change = self.presence_change(&id, state, reason, peer);
        self.store_presence(&change);
        let will = match notice.reason {
            DisconnectReason::Normal => None,
            DisconnectReason::NormalWithWill | DisconnectReason::Lost(_) => attached.and_then(|a| a.will),
        };
        if let Some(will) = will {
            if will.delay == 0 || expiry == 0 {
                self.publish_will(will.message).await;
            } else {
                let due = now + Duration::from_secs(u64::from(will.delay.min(expiry)));
                if let Some(session) = self.sessions.get_mut(&id) {
                    session.pending_will = Some(Box::new((due, will.message)));
                }
            }
        }
        self.route_presence(&change).await;
        if state == PresenceState::Offline {
            self.birth_or_death(&id, PresenceEvent::Death).await;
        }
        if expiry == 0 {
            self.end_session(&id);
        } else {
            self.persist(&id);
        }
    }

    /// A queue for a new client session, spilling to the store when there is one.
    fn new_queue(&mut self, id: &ClientId) -> Arc<SessionQueue> {
        let queue = SessionQueue::new(self.shared.config.queue_limits());
        if let Some(durable) = self.shared.durable.clone() {
            self.last_generation += 1;
            queue.set_spill(SpillHook { client: id.clone(), durable, generation: self.last_generation });
        }
        queue
    }

    /// Removes a session and all its subscriptions.
    fn end_session(&mut self, id: &ClientId) {
        let Some(session) = self.sessions.remove(id) else { return };
        if let Some(durable) = &self.shared.durable {
            if session.persisted {
                session.queue.set_store(None);
                durable.remove_session(id);
            }
            if session.persisted || session.queue.has_spilled() {
                durable.discard_queue(id);
            }
        }
        for filter in &session.subscriptions {
            let (group, filter) = split_shared(filter);
            self.subscriptions.remove(group, filter, id);
        }
    }

    fn subscribe(&mut self, request: SubscribeRequest) -> Vec<ReasonCode> {
        let id = request.client_id;
        let Some(session) = self.sessions.get_mut(&id) else {
            return vec![ReasonCode::UNSPECIFIED_ERROR; request.filters.len()];
        };
        let mut reasons = Vec::with_capacity(request.filters.len());
        let mut retained_for = Vec::new();
        let mut fresh = Vec::new();
        for f in request.filters {
            let (group, filter) = match topic::parse_shared(&f.filter) {
                Some(Ok(SharedFilter { group, filter })) => (Some(group), filter),
                None => (None, f.filter.as_str()),
                Some(Err(_)) => {
                    reasons.push(ReasonCode::TOPIC_FILTER_INVALID);
                    continue;
                }
            };
            if !topic::valid_topic_filter(filter) {
                reasons.push(ReasonCode::TOPIC_FILTER_INVALID);
                continue;
            }
            let subscriber = Subscriber {
                client: id.clone(),
                options: f.options,
                id: request.subscription_id,
                principal: request.principal.clone(),
            };
            let existed = self.subscriptions.insert(group, filter, subscriber.clone());
            session.subscriptions.insert(f.filter.clone());
            if session.expiry > 0
                && !session.is_link
                && let Some(durable) = &self.shared.durable
            {
                durable.save_subscription(&id, &f, request.subscription_id);
            }
            reasons.push(ReasonCode(f.options.qos as u8));
            // Retained messages are not sent for shared subscriptions.
            let send_retained = group.is_none()
                && match f.options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendAtNewSubscribe => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if group.is_none() && !existed {
                fresh.push(Fresh {
                    filter: filter.to_owned(),
                    subscriber: subscriber.clone(),
                    send_retained,
                });
            }
            if send_retained {
                retained_for.push((filter.to_owned(), subscriber));
            }
        }
        let queue = session.queue.clone();
        for (filter, subscriber) in retained_for {
            self.send_retained(&queue, &filter, &subscriber);
        }
        if !fresh.is_empty() {
            self.deliver_raced(&id, &queue, &fresh, request.arrival);
        }
        reasons
    }

    /// Delivers on new subscriptions the publishes that arrived after their SUBSCRIBE but were routed before it
    /// (another worker thread read them first; see [`super::arrival`]), as if the SUBSCRIBE had been applied in
    /// the order the two arrived. Left out: what the session's other subscriptions matched (it had it, or was
    /// meant not to), and retained messages a new subscription has just been sent as retained.
    fn deliver_raced(&mut self, id: &ClientId, queue: &SessionQueue, fresh: &[Fresh], arrival: Arrival) {
        let Some(session) = self.sessions.get(id) else { return };
        let now = Instant::now();
        let authorizer = self.shared.authorizer.as_deref();
        let had_before = |topic_name: &str| {
            session.subscriptions.iter().any(|s| {
                !fresh.iter().any(|f| &f.filter == s) && topic::matches(split_shared(s).1, topic_name)
            })
        };
        let mut deliveries = Vec::new();
        for message in self.recent.arrived_after(arrival) {
            let matched: Vec<Matched> = fresh
                .iter()
                .filter(|f| !(message.retain && f.send_retained) && topic::matches(&f.filter, &message.topic))
                .map(|f| Matched { subscriber: f.subscriber.clone(), shared: false })
                .collect();
            if matched.is_empty() || message.is_expired(now) || had_before(&message.topic) {
                continue;
            }
            deliveries.extend(delivery_for(message, &matched, authorizer));
        }
        if !deliveries.is_empty() {
            tracing::debug!(client = %id, n = deliveries.len(), "publishes that raced a SUBSCRIBE delivered on it");
        }
        for delivery in deliveries {
            let qos = delivery.qos;
            if matches!(queue.push(delivery), Pushed::Dropped | Pushed::Full) {
                self.count_drop(id, qos);
            }
        }
    }

    /// Queues the retained messages matching a new subscription. These bypass a lossless queue's bound: the
    /// subscriber is typically waiting for its SUBACK and not draining, and the set is finite.
    ///
    /// Only the topics that start with the filter's literal levels are read (all of them only for a filter that
    /// starts with a wildcard): with every topic scanned, each SUBSCRIBE cost the router, and so every publisher,
    /// time in proportion to all retained topics, and a reconnect storm of subscribers multiplied it.
    fn send_retained(&mut self, queue: &SessionQueue, filter: &str, subscriber: &Subscriber) {
        let now = Instant::now();
        let authorizer = self.shared.authorizer.as_deref();
        let may_read = |m: &Message| match (authorizer, &subscriber.principal) {
            (Some(a), Some(p)) => a.can_read(p, &m.topic),
            _ => true,
        };
        let prefix = literal_prefix(filter);
        let mut matching = Vec::new();
        let mut expired = Vec::new();
        for (topic, message) in self
            .retained
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(|(topic, _)| topic.starts_with(prefix))
        {
            if !topic::matches(filter, topic) {
                continue;
            }
            if message.is_expired(now) {
                expired.push(topic.clone());
            } else if may_read(message) {
                matching.push(message.clone());
            }
        }
        for topic in expired {
            self.retained.remove(&topic);
        }
        // In topic order, as the map keeps them.
        for message in matching {
            let delivery = Delivery {
                message: message.clone(),
                qos: message.qos.min(subscriber.options.qos),
                retain: true,
                subscription_ids: subscriber.id.into_iter().collect(),
            };
            if queue.push_unbounded(delivery) == Pushed::Dropped {
                Metrics::add(&self.shared.metrics.messages_dropped, 1);
            }
        }
    }

    fn unsubscribe(&mut self, id: &ClientId, filters: &[String]) -> Vec<ReasonCode> {
        let Some(session) = self.sessions.get_mut(id) else {
            return vec![ReasonCode::UNSPECIFIED_ERROR; filters.len()];
        };
        filters
            .iter()
            .map(|f| {
                if session.subscriptions.remove(f) {
                    let (group, filter) = split_shared(f);
                    self.subscriptions.remove(group, filter, id);
                    if session.persisted
                        && let Some(durable) = &self.shared.durable
                    {
                        durable.remove_subscription(id, f);
                    }
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect()
    }

    async fn route(&mut self, message: Arc<Message>) {
        if message.retain {
            if message.payload.is_empty() {
                self.retained.remove(&message.topic);
            } else {
                self.retained.insert(message.topic.clone(), message.clone());
            }
        }
        let mut matched = std::mem::take(&mut self.matched);
        matched.clear();
        let sessions = &self.sessions;
        self.subscriptions.matches(
            &message.topic,
            &|c| sessions.get(c).is_some_and(Session::online),
            &mut matched,
        );
        if matched.is_empty() {
            Metrics::add(&self.shared.metrics.messages_unrouted, 1);
        }
        if matched.len() > 1 {
            matched.sort_by(|a, b| a.subscriber.client.cmp(&b.subscriber.client));
        }
        // Overlapping subscriptions of one client get one delivery, at the highest QoS among them, carrying every
        // matching subscription identifier.
        let mut rest = matched.as_slice();
        while let Some(first) = rest.first() {
            let client = &first.subscriber.client;
            let n = rest.iter().take_while(|m| &m.subscriber.client == client).count();
            let (group, tail) = rest.split_at(n);
            rest = tail;
            if let Some(delivery) = delivery_for(&message, group, self.shared.authorizer.as_deref()) {
                self.deliver(client, delivery).await;
            }
        }
        self.matched = matched;
    }

    async fn deliver(&mut self, client: &ClientId, delivery: Delivery) {
        let Some(session) = self.sessions.get(client) else { return };
        let queue = session.queue.clone();
        loop {
            match queue.push(delivery.clone()) {
                Pushed::Queued => return,
                Pushed::Spilled => {
                    Metrics::add(&self.shared.metrics.messages_spilled, 1);
                    return;
                }
                Pushed::Dropped => {
                    self.count_drop(client, delivery.qos);
                    return;
                }
                // A lossless in-process consumer is behind: wait for it. This holds up routing as a whole, which is
                // the point: such a consumer must see everything, so publishers are slowed down instead.
                Pushed::Full => queue.wait_for_room().await,
            }
        }
    }

    fn count_drop(&mut self, client: &ClientId, qos: QoS) {
        Metrics::add(&self.shared.metrics.messages_dropped, 1);
        self.drops_since_warning += 1;
        let now = Instant::now();
        if self.last_drop_warning.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
            tracing::warn!(
                client = %client,
                ?qos,
                dropped = self.drops_since_warning,
                "subscriber queue full or client offline: messages dropped (max_queued_messages / max_queued_qos0)"
            );
            self.last_drop_warning = Some(now);
            self.drops_since_warning = 0;
        }
    }

    async fn publish_will(&mut self, mut message: Message) {
        message.received = Instant::now();
        sparkplug::stamp_death(&mut message);
        tracing::debug!(topic = %message.topic, "publishing will");
        let message = Arc::new(message);
        if let Some(durable) = &self.shared.durable {
            durable.record_nowait(&message);
        }
        self.route(message).await;
    }

    /// A presence change of a client, now, with the user of its session.
    fn presence_change(
        &self,
        id: &ClientId,
        state: PresenceState,
        reason: Option<&str>,
        peer: Option<String>,
    ) -> PresenceChange {
        let username =
            self.sessions.get(id).and_then(|s| s.principal.as_ref()).and_then(|p| p.username.clone());
        PresenceChange {
            client_id: id.clone(),
            state,
            reason: reason.map(str::to_owned),
            ts: crate::timefmt::now_ms(),
            username,
            peer,
            will: None,
        }
    }

    /// Tells the store (the client's last presence, its will while online, the history). Never waits.
    fn store_presence(&self, change: &PresenceChange) {
        if let Some(durable) = &self.shared.durable {
            durable.presence(change);
        }
    }

    /// Sparkplug-aware server: a birth is also stored and republished retained under `$sparkplug/certificates/`
    /// (see `sparkplug.rs`), journaled like any retained message so that it survives a restart.
    async fn sparkplug_certificate(&mut self, message: &Arc<Message>) {
        let Some(copy) = sparkplug::certificate_shared(message) else { return };
        if let Some(durable) = &self.shared.durable {
            durable.record_nowait(&copy);
        }
        self.route(copy).await;
    }

    /// Publishes a client's presence as a retained message on `$SYS/weir/clients/<id>/presence`.
    async fn route_presence(&mut self, change: &PresenceChange) {
        let message = presence_message(&change.client_id, change.state, change.reason.as_deref(), change.ts);
        self.route(Arc::new(message)).await;
    }

    /// Publishes the configured birth (on connect) or death (on a normal disconnect) messages for this client,
    /// each only where the client itself could publish (the access rules in force, under its identity).
    async fn birth_or_death(&mut self, id: &ClientId, event: PresenceEvent) {
        let rules =
            self.shared.presence_rules.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if !rules.iter().any(|r| r.event == event) {
            return;
        }
        let who = match self.sessions.get(id).and_then(|s| s.principal.clone()) {
            Some(principal) => principal,
            None => Arc::new(Identity { username: None, client_id: id.as_str().to_owned() }),
        };
        let authorizer = self.shared.authorizer.clone();
        let roles = authorizer.as_ref().map(|a| a.roles(&who)).unwrap_or_default();
        let now = crate::timefmt::now_ms();
        for rule in rules.iter().filter(|r| r.event == event && r.matches(&who, &roles)) {
            let Some(mut message) = rule.message(&who, now) else {
                tracing::warn!(client = %id, topic = %rule.topic, "{} topic is not a valid topic name", event.as_str());
                continue;
            };
            if let Some(authorizer) = &authorizer
                && !authorizer.can_publish(&who, &message.topic)
            {
                tracing::info!(
                    client = %id,
                    topic = %message.topic,
                    "{} not published: the client may not publish there",
                    event.as_str()
                );
                continue;
            }
            message.username = who.username.as_deref().map(Arc::from);
            let message = Arc::new(message);
            if let Some(durable) = &self.shared.durable {
                durable.record_nowait(&message);
            }
            self.route(message).await;
        }
    }

    fn open_link(&mut self, id: ClientId, limits: QueueLimits) -> Result<Arc<SessionQueue>, LinkError> {
        if self.sessions.contains_key(&id) {
            return Err(LinkError::NameInUse(id.to_string()));
        }
        let queue = SessionQueue::new(limits);
        queue.set_online(true);
        let session = Session {
            queue: queue.clone(),
            subscriptions: HashSet::new(),
            connection: None,
            is_link: true,
            expiry: NEVER,
            disconnected_at: None,
            pending_will: None,
            persisted: false,
            principal: None,
        };
        self.sessions.insert(id, session);
        Ok(queue)
    }

    async fn on_tick(&mut self, now: Instant) {
        let mut wills = Vec::new();
        let mut willed = Vec::new();
        let mut expired = Vec::new();
        for (id, session) in &mut self.sessions {
            if session.pending_will.as_ref().is_some_and(|pending| pending.0 <= now)
                && let Some(will) = session.take_pending_will()
            {
                wills.push(will);
                willed.push(id.clone());
            }
            let ended = session.connection.is_none()
                && !session.is_link
                && session.expiry != NEVER
                && session.disconnected_at.is_some_and(|at| {
                    now.duration_since(at) >= Duration::from_secs(u64::from(session.expiry))
                });
            if ended {
                if let Some(will) = session.take_pending_will() {
                    wills.push(will);
                }
                expired.push(id.clone());
            }
        }
        for id in expired {
            tracing::debug!(client = %id, "session expired");
            self.end_session(&id);
        }
        for id in willed {
            self.persist(&id);
        }
        for will in wills {
            self.publish_will(will).await;
        }
        if now.duration_since(self.last_retained_purge) >= RETAINED_PURGE_INTERVAL {
            self.last_retained_purge = now;
            self.retained.retain(|_, m| !m.is_expired(now));
        }
        if let Some(interval) = self.shared.config.sys_interval
            && now.duration_since(self.last_sys) >= interval
        {
            self.last_sys = now;
            self.publish_sys().await;
        }
    }

    async fn publish_sys(&mut self) {
        let metrics = &self.shared.metrics;
        let stats = self.stats();
        let values: [(&str, String); 12] = [
            ("$SYS/broker/version", format!("weir {}", env!("CARGO_PKG_VERSION"))),
            ("$SYS/broker/uptime", format!("{} seconds", self.shared.started.elapsed().as_secs())),
            ("$SYS/broker/clients/connected", stats.clients_connected.to_string()),
            ("$SYS/broker/clients/total", stats.sessions.to_string()),
            ("$SYS/broker/messages/received", Metrics::get(&metrics.messages_received).to_string()),
            ("$SYS/broker/messages/sent", Metrics::get(&metrics.messages_sent).to_string()),
            ("$SYS/broker/messages/dropped", Metrics::get(&metrics.messages_dropped).to_string()),
            ("$SYS/broker/messages/spilled", Metrics::get(&metrics.messages_spilled).to_string()),
            ("$SYS/broker/bytes/received", Metrics::get(&metrics.bytes_received).to_string()),
            ("$SYS/broker/bytes/sent", Metrics::get(&metrics.bytes_sent).to_string()),
            ("$SYS/broker/retained messages/count", stats.retained.to_string()),
            ("$SYS/broker/subscriptions/count", stats.subscriptions.to_string()),
        ];
        for (topic, value) in values {
            self.route(Arc::new(Message::new(topic, value, QoS::AtMostOnce, true))).await;
        }
    }

    /// The sessions (not links) whose client id or user name contains `search`, at most `limit`, by client id.
    fn clients(&self, search: &str, limit: usize) -> Vec<ClientInfo> {
        let now = Instant::now();
        let mut found: Vec<ClientInfo> = self
            .sessions
            .iter()
            .filter(|(_, s)| !s.is_link)
            .filter(|(id, s)| {
                let user = s.principal.as_ref().and_then(|p| p.username.as_deref()).unwrap_or_default();
                id.as_str().contains(search) || user.contains(search)
            })
            .map(|(id, s)| {
                let queue = s.queue.stats();
                let about = s.connection.as_ref().map(|c| &c.about);
                let ago = |at: Instant| i64::try_from(now.duration_since(at).as_millis()).unwrap_or(i64::MAX);
                ClientInfo {
                    client_id: id.to_string(),
                    username: s.principal.as_ref().and_then(|p| p.username.clone()),
                    online: s.connection.is_some(),
                    peer: about.map(|a| a.peer.clone()),
                    protocol: about.map(|a| a.protocol),
                    keep_alive: about.map(|a| a.keep_alive),
                    since: about
                        .map(|a| a.since)
                        .or_else(|| s.disconnected_at.map(|at| crate::timefmt::now_ms() - ago(at))),
                    expiry: s.expiry,
                    subscriptions: s.subscriptions.iter().cloned().collect(),
                    queued: queue.pending,
                    spilled: queue.spilled,
                    in_flight: queue.inflight,
                    dropped: queue.dropped,
                }
            })
            .collect();
        found.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        found.truncate(limit);
        found
    }

    /// Closes a client's connection (v5: DISCONNECT 0x98 administrative action); false if it is not connected.
    fn kick(&mut self, id: &ClientId) -> bool {
        match self.sessions.get(id).and_then(|s| s.connection.as_ref()) {
            Some(attached) => {
                attached.control.send(Control::Disconnect(ReasonCode::ADMINISTRATIVE_ACTION));
                true
            }
            None => false,
        }
    }

    /// Ends an offline session with everything queued for it; false if there is none, or its client is
    /// connected (close the connection first).
    fn drop_session(&mut self, id: &ClientId) -> bool {
        match self.sessions.get(id) {
            Some(s) if !s.is_link && s.connection.is_none() => {
                self.end_session(id);
                true
            }
            _ => false,
        }
    }

    fn stats(&self) -> BrokerStats {
        BrokerStats {
            clients_connected: self.sessions.values().filter(|s| s.connection.is_some()).count(),
            sessions: self.sessions.values().filter(|s| !s.is_link).count(),
            subscriptions: self.subscriptions.len(),
            retained: self.retained.len(),
        }
    }
}

/// A subscription that one SUBSCRIBE made (not replaced; not shared).
struct Fresh {
    filter: String,
    subscriber: Subscriber,
    /// The retained messages matching it were sent as it was made.
    send_retained: bool,
}

/// Builds one client's delivery from the subscriptions of it that matched, or `None` if "no local" excludes it.
/// With an authorizer, each subscription's principal must be allowed to read the topic: the rules in force now,
/// not when the subscription was made.
fn delivery_for(
    message: &Arc<Message>,
    matched: &[Matched],
    authorizer: Option<&dyn Authorizer>,
) -> Option<Delivery> {
    let mut qos = None;
    let mut retain = false;
    let mut subscription_ids = Vec::new();
    for m in matched {
        let options = &m.subscriber.options;
        if options.no_local && !m.shared && message.origin.as_ref() == Some(&m.subscriber.client) {
            continue;
        }
        if let (Some(authorizer), Some(principal)) = (authorizer, &m.subscriber.principal)
            && !authorizer.can_read(principal, &message.topic)
        {
            continue;
        }
        let granted = message.qos.min(options.qos);
        qos = Some(qos.map_or(granted, |q: QoS| q.max(granted)));
        retain |= options.retain_as_published && message.retain;
        subscription_ids.extend(m.subscriber.id);
    }
    Some(Delivery { message: message.clone(), qos: qos?, retain, subscription_ids })
}

/// Splits a filter as subscribed into its shared-subscription group, if any, and the filter proper.
fn split_shared(filter: &str) -> (Option<&str>, &str) {
    match topic::parse_shared(filter) {
        Some(Ok(SharedFilter { group, filter })) => (Some(group), filter),
        _ => (None, filter),
    }
}

/// Makes a client identifier usable as one topic level: `/`, `+`, `#` and `%` are percent-encoded.
pub(super) fn escape_level(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for c in id.chars() {
        match c {
            '/' => out.push_str("%2F"),
            '+' => out.push_str("%2B"),
            '#' => out.push_str("%23"),
            '%' => out.push_str("%25"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filters_literal_prefix_starts_every_topic_it_matches() {
        for (filter, prefix) in [
            ("a/b/#", "a/b"),
            ("a/+/c", "a"),
            ("a/b", "a/b"),
            ("#", ""),
            ("+/x", ""),
            ("$SYS/#", "$SYS"),
            ("a//#", "a/"),
            ("/#", ""),
        ] {
            assert_eq!(literal_prefix(filter), prefix, "{filter}");
        }
    }

    #[test]
    fn client_ids_are_escaped_into_one_topic_level() {
        assert_eq!(escape_level("plant/line+1#%"), "plant%2Fline%2B1%23%25");
        assert_eq!(escape_level("sensor-7"), "sensor-7");
    }
}
