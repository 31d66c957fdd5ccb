//! The broker core. One task, the router, owns every session, the subscription tree and the retained messages;
//! connection tasks and in-process links talk to it through a bounded channel of [`Command`]s, and it reaches
//! them back through each session's [`SessionQueue`] and a small control channel. Nothing here does network I/O.
//!
//! Why one owner and not a shared, locked map: every publish has to see a consistent view of subscriptions,
//! sessions and retained messages at once, and session takeover, expiry and wills are all decisions across
//! several of them. One task makes each of those decisions atomic without lock ordering rules, and the bounded
//! channel in front of it gives publishers backpressure for free.

mod arrival;
mod control;
mod link;
mod message;
mod metrics;
mod presence;
mod queue;
mod router;
mod sparkplug;
mod subscriptions;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use arrival::Arrival;
pub use control::{ControlReceiver, ControlSender, control_channel};
pub use link::{Link, LinkError, LinkOptions};
pub use message::{ClientId, Delivery, Message, MessageProperties};
pub use metrics::Metrics;
pub use presence::{
    ClientMatch, GATEWAY_RESTART, PresenceChange, PresenceEvent, PresenceRecord, PresenceRule, PresenceState,
    expand as expand_template, glob,
};
pub use queue::{
    InflightState, Outgoing, Pushed, QueueLimits, QueueStats, SessionQueue, SpillHook, StoreHook,
};
pub use sparkplug::reserved_topic;

use crate::auth::Identity;
use crate::mqtt::codec::{ProtocolVersion, ReasonCode, SubscribeFilter};
use crate::shutdown::StopToken;

/// The broker's protocol limits and policies. Built from the configuration file by `config`.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Largest packet accepted from a client, in bytes; announced in the v5 CONNACK.
    pub max_packet_size: u32,
    /// QoS 1/2 messages a client may have unacknowledged towards us; announced in the v5 CONNACK.
    pub receive_maximum: u16,
    /// QoS 1/2 messages in flight towards a 3.1.1 client, which has no way to say (a 5.0 client's own receive
    /// maximum applies to it).
    pub max_inflight: u16,
    pub topic_alias_maximum: u16,
    /// Most topic aliases the gateway assigns on deliveries to one v5 client (never more than the client's own
    /// Topic Alias Maximum); 0 assigns none.
    pub server_topic_aliases: u16,
    /// When set, overrides the keep alive clients ask for (v5 "server keep alive").
    pub server_keep_alive: Option<u16>,
    /// Upper bound on a session's expiry interval in seconds; `None` lets clients choose, including "never".
    pub max_session_expiry: Option<u32>,
    /// Per session: QoS 1/2 messages waiting beyond the in-flight window.
    pub max_queued_messages: usize,
    /// Per connection: QoS 0 messages waiting to be written before new ones are dropped.
    pub max_queued_qos0: usize,
    /// How often `$SYS/broker/...` is published; `None` turns it off.
    pub sys_interval: Option<Duration>,
}

impl BrokerConfig {
    pub fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            max_queued: self.max_queued_messages,
            max_queued_qos0: self.max_queued_qos0,
            lossless: false,
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> BrokerConfig {
        BrokerConfig {
            max_packet_size: 1024 * 1024,
            receive_maximum: 100,
            max_inflight: 100,
            topic_alias_maximum: 64,
            server_topic_aliases: 64,
            server_keep_alive: None,
            max_session_expiry: None,
            max_queued_messages: 10_000,
            max_queued_qos0: 1_000,
            sys_interval: Some(Duration::from_secs(10)),
        }
    }
}

/// A handle to the running broker: cheap to clone, one per connection task or link.
#[derive(Debug, Clone)]
pub struct Broker {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: BrokerConfig,
    durable: Option<Arc<dyn Durable>>,
    authorizer: Option<Arc<dyn Authorizer>>,
    metrics: Metrics,
    started: Instant,
    next_connection: AtomicU64,
    /// The configured birth and death messages, replaced whole when the configuration changes; the router clones
    /// the `Arc` (never held across `.await`).
    presence_rules: std::sync::RwLock<Arc<Vec<PresenceRule>>>,
}

