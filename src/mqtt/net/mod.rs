//! Network listeners: accept TCP and WebSocket connections and hand each to its own connection task.

mod aliases;
mod connection;
mod stamped;
mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};

use crate::mqtt::broker::{Authenticator, Broker, Control, ControlSender, Metrics};
use crate::pki::{IdentitySource, PeerIdentity, ReloadableServerConfig, peer_identity};
use crate::shutdown::StopToken;
use stamped::StampedTcp;
use transport::{OverTcp, Stream, Tcp, WebSocket};

/// The WebSocket subprotocols we accept, in order of preference.
const WS_PROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT over TCP.
    Tcp,
    /// MQTT over WebSocket, on the given HTTP path.
    WebSocket,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket over TLS, on the given HTTP path.
    SecureWebSocket,
}

impl Protocol {
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Tls | Protocol::SecureWebSocket)
    }
}

/// What a listener needs to know about itself and the limits it shares with the others.
#[derive(Debug)]
pub struct ListenerContext {
    pub name: String,
    pub protocol: Protocol,
    /// For WebSocket listeners: the only path upgraded.
    pub ws_path: String,
    pub allow_anonymous: bool,
    /// Checks credentials at CONNECT; without one, only anonymous clients on listeners that allow them get in.
    pub authenticator: Option<Arc<dyn Authenticator>>,
    /// TLS listeners: the server configuration in force (swapped when certificates or the CRL change).
    pub tls: Option<Arc<ReloadableServerConfig>>,
    /// Which part of a client certificate is the user name.
    pub identity: IdentitySource,
    /// Certificate holders must also give their user's password.
    pub certificate_password: bool,
    pub connect_timeout: Duration,
    pub broker: Broker,
    pub connections: Arc<Connections>,
}

/// Counts live connections across all listeners, enforces the limit and lets shutdown wait for them to finish.
#[derive(Debug)]
pub struct Connections {
    active: AtomicUsize,
    max: usize,
    /// Connections made with a client certificate, by its serial: dropped when it is revoked.
    by_certificate: std::sync::Mutex<std::collections::HashMap<String, Vec<Registered>>>,
    next_registration: std::sync::atomic::AtomicU64,
    /// Every connection holds a sender; shutdown waits until the receiver sees all of them gone.
    tracker: mpsc::Sender<()>,
}

