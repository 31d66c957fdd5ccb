//! Shared test harness: a gateway on 127.0.0.1 port 0 with a temporary data directory, and small clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use weir::app::{self, Gateway};
use weir::config::Config;

/// Upper bound for anything a test waits for. Generous: CI machines are slow; passing tests never wait this long.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestGateway {
    gateway: Option<Gateway>,
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
    pub _dir: TempDir,
}

impl TestGateway {
    pub async fn start() -> TestGateway {
        TestGateway::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_test(dir.path());
        config.broker.sys_interval = None;
        adjust(&mut config);
        let listeners = app::bind(&config).await.unwrap();
        let gateway = Gateway::start(config, listeners).await.unwrap();
        let tcp = gateway.local_addr("mqtt").unwrap();
        let ws = gateway.local_addr("ws").unwrap();
        TestGateway { gateway: Some(gateway), tcp, ws, _dir: dir }
    }

    /// Stops the gateway and starts it again on the same data directory (on new ports), with `adjust` applied to
    /// the configuration again.
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))] // used by the Kafka tests
    pub async fn restart_with(&mut self, adjust: impl FnOnce(&mut Config)) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await;
        }
        let mut config = Config::for_test(self._dir.path());
        config.broker.sys_interval = None;
        adjust(&mut config);
        let listeners = app::bind(&config).await.unwrap();
        let gateway = Gateway::start(config, listeners).await.unwrap();
        self.tcp = gateway.local_addr("mqtt").unwrap();
        self.ws = gateway.local_addr("ws").unwrap();
        self.gateway = Some(gateway);
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().unwrap()
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub fn port(&self) -> u16 {
        self.tcp.port()
    }

    pub async fn stop(mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await;
        }
    }
}

/// Polls `condition` until it holds, failing the test after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A byte stream a [`Raw`] client speaks over: TCP, or TLS over TCP.
/// The bytes of a WebSocket's binary messages as a stream, for [`Raw`].
struct WsBytes {
    ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    /// What is left of the last message read.
    unread: bytes::Bytes,
}

impl AsyncRead for WsBytes {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        while self.unread.is_empty() {
            match std::task::ready!(self.ws.poll_next_unpin(cx)) {
                Some(Ok(Message::Binary(data))) => self.unread = data,
                Some(Ok(Message::Close(_))) | None => return std::task::Poll::Ready(Ok(())),
                Some(Ok(_)) => {}
                Some(Err(e)) => return std::task::Poll::Ready(Err(std::io::Error::other(e))),
            }
        }
        let n = self.unread.len().min(buf.remaining());
        buf.put_slice(&self.unread.split_to(n));
        std::task::Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for WsBytes {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        std::task::ready!(self.ws.poll_ready_unpin(cx)).map_err(std::io::Error::other)?;
        self.ws.start_send_unpin(Message::Binary(data.to_vec().into())).map_err(std::io::Error::other)?;
        std::task::Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use futures_util::SinkExt;
        self.ws.poll_flush_unpin(cx).map_err(std::io::Error::other)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use futures_util::SinkExt;
        self.ws.poll_close_unpin(cx).map_err(std::io::Error::other)
    }
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A raw client that speaks bytes we write by hand, independent of any MQTT library, over TCP or TLS.
pub struct Raw {
    stream: Box<dyn Io>,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        Raw { stream: Box::new(TcpStream::connect(addr).await.unwrap()) }
    }

    pub fn from_stream(stream: TcpStream) -> Raw {
        Raw { stream: Box::new(stream) }
    }

    /// Over TLS (rustls as a client) to `localhost` at `addr`, trusting only `ca_pem` and presenting the
    /// client certificate and key given as PEM, if any.
    pub async fn connect_tls(addr: SocketAddr, ca_pem: &str, client: Option<(&str, &str)>) -> Raw {
        let mut roots = rustls::RootCertStore::empty();
        for der in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(der.unwrap()).unwrap();
        }
        let builder =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert_pem, key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).map(Result::unwrap).collect();
                builder
                    .with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap())
                    .unwrap()
            }
        };
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tls =
            tokio::time::timeout(WAIT, connector.connect(ServerName::try_from("localhost").unwrap(), tcp))
                .await
                .expect("TLS handshake timed out")
                .unwrap();
        Raw { stream: Box::new(tls) }
    }

    /// Over WebSocket (subprotocol `mqtt`, path `/mqtt`) to `addr`: every [`Raw::send`] is one binary message, and
    /// what arrives is read as one byte stream.
    pub async fn connect_ws(addr: SocketAddr) -> Raw {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{addr}/mqtt").into_client_request().unwrap();
        request.headers_mut().insert("sec-websocket-protocol", "mqtt".parse().unwrap());
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (ws, _) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
        Raw { stream: Box::new(WsBytes { ws, unread: bytes::Bytes::new() }) }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Reads exactly `n` bytes.
    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        tokio::time::timeout(WAIT, self.stream.read_exact(&mut buf))
            .await
            .expect("timed out reading")
            .unwrap();
        buf
    }

    /// Reads one whole MQTT packet (fixed header + body) by its length prefix.
    pub async fn read_packet(&mut self) -> Vec<u8> {
        let mut packet = self.read_exact(1).await;
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            let b = self.read_exact(1).await[0];
            packet.push(b);
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let body = self.read_exact(len).await;
        packet.extend(body);
        packet
    }

    /// Waits for the server to close the connection, returning everything it sent before closing.
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        tokio::time::timeout(WAIT, self.stream.read_to_end(&mut out))
            .await
            .expect("server did not close the connection")
            .ok();
        out
    }
}

/// A v3.1.1 CONNECT with the given client id, clean session and keep alive.
pub fn connect_v311(client_id: &str, clean: bool, keep_alive: u16) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, if clean { 0x02 } else { 0x00 }];
    body.extend(keep_alive.to_be_bytes());
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    packet(0x10, &body)
}

/// A v5 CONNECT with no properties.
pub fn connect_v5(client_id: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02];
    body.extend(keep_alive.to_be_bytes());
    body.push(0); // no properties
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    packet(0x10, &body)
}

/// Frames a body with a fixed header byte and a variable-length remaining length.
pub fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![header];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend(body);
    out
}
