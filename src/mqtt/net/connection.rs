//! One client connection: the MQTT protocol state machine between a transport and the broker.
//!
//! The task reads and decodes packets, answers what it can answer alone (PINGREQ, acknowledgements, topic
//! aliases, keep alive), asks the router for the rest, and writes out what the session queue holds for its
//! client. It owns no shared state except through the session queue, so a slow or dead client costs only its own
//! task and its own bounded queue.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::time::timeout;

use super::aliases::{Alias, OutgoingAliases};
use super::transport::Transport;
use super::{CertificateRegistration, ConnectionGuard, ListenerContext};
use crate::auth::Identity;
use crate::mqtt::broker::{
    Arrival, AuthDecision, AuthRequest, Broker, BrokerConfig, ClientId, Completion, ConnectRequest,
    ConnectionId, Control, ControlReceiver, DisconnectNotice, DisconnectReason, InflightState, Message,
    MessageProperties, Metrics, Outgoing, Refusal, SessionQueue, SubscribeRequest, Will, control_channel,
};
use crate::mqtt::codec::{
    self, AckProperties, ConnAck, ConnAckProperties, Connect, DecodeError, Disconnect, DisconnectProperties,
    Packet, ProtocolVersion, PubResp, Publish, PublishProperties, QoS, ReasonCode, SubAck, Subscribe,
    UnsubAck, Unsubscribe, topic,
};
use crate::pki::PeerIdentity;

/// Session expiry interval meaning "never" (MQTT 5.0 §3.1.2.11.2).
const NEVER: u32 = u32::MAX;
/// Deliveries encoded per wake-up before the socket is written: bounds the write buffer and keeps reading fair.
const DRAIN_BATCH: usize = 256;
/// How long one write may stall when no keep alive bounds it.
const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves one accepted connection until it ends.
///
/// Not an `async fn`: its arguments would stay part of the future after they are moved on (for TLS, a second
/// copy of the 1.2 KB stream). The future holds the boxed [`accept`] instead: CONNECT, authentication and the
/// router's answer take more room than the established connection, and the task would otherwise be allocated at
/// the larger of the two for the connection's whole life.
pub(crate) fn serve<T: Transport>(
    transport: T,
    peer: SocketAddr,
    context: Arc<ListenerContext>,
    guard: ConnectionGuard,
    certificate: Option<PeerIdentity>,
) -> impl Future<Output = ()> + Send {
    let accept = Box::pin(accept(transport, peer, context, guard.over_limit, certificate));
    async move {
        // Revoking the certificate closes this connection: registered until the end.
        let Some((mut session, _registration)) = accept.await else { return };
        let (reason, expiry) = session.run().await;
        // Publishes still waiting for the store were never acknowledged: the client sends them again, and a QoS 2
        // retransmission must then count as new.
        for p in session.pending.drain(..) {
            if p.qos == QoS::ExactlyOnce {
                session.queue.release_incoming_qos2(p.packet_id);
            }
        }
        match &reason {
            DisconnectReason::Lost(why) => {
                tracing::info!(peer = %session.peer, client = %session.client_id, "connection lost: {why}")
            }
            _ => tracing::info!(peer = %session.peer, client = %session.client_id, "client disconnected"),
        }
        session.transport.close().await;
        let notice = DisconnectNotice {
            client_id: session.client_id,
            connection: session.connection,
            reason,
            session_expiry: expiry,
        };
        let _ = session.broker.disconnected(notice).await;
        drop(guard);
    }
}

