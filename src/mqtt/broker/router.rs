//! The router task: the single owner of sessions, subscriptions and retained messages.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use super::control::ControlSender;
use super::message::{ClientId, Delivery, Message};
use super::metrics::Metrics;
use super::queue::{Pushed, QueueLimits, SessionQueue, SpillHook, StoreHook};
use super::subscriptions::{Matched, Subscriber, SubscriptionTree};
use super::{
    Authorizer, BrokerStats, Command, ConnectOutcome, ConnectRequest, ConnectionId, Control,
    DisconnectNotice, DisconnectReason, LinkError, Principal, Restored, SessionRecord, Shared,
    SubscribeRequest, Will,
};
use crate::mqtt::codec::topic::{self, SharedFilter};
use crate::mqtt::codec::{QoS, ReasonCode, RetainHandling};

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
    shutting_down: bool,
    last_sys: Instant,
    /// Rate limit for the "queue full" warning: once per interval, with the count since the last one.
    last_drop_warning: Option<Instant>,
    drops_since_warning: u64,
    /// The last queue generation handed out (see [`SpillHook::generation`]).
    last_generation: u64,
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
    principal: Option<Arc<Principal>>,
}

struct Attached {
    id: ConnectionId,
    control: ControlSender,
    /// Boxed: a `Will` is ~140 bytes and most clients have none (see `Session::pending_will`).
    will: Option<Box<Will>>,
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
            shutting_down: false,
            last_sys: Instant::now(),
            last_retained_purge: Instant::now(),
            last_drop_warning: None,
            drops_since_warning: 0,
            last_generation: 0,
        };
        let count = restored.sessions.len();
        for record in restored.sessions {
            router.restore(record);
        }
        if count > 0 {
            tracing::info!(count, "persistent sessions restored");
        }
        router
    }

    /// Puts back a persistent session the store kept: offline, its expiry counting from when it went offline
    /// (or from now, if its client was connected when the gateway stopped), its subscriptions in the tree, and
    /// its will pending if the gateway stopped while the client was connected or a delayed will was waiting.
    fn restore(&mut self, record: SessionRecord) {
        let now = Instant::now();
        let now_ms = unix_millis();
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
        let principal = Arc::new(Principal {
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
        let now_ms = unix_millis();
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

    pub(super) async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
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
            }
        }
        tracing::debug!("router stopped");
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Publish(message) => self.route(message).await,
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
            Command::DisconnectUser(username) => {
                for session in self.sessions.values() {
                    let theirs =
                        session.principal.as_ref().is_some_and(|p| p.username.as_deref() == Some(&username));
                    if let (true, Some(attached)) = (theirs, &session.connection) {
                        attached.control.send(Control::Disconnect(ReasonCode::ADMINISTRATIVE_ACTION));
                    }
                }
            }
            Command::Shutdown(reply) => {
                self.shutting_down = true;
                for session in self.sessions.values() {
                    if let Some(attached) = &session.connection {
                        attached.control.send(Control::Disconnect(ReasonCode::SERVER_SHUTTING_DOWN));
                    }
                }
                let _ = reply.send(());
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
            if let Some(will) = old.will
                && (request.clean_start || will.delay == 0)
            {
                self.publish_will(will.message).await;
            }
            self.publish_presence(&id, "lost", Some("session taken over")).await;
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
        session.connection = Some(Attached {
            id: request.connection,
            control: request.control,
            will: request.will.map(Box::new),
        });
        session.expiry = expiry;
        session.disconnected_at = None;
        session.queue.set_online(true);
        let queue = session.queue.clone();
        tracing::debug!(client = %id, resume, ?now, "session attached");
        self.persist(&id);
        self.publish_presence(&id, "online", None).await;
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
        let (state, reason) = match &notice.reason {
            DisconnectReason::Normal | DisconnectReason::NormalWithWill => ("offline", None),
            DisconnectReason::Lost(reason) => ("lost", Some(reason.as_str())),
        };
        self.publish_presence(&id, state, reason).await;
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
            if send_retained {
                retained_for.push((filter.to_owned(), subscriber));
            }
        }
        let queue = session.queue.clone();
        for (filter, subscriber) in retained_for {
            self.send_retained(&queue, &filter, &subscriber);
        }
        reasons
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
        tracing::debug!(topic = %message.topic, "publishing will");
        let message = Arc::new(message);
        if let Some(durable) = &self.shared.durable {
            durable.record_nowait(&message);
        }
        self.route(message).await;
    }

    /// Publishes a client's presence as a retained message on `$SYS/weir/clients/<id>/presence`.
    async fn publish_presence(&mut self, client: &ClientId, state: &str, reason: Option<&str>) {
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let payload = serde_json::json!({ "state": state, "reason": reason, "ts": ts }).to_string();
        let topic = format!("$SYS/weir/clients/{}/presence", escape_level(client.as_str()));
        self.route(Arc::new(Message::new(&topic, payload, QoS::AtLeastOnce, true))).await;
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

    fn stats(&self) -> BrokerStats {
        BrokerStats {
            clients_connected: self.sessions.values().filter(|s| s.connection.is_some()).count(),
            sessions: self.sessions.values().filter(|s| !s.is_link).count(),
            subscriptions: self.subscriptions.len(),
            retained: self.retained.len(),
        }
    }
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

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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