/// Where accepted messages are made durable before they are acknowledged: the store's journal implements it.
/// A trait so that the broker core does not depend on the store.
pub trait Durable: Send + Sync + std::fmt::Debug {
    /// Records a message (QoS 1/2); waits while the store is behind, then returns a receiver that resolves
    /// once the message is durable, or with the reason it was refused.
    fn record<'a>(
        &'a self,
        message: &'a Arc<Message>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Completion> + Send + 'a>>;
    /// Records a message (QoS 0, wills, in-process publishes) without waiting; the store counts what it drops.
    fn record_nowait(&self, message: &Arc<Message>);
    /// True while the store refuses messages (disk full): QoS 1 then waits for its commit before it is routed,
    /// so that a refused message is not delivered either.
    fn refusing(&self) -> bool;
    /// Saves a persistent session's state (not its subscriptions), in order with everything else recorded.
    fn save_session(&self, session: &SessionRecord);
    fn remove_session(&self, client: &ClientId);
    fn save_subscription(&self, client: &ClientId, filter: &SubscribeFilter, id: Option<u32>);
    fn remove_subscription(&self, client: &ClientId, filter: &str);
    /// A QoS 1/2 delivery of a journaled message was queued for a persistent session.
    fn queued(&self, client: &ClientId, message_id: i64, delivery: &Delivery);
    /// It went in flight under `packet_id`, or (`released`) its PUBREC came and PUBREL was sent.
    fn in_flight(&self, client: &ClientId, message_id: i64, packet_id: u16, released: bool);
    /// It is done with: acknowledged, expired or discarded.
    fn delivered(&self, client: &ClientId, message_id: i64);
    /// A QoS 1/2 delivery of a journaled message beyond the session's in-memory window: it waits in the store
    /// (for any session, persistent or not) until [`Durable::load_spilled`] reads it back. `generation` tells
    /// this session's queue apart from an earlier one under the same client id.
    fn spill(&self, client: &ClientId, generation: u64, message_id: i64, delivery: &Delivery);
    /// Reads back, oldest first, up to `limit` deliveries spilled by this queue generation before this call
    /// (the request is ordered with every spill made before it). They leave the spilled set: kept as queued
    /// deliveries of a persistent session if `keep`, forgotten otherwise.
    fn load_spilled(
        &self,
        client: &ClientId,
        generation: u64,
        limit: usize,
        keep: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = SpillLoad> + Send + 'static>>;
    /// Forgets every delivery stored for a session that has ended.
    fn discard_queue(&self, client: &ClientId);
    /// A client attached or detached (any session, clean or persistent): the store keeps its last presence, with
    /// the will of a connected client, so that both survive the gateway's own failure, and its history. Never
    /// waits: the change is committed with the store's next batch.
    fn presence(&self, change: &PresenceChange) {
        let _ = change;
    }
}

/// What [`Durable::load_spilled`] read back.
#[derive(Debug, Default)]
pub struct SpillLoad {
    /// In queue order; expired messages and those retention had to remove are left out.
    pub deliveries: Vec<Delivery>,
    /// Spilled entries consumed, including those left out.
    pub consumed: usize,
    /// Entries whose message was gone from the journal (removed at the hard cap): lost, and counted.
    pub missing: usize,
    /// The store could not be read: nothing was consumed, try again later.
    pub failed: bool,
}

/// A persistent session as the store keeps it across restarts.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub client_id: ClientId,
    /// The user the session belongs to, whose access rules keep applying to it.
    pub username: Option<String>,
    /// Seconds; `u32::MAX` never expires.
    pub expiry: u32,
    /// Unix milliseconds when it went offline; `None` while a client is connected.
    pub disconnected_at: Option<i64>,
    /// The will to publish if the connection is lost, or a delayed will waiting to be published.
    pub will: Option<Will>,
    /// Unix milliseconds when a delayed will is due; `None` while connected.
    pub will_due: Option<i64>,
    /// Filled when restoring; saving goes through [`Durable::save_subscription`].
    pub subscriptions: Vec<(SubscribeFilter, Option<u32>)>,
    /// Filled when restoring: the in-flight QoS 1/2 deliveries and the first queued ones, in order.
    pub messages: Vec<RestoredDelivery>,
    /// Filled when restoring: queued deliveries beyond the in-memory window, left in the store (spilled).
    pub spilled: u64,
}