/// CONNECT up to CONNACK: the session, ready to run, or `None` once the connection is refused and closed.
///
/// In order: read the CONNECT (bounded by the connect timeout), check it, authenticate, check the will against
/// the rules, attach to the session in the router, answer CONNACK.
async fn accept<T: Transport>(
    mut transport: T,
    peer: SocketAddr,
    context: Arc<ListenerContext>,
    over_limit: bool,
    certificate: Option<PeerIdentity>,
) -> Option<(Session<T>, Option<CertificateRegistration>)> {
    let broker = context.broker.clone();
    let mut inbuf = BytesMut::new();
    let connect = read_connect(&mut transport, &mut inbuf, peer, &context).await?;
    let refuse = Refuser { peer, context: &context, connect: &connect };
    if over_limit {
        return refuse
            .close(transport, ReasonCode::QUOTA_EXCEEDED, "too many connections (limits.max_connections)")
            .await;
    }
    if let Err((reason, why)) = check_connect(&connect) {
        return refuse.close(transport, reason, why).await;
    }
    let username = match authenticate(&context, &connect, certificate.as_ref(), peer).await {
        AuthDecision::Allow { username } => username,
        AuthDecision::Deny(reason, why) => return refuse.close(transport, reason, why).await,
    };
    let assigned = connect.client_id.is_empty();
    let client_id =
        if assigned { ClientId::new(&generate_client_id()) } else { ClientId::new(&connect.client_id) };
    let principal = Arc::new(Identity { username: username.clone(), client_id: client_id.to_string() });
    // Sparkplug: `$sparkplug/` belongs to the broker, for wills too.
    if connect.will.as_ref().is_some_and(|w| crate::sparkplug::topic::is_reserved(&w.topic)) {
        return refuse.close(transport, ReasonCode::NOT_AUTHORIZED, "the will topic is reserved").await;
    }
    if let (Some(will), Some(authorizer)) = (&connect.will, broker.authorizer())
        && !authorizer.can_publish(&principal, &will.topic)
    {
        return refuse
            .close(transport, ReasonCode::NOT_AUTHORIZED, "not allowed to publish the will topic")
            .await;
    }
    let session_expiry = session_expiry(&connect);
    let (control_tx, control_rx) = control_channel();
    // Revoking the certificate closes this connection.
    let registration = certificate
        .as_ref()
        .map(|c| context.connections.register_certificate(c.serial.as_str(), control_tx.clone()));
    let connection = broker.next_connection_id();
    let request = ConnectRequest {
        client_id: client_id.clone(),
        connection,
        clean_start: connect.clean_start,
        session_expiry,
        will: connect.will.as_ref().map(|w| will_message(w, &client_id)),
        control: control_tx,
        protocol: connect.protocol,
        username: username.clone(),
        peer: peer.to_string(),
        keep_alive: broker.config().server_keep_alive.unwrap_or(connect.keep_alive),
        principal: Some(principal.clone()),
    };
    let outcome = match broker.connect(request).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(reason)) => return refuse.close(transport, reason, "the broker refused the session").await,
        Err(_) => {
            return refuse
                .close(transport, ReasonCode::SERVER_UNAVAILABLE, "the broker is shutting down")
                .await;
        }
    };
    let keep_alive = broker.config().server_keep_alive.unwrap_or(connect.keep_alive);
    tracing::info!(
        %peer, client = %client_id, listener = %context.name, version = ?connect.protocol, keep_alive,
        clean_start = connect.clean_start, session_present = outcome.session_present, "client connected"
    );
    let ack = connack(
        broker.config(),
        &connect,
        outcome.session_present,
        assigned.then_some(&client_id),
        session_expiry,
    );
    let attached =
        Attached { client_id, connection, queue: outcome.queue, control: control_rx, principal, username };
    let mut session = Session::new(transport, peer, broker, &connect, attached, inbuf, session_expiry);
    if session.encode(&Packet::ConnAck(ack)).is_err() {
        return None;
    }
    for outgoing in session.queue.resend() {
        session.encode_outgoing(outgoing);
    }
    Some((session, registration))
}

/// Reads the first packet, which must be a CONNECT, within the connect timeout; otherwise the connection is
/// answered (an unsupported protocol version gets its CONNACK) and closed.
async fn read_connect<T: Transport>(
    transport: &mut T,
    inbuf: &mut BytesMut,
    peer: SocketAddr,
    context: &ListenerContext,
) -> Option<Box<Connect>> {
    let broker = &context.broker;
    let max_packet = broker.config().max_packet_size as usize;
    match timeout(context.connect_timeout, read_packet(transport, inbuf, max_packet, broker)).await {
        Ok(Ok(Packet::Connect(connect))) => return Some(connect),
        Err(_) => {
            tracing::debug!(%peer, listener = %context.name, "no CONNECT within the connect timeout; closing");
        }
        Ok(Err(ReadError::Decode(DecodeError::UnsupportedProtocolVersion(level)))) => {
            tracing::info!(%peer, level, "refused: unsupported protocol version");
            let ack = ConnAck { reason: ReasonCode::UNSUPPORTED_PROTOCOL_VERSION, ..ConnAck::default() };
            send_and_close(transport, Packet::ConnAck(ack), ProtocolVersion::V3_1_1).await;
            return None;
        }
        Ok(Err(e)) => tracing::info!(%peer, "closed before CONNECT: {e}"),
        Ok(Ok(other)) => {
            tracing::info!(%peer, "protocol error: first packet was {} instead of CONNECT", other.name());
            Metrics::add(&broker.metrics().protocol_errors, 1);
        }
    }
    transport.close().await;
    None
}

/// Refuses a CONNECT: logs and counts it, answers CONNACK with the reason (and, for a v5 client that did not
/// decline problem information, the reason string) and closes the connection.
struct Refuser<'a> {
    peer: SocketAddr,
    context: &'a ListenerContext,
    connect: &'a Connect,
}

impl Refuser<'_> {
    async fn close<T: Transport, S>(&self, mut transport: T, reason: ReasonCode, why: &str) -> Option<S> {
        let (peer, connect) = (self.peer, self.connect);
        tracing::info!(%peer, client = %connect.client_id, listener = %self.context.name, "connection refused: {why}");
        Metrics::add(&self.context.broker.metrics().connections_refused, 1);
        let mut ack = ConnAck { reason, ..ConnAck::default() };
        if connect.protocol.is_v5() && connect.properties.request_problem_information != Some(false) {
            ack.properties.reason_string = Some(why.to_owned());
        }
        send_and_close(&mut transport, Packet::ConnAck(ack), connect.protocol).await;
        None
    }
}

/// Who the client is: the security service decides; without one (tests), a certificate names the user and
/// anonymous clients are admitted where the listener allows them.
async fn authenticate(
    context: &ListenerContext,
    connect: &Connect,
    certificate: Option<&PeerIdentity>,
    peer: SocketAddr,
) -> AuthDecision {
    let request = AuthRequest {
        peer: peer.ip(),
        username: connect.username.as_deref(),
        password: connect.password.as_deref(),
        client_id: &connect.client_id,
        anonymous_allowed: context.allow_anonymous,
        certificate: certificate.map(|c| c.name.as_str()),
        certificate_password: context.certificate_password,
    };
    match (&context.authenticator, certificate) {
        (Some(authenticator), _) => authenticator.authenticate(request).await,
        (None, Some(c)) => AuthDecision::Allow { username: Some(c.name.clone()) },
        (None, None) if context.allow_anonymous => AuthDecision::Allow { username: connect.username.clone() },
        (None, None) => {
            AuthDecision::Deny(ReasonCode::NOT_AUTHORIZED, "anonymous access is not allowed on this listener")
        }
    }
}

