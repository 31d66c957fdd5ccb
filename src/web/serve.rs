//! Serving the console: plain HTTP on loopback, HTTPS with the gateway's server certificate elsewhere, and a
//! plain-HTTP listener that only redirects to HTTPS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect};
use axum::serve::IncomingStream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use crate::pki::ReloadableServerConfig;
use crate::shutdown::StopToken;

/// How long a browser has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once; more wait in the kernel's backlog.
const HANDSHAKES: usize = 64;

/// Serves `router` on `listener` until `stop` fires: over TLS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ReloadableServerConfig>>,
    router: Router,
    mut stop: StopToken,
) {
    let service = router.into_make_service_with_connect_info::<Peer>();
    let stopped = async move { stop.stopped().await };
    let result = match tls {
        None => axum::serve(listener, service).with_graceful_shutdown(stopped).await,
        Some(tls) => {
            axum::serve(TlsListener::new(listener, tls), service).with_graceful_shutdown(stopped).await
        }
    };
    if let Err(e) = result {
        tracing::error!("console: {e}");
    }
}

/// The address of the browser a request came from (`ConnectInfo<Peer>`), over HTTP or HTTPS alike.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub(crate) SocketAddr);

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

/// Answers every plain-HTTP request with a redirect to the same path on the HTTPS console at `https_port`.
pub async fn serve_redirect(listener: TcpListener, https_port: u16, mut stop: StopToken) {
    let redirect = move |uri: Uri, headers: axum::http::HeaderMap| async move {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
        let host = host.rsplit_once(':').map_or(host, |(name, _)| name);
        if host.is_empty() {
            return (StatusCode::BAD_REQUEST, "a Host header is needed").into_response();
        }
        let port = if https_port == 443 { String::new() } else { format!(":{https_port}") };
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        Redirect::permanent(&format!("https://{host}{port}{path}")).into_response()
    };
    let router: Router = Router::new().fallback(redirect);
    let stopped = async move { stop.stopped().await };
    if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(stopped).await {
        tracing::error!("console redirect: {e}");
    }
}

/// Accepts TCP connections and completes their TLS handshakes off the accept loop (a slow or silent client
/// cannot hold up the others), bounded in number and time.
struct TlsListener {
    handshaken: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    _acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    fn new(listener: TcpListener, tls: Arc<ReloadableServerConfig>) -> TlsListener {
        let local = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (sender, handshaken) = mpsc::channel(HANDSHAKES);
        let permits = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
        let acceptor = tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else { return };
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!("console: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (sender, acceptor) = (sender.clone(), tokio_rustls::TlsAcceptor::from(tls.current()));
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = sender.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "console: TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "console: TLS handshake timed out"),
                    }
                    drop(permit);
                });
            }
        });
        TlsListener { handshaken, local, _acceptor: acceptor }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self._acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(accepted) => accepted,
            // The acceptor only ends with the listener; until then there is always a next connection.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