/// A queued or in-flight delivery of a persistent session, as restored from the store.
#[derive(Debug, Clone)]
pub struct RestoredDelivery {
    pub delivery: Delivery,
    /// In flight under this packet identifier; `None` if still queued.
    pub packet_id: Option<u16>,
    /// PUBREC came and PUBREL was sent (QoS 2, second phase).
    pub released: bool,
}

/// What the store hands the broker at start-up.
#[derive(Debug, Default)]
pub struct Restored {
    pub retained: Vec<Message>,
    pub sessions: Vec<SessionRecord>,
    /// Each client's last presence; those still `online` were connected when the gateway stopped.
    pub presence: Vec<PresenceRecord>,
}

/// Decides who may connect: the security service implements it. A trait so that the broker and the network
/// layer do not depend on how users are stored.
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    fn authenticate<'a>(
        &'a self,
        request: AuthRequest<'a>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = AuthDecision> + Send + 'a>>;
}

/// Decides what a connected client may do with topics: the security service implements it. Consulted at every
/// publish, subscribe and delivery, so that rule changes apply to clients already connected.
pub trait Authorizer: Send + Sync + std::fmt::Debug {
    fn can_publish(&self, who: &Identity, topic: &str) -> bool;
    /// False when nothing the filter matches may be read: the subscription is refused.
    fn can_subscribe(&self, who: &Identity, filter: &str) -> bool;
    /// Whether a message on `topic` may be delivered to `who` (checked for every delivery and retained message).
    fn can_read(&self, who: &Identity, topic: &str) -> bool;
    /// The roles of `who` in the rules in force, for birth and death rules that match by role.
    fn roles(&self, who: &Identity) -> Vec<String> {
        let _ = who;
        Vec::new()
    }
}

/// What a CONNECT presents.
#[derive(Debug, Clone, Copy)]
pub struct AuthRequest<'a> {
    pub peer: std::net::IpAddr,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub client_id: &'a str,
    /// The listener accepts clients without credentials.
    pub anonymous_allowed: bool,
    /// The identity of a client certificate the TLS layer verified (chain, validity, revocation): it is the
    /// user name, and no password is needed.
    pub certificate: Option<&'a str>,
    /// With a certificate, the password of the user it names is required as well.
    pub certificate_password: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthDecision {
    /// Connect, as this user (`None`: anonymous).
    Allow { username: Option<String> },
    /// Refuse with this CONNACK reason; the text is for the log and a v5 reason string.
    Deny(ReasonCode, &'static str),
}

/// Resolves when a recorded message is durable.
pub type Completion = oneshot::Receiver<Result<(), Refusal>>;

/// Why the store did not take a message. The publisher is told (v5: 0x97) and keeps its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("storage is full")]
    Full,
    #[error("storage is unavailable")]
    Unavailable,
}

/// The router has stopped: the broker is shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the broker is shutting down")]
pub struct BrokerGone;

/// Sent by the router to a connection it wants closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Close with this reason (v5 DISCONNECT): session taken over, server shutting down, ...
    Disconnect(ReasonCode),
}

/// What a connection asks of the router once CONNECT has been accepted at the protocol level.
#[derive(Debug)]
pub struct ConnectRequest {
    pub client_id: ClientId,
    pub connection: ConnectionId,
    pub clean_start: bool,
    /// Seconds; `u32::MAX` never expires.
    pub session_expiry: u32,
    pub will: Option<Will>,
    pub control: ControlSender,
    pub protocol: ProtocolVersion,
    pub username: Option<String>,
    pub peer: String,
    /// As the connection applies it (the server's, if it overrides the client's).
    pub keep_alive: u16,
    pub principal: Option<Arc<Identity>>,
}

/// A Last Will as stored by the broker until the connection ends.
#[derive(Debug, Clone)]
pub struct Will {
    pub message: Message,
    /// v5 will delay interval, seconds.
    pub delay: u32,
}

#[derive(Debug)]
pub struct ConnectOutcome {
    pub session_present: bool,
    pub queue: Arc<SessionQueue>,
}

/// Identifies one network connection, so that the router can tell a stale notice from a taken-over
/// connection apart from one about the current connection of the same client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId(u64);