/// The session expiry the client asked for: v5 says so; for 3.1.1, clean session means 0 and otherwise never.
fn session_expiry(connect: &Connect) -> u32 {
    if connect.protocol.is_v5() {
        connect.properties.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        NEVER
    }
}

/// The CONNACK of an accepted connection; for v5, with the limits the broker announces.
fn connack(
    config: &BrokerConfig,
    connect: &Connect,
    session_present: bool,
    assigned: Option<&ClientId>,
    session_expiry: u32,
) -> ConnAck {
    let mut ack = ConnAck { session_present, ..ConnAck::default() };
    if connect.protocol.is_v5() {
        ack.properties = ConnAckProperties {
            receive_maximum: Some(config.receive_maximum),
            maximum_packet_size: Some(config.max_packet_size),
            topic_alias_maximum: Some(config.topic_alias_maximum),
            assigned_client_identifier: assigned.map(ToString::to_string),
            server_keep_alive: config.server_keep_alive,
            session_expiry_interval: config.max_session_expiry.filter(|&max| max < session_expiry),
            response_information: (connect.properties.request_response_information == Some(true))
                .then(|| format!("weir/response/{}", connect.client_id)),
            ..ConnAckProperties::default()
        };
    }
    ack
}

/// What the router gave an accepted connection, with who it acts for.
struct Attached {
    client_id: ClientId,
    connection: ConnectionId,
    queue: Arc<SessionQueue>,
    control: ControlReceiver,
    principal: Arc<Identity>,
    username: Option<String>,
}

/// A CONNECT the protocol layer accepted can still be refused here; the error carries the CONNACK reason and
/// a reason string for the log (and for a v5 client that asked for problem information).
fn check_connect(connect: &Connect) -> Result<(), (ReasonCode, &'static str)> {
    if connect.properties.authentication_method.is_some() {
        return Err((ReasonCode::BAD_AUTHENTICATION_METHOD, "enhanced authentication is not supported"));
    }
    if connect.client_id.is_empty() && !connect.clean_start && !connect.protocol.is_v5() {
        return Err((ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, "an empty client id needs clean session"));
    }
    if connect.client_id.starts_with("link:") {
        return Err((ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, "client ids starting with link: are reserved"));
    }
    if let Some(will) = &connect.will
        && !topic::valid_topic_name(&will.topic)
    {
        return Err((ReasonCode::TOPIC_NAME_INVALID, "invalid will topic"));
    }
    Ok(())
}

fn will_message(will: &codec::Will, client: &ClientId) -> Will {
    let p = &will.properties;
    let properties = MessageProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.as_deref().map(Bytes::copy_from_slice),
        user_properties: p.user_properties.clone(),
    };
    // Copied out of the CONNECT's read buffer, which it would otherwise keep for the session's life.
    let mut message = Message::new(&will.topic, Bytes::copy_from_slice(&will.payload), will.qos, will.retain);
    message.origin = Some(client.clone());
    message.properties = properties.boxed();
    Will { message, delay: p.will_delay_interval.unwrap_or(0) }
}

/// A client identifier for a client that sent none: unique per process run and hard to guess.
fn generate_client_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("weir-{:016x}", hasher.finish())
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("connection closed")]
    Closed,
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Reads until one whole packet is buffered. Only used for CONNECT, whose version decides the rest.
async fn read_packet<T: Transport>(
    transport: &mut T,
    buf: &mut BytesMut,
    max_packet: usize,
    broker: &Broker,
) -> Result<Packet, ReadError> {
    loop {
        if let Some(packet) = codec::decode(buf, ProtocolVersion::V5, max_packet)? {
            return Ok(packet);
        }
        let n = transport.read(buf).await?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        Metrics::add(&broker.metrics().bytes_received, n as u64);
    }
}

async fn send_and_close<T: Transport>(transport: &mut T, packet: Packet, version: ProtocolVersion) {
    let mut buf = BytesMut::new();
    if codec::encode(&packet, version, &mut buf).is_ok() {
        let _ = timeout(Duration::from_secs(5), transport.write(&mut buf)).await;
    }
    transport.close().await;
}

/// What handling one packet leads to.
enum Flow {
    Continue,
    /// End the connection; the session expiry is the one a v5 DISCONNECT set, if any.
    End(DisconnectReason, Option<u32>),
}

