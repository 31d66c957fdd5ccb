//! The byte pipes a connection runs over: a TCP stream, or the binary messages of a WebSocket.

use std::future::Future;
use std::io;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

/// What the connection task needs from its transport. `read` must be cancel-safe: it is raced against the
/// session queue and the keep-alive timer.
pub(crate) trait Transport: Send + 'static {
    /// Appends what arrives to `buf`; `Ok(0)` means the peer closed.
    fn read(&mut self, buf: &mut BytesMut) -> impl Future<Output = io::Result<usize>> + Send;
    /// Writes all of `buf` and leaves it empty.
    fn write(&mut self, buf: &mut BytesMut) -> impl Future<Output = io::Result<()>> + Send;
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// A plain byte stream: TCP (and, later, TLS over TCP).
#[derive(Debug)]
pub(crate) struct Stream<S>(pub(crate) S);

/// Read buffer growth: small while a connection is quiet (idle connections are most of them and each holds its
/// buffer), larger once a read fills what was there (a busy publisher then needs fewer system calls).
const READ_CHUNK_QUIET: usize = 2 * 1024;
const READ_CHUNK_BUSY: usize = 16 * 1024;

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for Stream<S> {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let spare = buf.capacity() - buf.len();
        if spare < 512 {
            buf.reserve(READ_CHUNK_QUIET);
        }
        let spare = buf.capacity() - buf.len();
        let n = self.0.read_buf(buf).await?;
        if n == spare && buf.capacity() - buf.len() < READ_CHUNK_BUSY {
            buf.reserve(READ_CHUNK_BUSY);
        }
        Ok(n)
    }

    async fn write(&mut self, buf: &mut BytesMut) -> io::Result<()> {
        self.0.write_all(buf).await?;
        buf.clear();
        Ok(())
    }

    async fn close(&mut self) {
        let _ = self.0.shutdown().await;
    }
}

/// MQTT over WebSocket: every binary message carries some bytes of the MQTT stream (packets may span messages).
pub(crate) struct WebSocket<S>(pub(crate) WebSocketStream<S>);

impl<S> std::fmt::Debug for WebSocket<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebSocket")
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for WebSocket<S> {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            match self.0.next().await {
                None | Some(Ok(WsMessage::Close(_))) => return Ok(0),
                Some(Ok(WsMessage::Binary(data))) => {
                    buf.extend_from_slice(&data);
                    if !data.is_empty() {
                        return Ok(data.len());
                    }
                }
                // Pings are answered by tungstenite itself on the next read or write.
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {}
                Some(Ok(WsMessage::Text(_))) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "MQTT over WebSocket must use binary frames",
                    ));
                }
                Some(Err(e)) => return Err(ws_error(e)),
            }
        }
    }

    async fn write(&mut self, buf: &mut BytesMut) -> io::Result<()> {
        let data = buf.split().freeze();
        self.0.send(WsMessage::Binary(data)).await.map_err(ws_error)
    }

    async fn close(&mut self) {
        let _ = self.0.close(None).await;
    }
}

fn ws_error(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        other => io::Error::other(other),
    }
}