/// Why a connection ended, as its connection task saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// DISCONNECT with reason 0x00: no will.
    Normal,
    /// v5 DISCONNECT with reason 0x04: publish the will anyway.
    NormalWithWill,
    /// Anything else: keep alive timeout, socket error, protocol error, takeover, shutdown.
    Lost(String),
}

#[derive(Debug)]
pub struct DisconnectNotice {
    pub client_id: ClientId,
    pub connection: ConnectionId,
    pub reason: DisconnectReason,
    /// A new session expiry interval sent with a v5 DISCONNECT.
    pub session_expiry: Option<u32>,
}

#[derive(Debug)]
pub struct SubscribeRequest {
    pub client_id: ClientId,
    pub filters: Vec<SubscribeFilter>,
    pub subscription_id: Option<u32>,
    /// Whose access rules apply to deliveries on these subscriptions; `None` for in-process links.
    pub principal: Option<Arc<Identity>>,
    /// When the SUBSCRIBE arrived: the publishes routed before it that arrived after it are delivered on the new
    /// subscriptions too (see [`arrival`]).
    pub arrival: Arrival,
}

/// One session as the console lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub client_id: String,
    pub username: Option<String>,
    pub online: bool,
    /// The connection's address, while online.
    pub peer: Option<String>,
    pub protocol: Option<ProtocolVersion>,
    pub keep_alive: Option<u16>,
    /// Unix ms: connected at, or (offline) disconnected at.
    pub since: Option<i64>,
    /// Session expiry, seconds (`u32::MAX`: never).
    pub expiry: u32,
    pub subscriptions: Vec<String>,
    /// QoS 1/2 (and online QoS 0) deliveries waiting in memory, beyond it in the journal, and in flight.
    pub queued: usize,
    pub spilled: u64,
    pub in_flight: usize,
    pub dropped: u64,
}

/// A snapshot of the router's state, for `$SYS`, tests and the console.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerStats {
    pub clients_connected: usize,
    pub sessions: usize,
    pub subscriptions: usize,
    pub retained: usize,
}

#[derive(Debug)]
pub(crate) enum Command {
    Connect(Box<ConnectRequest>, oneshot::Sender<Result<ConnectOutcome, ReasonCode>>),
    Publish(Arc<Message>, Arrival),
    Subscribe(SubscribeRequest, oneshot::Sender<Vec<ReasonCode>>),
    Unsubscribe(ClientId, Vec<String>, oneshot::Sender<Vec<ReasonCode>>),
    Disconnected(Box<DisconnectNotice>),
    OpenLink(ClientId, QueueLimits, oneshot::Sender<Result<Arc<SessionQueue>, LinkError>>),
    CloseLink(ClientId),
    Stats(oneshot::Sender<BrokerStats>),
    Clients(String, usize, oneshot::Sender<Vec<ClientInfo>>),
    Kick(ClientId, oneshot::Sender<bool>),
    DropSession(ClientId, oneshot::Sender<bool>),
    DisconnectUser(String),
}

impl Broker {
    /// Starts the router task. When `stop` fires it tells every connection to close ("server shutting down")
    /// and every in-process link that nothing more will come, and ends once the connections have gone.
    ///
    /// With a `durable` store, QoS 1/2 publishes are acknowledged only once it has them, and everything else
    /// accepted is recorded too.
    /// `restored` seeds the retained messages and persistent sessions the store kept across a restart.
    pub fn start(
        config: BrokerConfig,
        durable: Option<Arc<dyn Durable>>,
        authorizer: Option<Arc<dyn Authorizer>>,
        restored: Restored,
        stop: StopToken,
    ) -> (Broker, JoinHandle<()>) {
        let (commands, receiver) = mpsc::channel(1024);
        let shared = Arc::new(Shared {
            config,
            durable,
            authorizer,
            metrics: Metrics::default(),
            started: Instant::now(),
            next_connection: AtomicU64::new(1),
            presence_rules: std::sync::RwLock::new(Arc::new(Vec::new())),
        });
        let task = tokio::spawn(router::Router::new(receiver, shared.clone(), restored).run(stop));
        (Broker { commands, shared }, task)
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.shared.config
    }