/// The state of an established connection.
struct Session<T> {
    transport: T,
    peer: SocketAddr,
    broker: Broker,
    client_id: ClientId,
    connection: ConnectionId,
    version: ProtocolVersion,
    queue: Arc<SessionQueue>,
    control: ControlReceiver,
    inbuf: BytesMut,
    outbuf: BytesMut,
    /// 1.5 times the negotiated keep alive; `None` when keep alive is 0.
    keep_alive: Option<Duration>,
    /// The client's receive maximum: how many QoS 1/2 messages may be in flight to it.
    send_quota: usize,
    /// The client's maximum packet size: larger messages are not sent to it.
    client_max_packet: usize,
    max_packet: usize,
    /// Topic aliases the client set up, on what it sends.
    aliases: HashMap<u16, Arc<str>>,
    /// Topic aliases we assign on what we send (v5 clients that allow them); boxed, as most clients have none.
    out_aliases: Option<Box<OutgoingAliases>>,
    /// Whether a v5 client wants reason strings on acknowledgements.
    problem_information: bool,
    session_expiry: u32,
    /// Reused buffer of deliveries taken from the queue.
    outgoing: Vec<Outgoing>,
    username: Option<Arc<str>>,
    /// Who this connection acts for, in access decisions.
    principal: Arc<Identity>,
    /// QoS 1/2 publishes waiting for the store, in arrival order: each is acknowledged (and QoS 2 routed) when its
    /// group commit completes. While this is full the socket is not read (backpressure on the publisher).
    pending: VecDeque<PendingPublish>,
    /// QoS 1 publishes in `pending` that were not routed on receipt.
    held_qos1: usize,
}

/// A QoS 1/2 publish handed to the store and not yet acknowledged.
struct PendingPublish {
    message: Arc<Message>,
    packet_id: u16,
    qos: QoS,
    completion: Completion,
    /// Already routed (QoS 1): the commit only acknowledges it.
    routed: bool,
    arrival: Arrival,
}