impl Connections {
    /// The counter, and the receiver that yields `None` once every connection (and this counter) is gone.
    pub fn new(max: usize) -> (Arc<Connections>, mpsc::Receiver<()>) {
        let (tracker, done) = mpsc::channel(1);
        let connections = Connections {
            active: AtomicUsize::new(0),
            max,
            by_certificate: std::sync::Mutex::new(std::collections::HashMap::new()),
            next_registration: std::sync::atomic::AtomicU64::new(0),
            tracker,
        };
        (Arc::new(connections), done)
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Closes every connection made with the certificate `serial` (v5: DISCONNECT 0x98 administrative action).
    /// Returns how many there were.
    pub fn disconnect_certificate(&self, serial: &str) -> usize {
        let map = self.by_certificate.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(list) = map.get(serial) else { return 0 };
        for (_, control) in list {
            control.send(Control::Disconnect(crate::mqtt::codec::ReasonCode::ADMINISTRATIVE_ACTION));
        }
        list.len()
    }

    /// Records a connection made with a certificate until the returned registration is dropped.
    fn register_certificate(
        self: &Arc<Self>,
        serial: &str,
        control: ControlSender,
    ) -> CertificateRegistration {
        let id = self.next_registration.fetch_add(1, Ordering::Relaxed);
        self.by_certificate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(serial.to_owned())
            .or_default()
            .push((id, control));
        CertificateRegistration { connections: self.clone(), serial: serial.to_owned(), id }
    }

    fn enter(self: &Arc<Self>) -> ConnectionGuard {
        let n = self.active.fetch_add(1, Ordering::Relaxed) + 1;
        ConnectionGuard {
            connections: self.clone(),
            over_limit: n > self.max,
            _tracker: self.tracker.clone(),
        }
    }
}

/// Held by a connection task for its lifetime.
#[derive(Debug)]
pub(crate) struct ConnectionGuard {
    connections: Arc<Connections>,
    /// This connection is beyond `max_connections`: it is answered with a refusal and closed.
    over_limit: bool,
    _tracker: mpsc::Sender<()>,
}

/// A connection's registration number and the channel that closes it.
type Registered = (u64, ControlSender);

/// Held by a connection made with a client certificate.
#[derive(Debug)]
pub(crate) struct CertificateRegistration {
    connections: Arc<Connections>,
    serial: String,
    id: u64,
}

impl Drop for CertificateRegistration {
    fn drop(&mut self) {
        let mut map =
            self.connections.by_certificate.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(list) = map.get_mut(&self.serial) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                map.remove(&self.serial);
            }
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.connections.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections until `stop` fires.
pub async fn serve(listener: TcpListener, context: Arc<ListenerContext>, mut stop: StopToken) {
    stamped::enable_stamps(&listener);
    stamped::wait_until_stamping().await;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.stopped() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Typically EMFILE: back off briefly rather than spin.
                tracing::warn!(listener = %context.name, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let guard = context.connections.enter();
        let _ = stream.set_nodelay(true);
        let stream = StampedTcp::new(stream);
        let context = context.clone();
        // One spawn per protocol, not one `async` block matching on it: a task is allocated at the size of its
        // future, and a block covering every protocol would make each plain TCP connection as large as a TLS one
        // (idle connections are most of the gateway's memory; docs/BENCHMARKS.md, "Memory per connection").
        match context.protocol {
            Protocol::Tcp => tokio::spawn(connection::serve(Tcp(stream), peer, context, guard, None)),
            Protocol::WebSocket => tokio::spawn(serve_websocket(stream, peer, context, guard, None)),
            Protocol::Tls | Protocol::SecureWebSocket => {
                tokio::spawn(serve_tls(stream, peer, context, guard))
            }
        };
    }
}

async fn serve_websocket<S: AsyncRead + AsyncWrite + Unpin + Send + OverTcp + 'static>(
    stream: S,
    peer: SocketAddr,
    context: Arc<ListenerContext>,
    guard: ConnectionGuard,
    certificate: Option<PeerIdentity>,
) {
    let path = context.ws_path.clone();
    // The callback's signature is tungstenite's; its large error type is not ours to box.
    #[allow(clippy::result_large_err)]
    let callback = move |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        if request.uri().path() != path {
            let mut error = ErrorResponse::new(Some(format!("MQTT is served on {path}\n")));
            *error.status_mut() = StatusCode::NOT_FOUND;
            return Err(error);
        }
        let offered = request.headers().get_all("sec-websocket-protocol");
        let offered: Vec<&str> = offered
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        if let Some(chosen) = WS_PROTOCOLS.iter().find(|p| offered.contains(p)) {
            response.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static(chosen));
        }
        Ok(response)
    };
    // Boxed: the handshake's state is large and lives only until the upgrade; inline, it would be part of the
    // connection task's size for the connection's whole life.
    let handshake = Box::pin(tokio_tungstenite::accept_hdr_async(stream, callback));
    match tokio::time::timeout(context.connect_timeout, handshake).await {
        Ok(Ok(ws)) => connection::serve(WebSocket(ws), peer, context, guard, certificate).await,
        Ok(Err(e)) => {
            Metrics::add(&context.broker.metrics().protocol_errors, 1);
            tracing::info!(%peer, listener = %context.name, "WebSocket handshake failed: {e}");
        }
        Err(_) => tracing::info!(%peer, listener = %context.name, "WebSocket handshake timed out"),
    }
}

/// TLS handshake (bounded by the connect timeout), then MQTT.
async fn serve_tls(
    stream: StampedTcp,
    peer: SocketAddr,
    context: Arc<ListenerContext>,
    guard: ConnectionGuard,
) {
    // Boxed, both: a task is allocated at the size of its largest state for its whole life, and the handshake's
    // state and a second copy of the 1.2 KB TLS stream (this function's, besides the connection's) would
    // otherwise be part of every TLS connection's task (docs/BENCHMARKS.md, "Memory per connection").
    let connection: BoxFuture<'static, ()> = match Box::pin(tls_handshake(stream, peer, &context)).await {
        None => return,
        Some((stream, certificate)) if context.protocol == Protocol::SecureWebSocket => {
            Box::pin(serve_websocket(stream, peer, context, guard, certificate))
        }
        Some((stream, certificate)) => {
            Box::pin(connection::serve(Stream(stream), peer, context, guard, certificate))
        }
    };
    connection.await;
}

/// The TLS stream and the client's verified certificate, if it showed one; `None` when the handshake failed.
/// A verified client certificate's common name becomes the client's identity; rustls has already refused
/// expired, revoked and foreign-CA certificates.
async fn tls_handshake(
    stream: StampedTcp,
    peer: SocketAddr,
    context: &ListenerContext,
) -> Option<(TlsStream<StampedTcp>, Option<PeerIdentity>)> {
    let Some(tls) = &context.tls else {
        tracing::error!(listener = %context.name, "TLS listener without a TLS configuration");
        return None;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
    let stream = match tokio::time::timeout(context.connect_timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            Metrics::add(&context.broker.metrics().connections_refused, 1);
            tracing::info!(%peer, listener = %context.name, "TLS handshake refused: {e}");
            return None;
        }
        Err(_) => {
            tracing::info!(%peer, listener = %context.name, "TLS handshake timed out");
            return None;
        }
    };
    let certificate =
        stream.get_ref().1.peer_certificates().and_then(|chain| chain.first()).and_then(|der| {
            match peer_identity(der, context.identity) {
                Ok(identity) => Some(identity),
                Err(e) => {
                    tracing::info!(%peer, "client certificate without a usable identity: {e}");
                    None
                }
            }
        });
    Some((stream, certificate))
}