    pub fn authorizer(&self) -> Option<&Arc<dyn Authorizer>> {
        self.shared.authorizer.as_ref()
    }

    pub fn durable(&self) -> Option<&Arc<dyn Durable>> {
        self.shared.durable.as_ref()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    pub fn next_connection_id(&self) -> ConnectionId {
        ConnectionId(self.shared.next_connection.fetch_add(1, Ordering::Relaxed))
    }

    async fn send(&self, command: Command) -> Result<(), BrokerGone> {
        self.commands.send(command).await.map_err(|_| BrokerGone)
    }

    async fn request<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, BrokerGone> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await.map_err(|_| BrokerGone)
    }

    /// Attaches a connection to its session. `Err` carries the CONNACK reason for a refusal.
    pub async fn connect(
        &self,
        request: ConnectRequest,
    ) -> Result<Result<ConnectOutcome, ReasonCode>, BrokerGone> {
        self.request(|tx| Command::Connect(Box::new(request), tx)).await
    }

    /// Routes a message. Returns once the router has it; waits while the router is busy (backpressure).
    pub async fn publish(&self, message: Message) -> Result<(), BrokerGone> {
        self.publish_shared(Arc::new(message)).await
    }

    /// [`Broker::publish`] for a message already shared (for example with the store).
    pub async fn publish_shared(&self, message: Arc<Message>) -> Result<(), BrokerGone> {
        self.send(Command::Publish(message, Arrival::UNKNOWN)).await
    }

    /// [`Broker::publish_shared`] for a message read off the network, with when it arrived there.
    pub async fn publish_arrived(&self, message: Arc<Message>, arrival: Arrival) -> Result<(), BrokerGone> {
        self.send(Command::Publish(message, arrival)).await
    }

    pub async fn subscribe(&self, request: SubscribeRequest) -> Result<Vec<ReasonCode>, BrokerGone> {
        self.request(|tx| Command::Subscribe(request, tx)).await
    }

    pub async fn unsubscribe(
        &self,
        client: ClientId,
        filters: Vec<String>,
    ) -> Result<Vec<ReasonCode>, BrokerGone> {
        self.request(|tx| Command::Unsubscribe(client, filters, tx)).await
    }

    pub async fn disconnected(&self, notice: DisconnectNotice) -> Result<(), BrokerGone> {
        self.send(Command::Disconnected(Box::new(notice))).await
    }

    pub async fn stats(&self) -> Result<BrokerStats, BrokerGone> {
        self.request(Command::Stats).await
    }

    /// Sessions (not links) whose client id or user name contains `search`, at most `limit`.
    pub async fn clients(&self, search: &str, limit: usize) -> Result<Vec<ClientInfo>, BrokerGone> {
        self.request(|tx| Command::Clients(search.to_owned(), limit, tx)).await
    }

    /// Closes a client's connection (v5: DISCONNECT 0x98); false if it is not connected.
    pub async fn kick(&self, client: &str) -> Result<bool, BrokerGone> {
        self.request(|tx| Command::Kick(ClientId::new(client), tx)).await
    }

    /// Ends an offline session and what is queued for it; false if there is none or its client is online.
    pub async fn drop_session(&self, client: &str) -> Result<bool, BrokerGone> {
        self.request(|tx| Command::DropSession(ClientId::new(client), tx)).await
    }

    /// Opens an in-process link: a session that lives inside the process, see [`Link`].
    pub async fn link(&self, name: &str, options: LinkOptions) -> Result<Link, LinkError> {
        Link::open(self.clone(), name, options).await
    }

    /// Closes every connection of this user (v5: DISCONNECT 0x98 administrative action), for a deleted user.
    pub async fn disconnect_user(&self, username: &str) -> Result<(), BrokerGone> {
        self.send(Command::DisconnectUser(username.to_owned())).await
    }

    /// Replaces the configured birth and death messages; they apply to the next connect or disconnect.
    pub fn set_presence_rules(&self, rules: Vec<PresenceRule>) {
        let mut slot = self.shared.presence_rules.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = Arc::new(rules);
    }

    /// The birth and death rules in force.
    pub fn presence_rules(&self) -> Arc<Vec<PresenceRule>> {
        self.shared.presence_rules.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn uptime(&self) -> Duration {
        self.shared.started.elapsed()
    }
}