impl<T: Transport> Session<T> {
    fn new(
        transport: T,
        peer: SocketAddr,
        broker: Broker,
        connect: &Connect,
        attached: Attached,
        inbuf: BytesMut,
        session_expiry: u32,
    ) -> Session<T> {
        let version = connect.protocol;
        let config = broker.config();
        let keep_alive = config.server_keep_alive.unwrap_or(connect.keep_alive);
        let send_quota = usize::from(if version.is_v5() {
            connect.properties.receive_maximum.unwrap_or(u16::MAX)
        } else {
            config.max_inflight
        });
        let max_packet = config.max_packet_size as usize;
        let out_aliases = OutgoingAliases::new(
            connect.properties.topic_alias_maximum.filter(|_| version.is_v5()).unwrap_or(0),
            config.server_topic_aliases,
        )
        .map(Box::new);
        Session {
            transport,
            peer,
            broker,
            client_id: attached.client_id,
            connection: attached.connection,
            version,
            queue: attached.queue,
            control: attached.control,
            inbuf,
            outbuf: BytesMut::new(),
            keep_alive: (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500)),
            send_quota,
            client_max_packet: connect.properties.maximum_packet_size.map_or(usize::MAX, |m| m as usize),
            max_packet,
            aliases: HashMap::new(),
            out_aliases,
            problem_information: connect.properties.request_problem_information != Some(false),
            session_expiry,
            outgoing: Vec::new(),
            username: attached.username.as_deref().map(Arc::from),
            pending: VecDeque::new(),
            held_qos1: 0,
            principal: attached.principal,
        }
    }

    async fn run(&mut self) -> (DisconnectReason, Option<u32>) {
        let mut last_read = Instant::now();
        self.queue.wake();
        loop {
            if !self.outbuf.is_empty()
                && let Err(reason) = self.flush().await
            {
                return (reason, None);
            }
            let deadline = self.keep_alive.map(|k| tokio::time::Instant::from_std(last_read + k));
            let can_read = self.pending.len() < usize::from(self.broker.config().receive_maximum);
            tokio::select! {
                control = self.control.recv() => {
                    let code = match control {
                        Some(Control::Disconnect(code)) => code,
                        None => ReasonCode::SERVER_SHUTTING_DOWN,
                    };
                    self.send_disconnect(code, None).await;
                    return (DisconnectReason::Lost(describe(code).to_owned()), None);
                }
                done = next_completion(&mut self.pending) => {
                    if let Flow::End(reason, expiry) = self.on_durable(done).await {
                        let _ = self.flush().await;
                        return (reason, expiry);
                    }
                }
                read = self.transport.read(&mut self.inbuf), if can_read => {
                    match read {
                        Ok(0) => return (DisconnectReason::Lost("connection closed by the client".into()), None),
                        Ok(n) => {
                            Metrics::add(&self.broker.metrics().bytes_received, n as u64);
                            last_read = Instant::now();
                        }
                        Err(e) => return (DisconnectReason::Lost(format!("read failed: {e}")), None),
                    }
                    // Boxed: handling a read's packets is the largest state of the connection's future (TCP: 2,176
                    // bytes with it inline, 1,144 boxed) and lives only while they are handled; inline, every idle
                    // connection would carry room for it (docs/BENCHMARKS.md, "Memory per connection").
                    if let Flow::End(reason, expiry) = Box::pin(self.handle_input()).await {
                        // Write what is buffered (acknowledgements, a DISCONNECT) before closing.
                        let _ = self.flush().await;
                        return (reason, expiry);
                    }
                    if !self.pending.is_empty() {
                        // Our answers wait for the journal: the client must not wait for our TCP ACK too.
                        self.transport.ack_read();
                    }
                }
                () = self.queue.ready() => self.drain(),
                () = sleep_until(deadline) => {
                    self.send_disconnect(ReasonCode::KEEP_ALIVE_TIMEOUT, None).await;
                    return (DisconnectReason::Lost("keep alive timeout".into()), None);
                }
            }
        }
    }

    /// Decodes and handles every complete packet in the input buffer.
    async fn handle_input(&mut self) -> Flow {
        loop {
            let packet = match codec::decode(&mut self.inbuf, self.version, self.max_packet) {
                Ok(Some(packet)) => packet,
                Ok(None) => return Flow::Continue,
                Err(e) => {
                    Metrics::add(&self.broker.metrics().protocol_errors, 1);
                    let reason = e.reason_code();
                    tracing::info!(peer = %self.peer, client = %self.client_id, "bad packet: {e}");
                    self.queue_disconnect(reason, Some(&e.to_string()));
                    return Flow::End(DisconnectReason::Lost(format!("bad packet: {e}")), None);
                }
            };
            if let Flow::End(reason, expiry) = self.handle(packet).await {
                return Flow::End(reason, expiry);
            }
        }
    }

    async fn handle(&mut self, packet: Packet) -> Flow {
        match packet {
            Packet::Publish(publish) => return self.on_publish(publish).await,
            Packet::PubAck(ack) => {
                self.queue.complete(ack.packet_id, InflightState::Published);
            }
            Packet::PubRec(rec) => {
                if rec.reason.is_error() {
                    self.queue.complete(rec.packet_id, InflightState::Published);
                } else {
                    let mut rel = PubResp::new(rec.packet_id);
                    if !self.queue.received(rec.packet_id) {
                        rel.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                    }
                    self.encode_or_log(&Packet::PubRel(rel));
                }
            }
            Packet::PubRel(rel) => {
                let mut comp = PubResp::new(rel.packet_id);
                if !self.queue.release_incoming_qos2(rel.packet_id) {
                    comp.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                }
                self.encode_or_log(&Packet::PubComp(comp));
            }
            Packet::PubComp(comp) => {
                self.queue.complete(comp.packet_id, InflightState::Released);
            }
            Packet::Subscribe(subscribe) => return self.on_subscribe(subscribe).await,
            Packet::Unsubscribe(unsubscribe) => return self.on_unsubscribe(unsubscribe).await,
            Packet::PingReq => self.encode_or_log(&Packet::PingResp),
            Packet::Disconnect(disconnect) => return self.on_disconnect(disconnect),
            Packet::Auth(_) => {
                return self
                    .protocol_error(ReasonCode::PROTOCOL_ERROR, "AUTH without enhanced authentication");
            }
            other => {
                let why = format!("unexpected {} from a client", other.name());
                return self.protocol_error(ReasonCode::PROTOCOL_ERROR, &why);
            }
        }
        Flow::Continue
    }

    async fn on_publish(&mut self, publish: Publish) -> Flow {
        let topic = match self.resolve_topic(&publish) {
            Ok(topic) => topic,
            Err((code, why)) => return self.protocol_error(code, why),
        };
        let packet_id = publish.packet_id.unwrap_or(0);
        if publish.qos == QoS::ExactlyOnce {
            if !self.queue.begin_incoming_qos2(packet_id) {
                // A retransmission of a message we already have: acknowledge again, do not route twice.
                self.encode_or_log(&Packet::PubRec(PubResp::new(packet_id)));
                return Flow::Continue;
            }
            // Only a v5 client knows our receive maximum; for 3.1.1 the packet id space (65,535) is the bound.
            if self.version.is_v5()
                && self.queue.incoming_qos2_len() > usize::from(self.broker.config().receive_maximum)
            {
                return self.protocol_error(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED, "receive maximum exceeded");
            }
        }
        Metrics::add(&self.broker.metrics().messages_received, 1);
        let allowed = !crate::mqtt::broker::reserved_topic(&topic)
            && self.broker.authorizer().is_none_or(|a| a.can_publish(&self.principal, &topic));
        if !allowed {
            // 3.1.1 has no way to say no: the message is acknowledged as usual and dropped (MQTT-3.3.5-2).
            tracing::info!(peer = %self.peer, client = %self.client_id, %topic, "publish not authorized: dropped");
            self.ack_publish(&publish, ReasonCode::NOT_AUTHORIZED);
            return Flow::Continue;
        }
        let p = publish.properties;
        let properties = MessageProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data.as_deref().map(Bytes::copy_from_slice),
            user_properties: p.user_properties,
        };
        let message = Arc::new(Message {
            topic,
            // Its own bytes, not a slice of the read buffer: a message can live long (retained, queued for an
            // offline session, waiting for the journal), and a slice would keep the whole buffer it arrived in
            // (2-16 KiB) alive with it.
            payload: Bytes::copy_from_slice(&publish.payload),
            qos: publish.qos,
            retain: publish.retain,
            origin: Some(self.client_id.clone()),
            username: self.username.clone(),
            received: Instant::now(),
            properties: properties.boxed(),
            journal_id: std::sync::OnceLock::new(),
        });
        let durable = self.broker.durable().cloned();
        let arrival = self.transport.arrival();
        match (publish.qos, durable) {
            (QoS::AtMostOnce, durable) => {
                if let Some(durable) = durable {
                    durable.record_nowait(&message);
                }
                self.route(message, arrival).await
            }
            (qos, None) => self.route_and_ack(message, arrival, packet_id, qos).await,
            (qos, Some(durable)) => {
                // Acknowledged only once the store has it: see `on_durable`. QoS 1 is routed at once, in the
                // order received: subscribers do not wait for the disk. If the gateway dies before the commit the
                // publisher, not acknowledged, sends it again: a duplicate, which QoS 1 allows. QoS 2 is routed
                // only after the commit, since exactly once must hold across a crash too; so is QoS 1 while the
                // store refuses messages (disk full), so that what is refused is not delivered either.
                let completion = durable.record(&message).await;
                // A QoS 1 message held back (the store was refusing) keeps those after it back too: in order.
                let routed = qos == QoS::AtLeastOnce && !durable.refusing() && self.held_qos1 == 0;
                if routed && let Flow::End(reason, expiry) = self.route(message.clone(), arrival).await {
                    return Flow::End(reason, expiry);
                }
                if qos == QoS::AtLeastOnce && !routed {
                    self.held_qos1 += 1;
                }
                self.pending.push_back(PendingPublish {
                    message,
                    packet_id,
                    qos,
                    completion,
                    routed,
                    arrival,
                });
                Flow::Continue
            }
        }
    }

    async fn route(&mut self, message: Arc<Message>, arrival: Arrival) -> Flow {
        match self.broker.publish_arrived(message, arrival).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::End(DisconnectReason::Lost("the broker is shutting down".into()), None),
        }
    }

    async fn route_and_ack(
        &mut self,
        message: Arc<Message>,
        arrival: Arrival,
        packet_id: u16,
        qos: QoS,
    ) -> Flow {
        if let Flow::End(reason, expiry) = self.route(message, arrival).await {
            return Flow::End(reason, expiry);
        }
        self.ack(packet_id, qos);
        Flow::Continue
    }

    /// PUBACK or PUBREC: the message is taken.
    fn ack(&mut self, packet_id: u16, qos: QoS) {
        let ack = PubResp::new(packet_id);
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.encode_or_log(&Packet::PubAck(ack)),
            QoS::ExactlyOnce => self.encode_or_log(&Packet::PubRec(ack)),
        }
    }

    /// The store finished with the oldest pending publish (and maybe more): route what was held back and
    /// acknowledge what it took, refuse what it did not (a QoS 1 message may have been routed already). v5 clients
    /// get 0x97 and keep their message; 3.1.1 has no way to refuse, so the connection is closed without an
    /// acknowledgement and the client sends the message again later.
    async fn on_durable(&mut self, first: Result<(), Refusal>) -> Flow {
        let mut result = first;
        while let Some(p) = self.pending.pop_front() {
            if p.qos == QoS::AtLeastOnce && !p.routed {
                self.held_qos1 = self.held_qos1.saturating_sub(1);
            }
            match result {
                Ok(()) if p.routed => self.ack(p.packet_id, p.qos),
                Ok(()) => {
                    if let Flow::End(reason, expiry) =
                        self.route_and_ack(p.message, p.arrival, p.packet_id, p.qos).await
                    {
                        return Flow::End(reason, expiry);
                    }
                }
                Err(refusal) => {
                    tracing::warn!(client = %self.client_id, topic = %p.message.topic, "publish refused: {refusal}");
                    if p.qos == QoS::ExactlyOnce {
                        // Not taken: a retransmission must be treated as new, not as a duplicate.
                        self.queue.release_incoming_qos2(p.packet_id);
                    }
                    if !self.version.is_v5() {
                        return Flow::End(
                            DisconnectReason::Lost(format!("publish refused: {refusal}")),
                            None,
                        );
                    }
                    let code = match refusal {
                        Refusal::Full => ReasonCode::QUOTA_EXCEEDED,
                        Refusal::Unavailable => ReasonCode::UNSPECIFIED_ERROR,
                    };
                    let publish = Publish { qos: p.qos, packet_id: Some(p.packet_id), ..Publish::default() };
                    self.ack_publish(&publish, code);
                }
            }
            let Some(next) = self.pending.front_mut() else { break };
            result = match next.completion.try_recv() {
                Ok(r) => r,
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => break,
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => Err(Refusal::Unavailable),
            };
        }
        Flow::Continue
    }

    /// Acknowledges a publish that was not routed: v5 with a reason code; 3.1.1 has no way to say no, so QoS 1/2
    /// are acknowledged as the specification says for an unauthorised publish.
    fn ack_publish(&mut self, publish: &Publish, reason: ReasonCode) {
        let Some(packet_id) = publish.packet_id else { return };
        let mut ack = PubResp::new(packet_id);
        if self.version.is_v5() {
            ack.reason = reason;
            if self.problem_information {
                ack.properties.reason_string = Some(describe(reason).to_owned());
            }
            if publish.qos == QoS::ExactlyOnce {
                // A failed PUBREC ends the exchange: forget the identifier.
                self.queue.release_incoming_qos2(packet_id);
            }
        }
        let packet = if publish.qos == QoS::AtLeastOnce { Packet::PubAck(ack) } else { Packet::PubRec(ack) };
        self.encode_or_log(&packet);
    }

    /// Applies topic aliases (MQTT 5.0 §3.3.2.3.4): an alias with a topic sets it, an alias alone uses it.
    fn resolve_topic(&mut self, publish: &Publish) -> Result<Arc<str>, (ReasonCode, &'static str)> {
        let Some(alias) = publish.properties.topic_alias else {
            if publish.topic.is_empty() {
                return Err((ReasonCode::PROTOCOL_ERROR, "empty topic without a topic alias"));
            }
            return Ok(Arc::from(publish.topic.as_str()));
        };
        if alias == 0 || alias > self.broker.config().topic_alias_maximum {
            return Err((ReasonCode::TOPIC_ALIAS_INVALID, "topic alias out of range"));
        }
        if publish.topic.is_empty() {
            return self
                .aliases
                .get(&alias)
                .cloned()
                .ok_or((ReasonCode::PROTOCOL_ERROR, "unknown topic alias"));
        }
        let topic: Arc<str> = Arc::from(publish.topic.as_str());
        self.aliases.insert(alias, topic.clone());
        Ok(topic)
    }

    async fn on_subscribe(&mut self, subscribe: Subscribe) -> Flow {
        if let Some(filter) = subscribe
            .filters
            .iter()
            .find(|f| f.options.no_local && matches!(topic::parse_shared(&f.filter), Some(Ok(_))))
        {
            tracing::debug!(filter = %filter.filter, "no local on a shared subscription");
            return self.protocol_error(ReasonCode::PROTOCOL_ERROR, "no local on a shared subscription");
        }
        // Filters the client may not read anything of are refused here (0x87; 0x80 in 3.1.1); the router gets the
        // rest, and checks each delivery on them against the rules in force at the time.
        let authorizer = self.broker.authorizer().cloned();
        let (allowed, denied): (Vec<_>, Vec<_>) =
            subscribe.filters.into_iter().enumerate().partition(|(_, f)| {
                authorizer.as_ref().is_none_or(|a| a.can_subscribe(&self.principal, &f.filter))
            });
        for (_, f) in &denied {
            tracing::info!(peer = %self.peer, client = %self.client_id, filter = %f.filter, "subscription not authorized");
        }
        let (positions, filters): (Vec<usize>, Vec<_>) = allowed.into_iter().unzip();
        let request = SubscribeRequest {
            client_id: self.client_id.clone(),
            filters,
            subscription_id: subscribe.properties.subscription_identifier,
            principal: Some(self.principal.clone()),
            arrival: self.transport.arrival(),
        };
        let granted = if request.filters.is_empty() {
            Vec::new()
        } else {
            match self.broker.subscribe(request).await {
                Ok(reasons) => reasons,
                Err(_) => {
                    return Flow::End(DisconnectReason::Lost("the broker is shutting down".into()), None);
                }
            }
        };
        let mut reasons = vec![ReasonCode::NOT_AUTHORIZED; positions.len() + denied.len()];
        for (position, reason) in positions.into_iter().zip(granted) {
            if let Some(slot) = reasons.get_mut(position) {
                *slot = reason;
            }
        }
        let ack = SubAck { packet_id: subscribe.packet_id, reasons, properties: AckProperties::default() };
        self.encode_or_log(&Packet::SubAck(ack));
        // Retained messages for the new subscriptions are in the queue now, after the SUBACK.
        self.queue.wake();
        Flow::Continue
    }

    async fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) -> Flow {
        let Ok(reasons) = self.broker.unsubscribe(self.client_id.clone(), unsubscribe.filters).await else {
            return Flow::End(DisconnectReason::Lost("the broker is shutting down".into()), None);
        };
        let ack =
            UnsubAck { packet_id: unsubscribe.packet_id, reasons, properties: AckProperties::default() };
        self.encode_or_log(&Packet::UnsubAck(ack));
        Flow::Continue
    }

    fn on_disconnect(&mut self, disconnect: Disconnect) -> Flow {
        let expiry = disconnect.properties.session_expiry_interval;
        // A client that connected with expiry 0 may not set one at DISCONNECT (MQTT 5.0 §3.14.2.2.2).
        if self.session_expiry == 0 && expiry.is_some_and(|e| e != 0) {
            return self.protocol_error(
                ReasonCode::PROTOCOL_ERROR,
                "session expiry set at DISCONNECT after 0 at CONNECT",
            );
        }
        let reason = if disconnect.reason == ReasonCode::DISCONNECT_WITH_WILL {
            DisconnectReason::NormalWithWill
        } else if disconnect.reason.is_error() {
            DisconnectReason::Lost(format!("client reported error 0x{:02X}", disconnect.reason.0))
        } else {
            DisconnectReason::Normal
        };
        Flow::End(reason, expiry)
    }

    /// Ends the connection for a protocol violation: v5 clients are told why with a DISCONNECT.
    fn protocol_error(&mut self, code: ReasonCode, why: &str) -> Flow {
        Metrics::add(&self.broker.metrics().protocol_errors, 1);
        tracing::info!(peer = %self.peer, client = %self.client_id, "protocol error: {why}");
        self.queue_disconnect(code, Some(why));
        Flow::End(DisconnectReason::Lost(format!("protocol error: {why}")), None)
    }

    /// Buffers a v5 DISCONNECT (3.1.1 has none from the server: the connection is just closed).
    fn queue_disconnect(&mut self, code: ReasonCode, why: Option<&str>) {
        if !self.version.is_v5() {
            return;
        }
        let properties =
            DisconnectProperties { reason_string: why.map(str::to_owned), ..DisconnectProperties::default() };
        self.encode_or_log(&Packet::Disconnect(Disconnect { reason: code, properties }));
    }

    async fn send_disconnect(&mut self, code: ReasonCode, why: Option<&str>) {
        self.queue_disconnect(code, why);
        let _ = self.flush().await;
    }

    /// Moves what the session queue holds into the write buffer, within the client's receive maximum.
    fn drain(&mut self) {
        let mut outgoing = std::mem::take(&mut self.outgoing);
        self.queue.take(self.send_quota, DRAIN_BATCH, Instant::now(), &mut outgoing);
        let full_batch = outgoing.len() == DRAIN_BATCH;
        for o in outgoing.drain(..) {
            self.encode_outgoing(o);
        }
        self.outgoing = outgoing;
        if full_batch {
            // More may be waiting: come back after this batch is written.
            self.queue.wake();
        }
    }

    fn encode_outgoing(&mut self, outgoing: Outgoing) {
        let (packet_id, delivery, dup) = match outgoing {
            Outgoing::PubRel { packet_id } => {
                return self.encode_or_log(&Packet::PubRel(PubResp::new(packet_id)));
            }
            Outgoing::Publish { packet_id, delivery, dup } => (packet_id, delivery, dup),
        };
        let message = &delivery.message;
        let mut properties = PublishProperties::default();
        if self.version.is_v5() {
            if let Some(p) = &message.properties {
                properties.payload_format_indicator = p.payload_format_indicator;
                properties.message_expiry_interval = message.remaining_expiry(Instant::now());
                properties.content_type = p.content_type.clone();
                properties.response_topic = p.response_topic.clone();
                properties.correlation_data = p.correlation_data.clone();
                properties.user_properties = p.user_properties.clone();
            }
            properties.subscription_identifiers = delivery.subscription_ids;
        }
        // Aliases only here, on this connection's copy: never in the message, the retained store or the journal.
        let alias = self.out_aliases.as_mut().map_or(Alias::None, |a| a.alias_for(&message.topic));
        let topic = match alias {
            Alias::None => message.topic.to_string(),
            Alias::Set(n) => {
                properties.topic_alias = Some(n);
                message.topic.to_string()
            }
            Alias::Use(n) => {
                properties.topic_alias = Some(n);
                String::new()
            }
        };
        let publish = Publish {
            dup,
            qos: delivery.qos,
            retain: delivery.retain,
            topic,
            packet_id,
            properties,
            payload: message.payload.clone(),
        };
        let start = self.outbuf.len();
        let encoded = codec::encode(&Packet::Publish(publish), self.version, &mut self.outbuf);
        let unsent = encoded.is_err() || self.outbuf.len() - start > self.client_max_packet;
        if unsent && let (Alias::Set(_), Some(aliases)) = (alias, self.out_aliases.as_mut()) {
            // The client never learns this mapping: set it again next time.
            aliases.forget(&message.topic);
        }
        if let Err(e) = encoded {
            tracing::warn!(client = %self.client_id, "cannot encode a delivery: {e}");
            self.outbuf.truncate(start);
            return;
        }
        if self.outbuf.len() - start > self.client_max_packet {
            // Larger than the client accepts: discard it as if delivered (MQTT 5.0 §3.1.2.11.4).
            self.outbuf.truncate(start);
            if let Some(id) = packet_id {
                self.queue.complete(id, InflightState::Published);
            }
            Metrics::add(&self.broker.metrics().messages_dropped, 1);
            tracing::debug!(client = %self.client_id, topic = %message.topic, "message exceeds the client's maximum packet size; not sent");
            return;
        }
        Metrics::add(&self.broker.metrics().messages_sent, 1);
    }

    fn encode(&mut self, packet: &Packet) -> Result<(), codec::EncodeError> {
        codec::encode(packet, self.version, &mut self.outbuf)
    }

    fn encode_or_log(&mut self, packet: &Packet) {
        if let Err(e) = self.encode(packet) {
            tracing::warn!(client = %self.client_id, "cannot encode {}: {e}", packet.name());
        }
    }

    /// Writes the buffer out, unless the router asks us to close first or the peer stops reading for too long.
    async fn flush(&mut self) -> Result<(), DisconnectReason> {
        let written = self.outbuf.len() as u64;
        let limit = self.keep_alive.unwrap_or(DEFAULT_WRITE_TIMEOUT).max(Duration::from_secs(10));
        match timeout(limit, self.transport.write(&mut self.outbuf)).await {
            Ok(Ok(())) => {
                Metrics::add(&self.broker.metrics().bytes_sent, written);
                Ok(())
            }
            Ok(Err(e)) => Err(DisconnectReason::Lost(format!("write failed: {e}"))),
            Err(_) => Err(DisconnectReason::Lost("write timed out: the client stopped reading".into())),
        }
    }
}

/// Resolves with the store's answer for the oldest pending publish; never, when there is none.
async fn next_completion(pending: &mut VecDeque<PendingPublish>) -> Result<(), Refusal> {
    match pending.front_mut() {
        Some(p) => (&mut p.completion).await.unwrap_or(Err(Refusal::Unavailable)),
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Words for the log and the presence message.
fn describe(code: ReasonCode) -> &'static str {
    match code {
        ReasonCode::SESSION_TAKEN_OVER => "session taken over",
        ReasonCode::SERVER_SHUTTING_DOWN => "server shutting down",
        ReasonCode::ADMINISTRATIVE_ACTION => "disconnected by an administrator",
        ReasonCode::NOT_AUTHORIZED => "not authorized",
        ReasonCode::QUOTA_EXCEEDED => "storage full: message not accepted",
        _ => "disconnected by the server",
    }
}
