//! The byte pipes a connection runs over: a TCP stream, or the binary messages of a WebSocket.

use std::future::Future;
use std::io;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use super::stamped::StampedTcp;
use crate::mqtt::broker::Arrival;

/// What the connection task needs from its transport. `read` must be cancel-safe: it is raced against the
/// session queue and the keep-alive timer.
pub(crate) trait Transport: Send + 'static {
    /// Appends what arrives to `buf`; `Ok(0)` means the peer closed.
    fn read(&mut self, buf: &mut BytesMut) -> impl Future<Output = io::Result<usize>> + Send;
    /// Writes all of `buf` and leaves it empty.
    fn write(&mut self, buf: &mut BytesMut) -> impl Future<Output = io::Result<()>> + Send;
    fn close(&mut self) -> impl Future<Output = ()> + Send;
    /// Acknowledges what was read at the TCP level now, rather than with the next reply: see [`quick_ack`].
    fn ack_read(&self);
    /// When the bytes of the last read arrived (at least as late as every packet it completed).
    fn arrival(&self) -> Arrival;
}

/// The TCP socket under a byte stream, for its socket options and arrival stamps.
pub(crate) trait OverTcp {
    fn socket(&self) -> &StampedTcp;
}

impl OverTcp for StampedTcp {
    fn socket(&self) -> &StampedTcp {
        self
    }
}

impl OverTcp for tokio_rustls::server::TlsStream<StampedTcp> {
    fn socket(&self) -> &StampedTcp {
        self.get_ref().0
    }
}

/// Sends the TCP acknowledgement of what was read now, instead of holding it back for a reply to carry.
///
/// Linux delays ACKs on a connection that answers each request (here a PUBACK for each PUBLISH), to send them with
/// the answer. When the answer waits for the journal's commit, a client with Nagle's algorithm on (the default of
/// most MQTT libraries: libmosquitto, rumqttc) holds its next small PUBLISH until that ACK comes, so every message
/// would wait for the previous one's commit before even reaching the broker (measured: median delivery latency
/// half the commit interval). `TCP_QUICKACK` is not sticky, so this is called after every such read.
fn quick_ack(tcp: &TcpStream) {
    #[cfg(target_os = "linux")]
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_quickack(true) {
        tracing::debug!("TCP_QUICKACK: {e}");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = tcp;
}

/// Plain TCP. Like [`Stream`], except that a connection with nothing half-received waits for its next bytes
/// without a read buffer: quiet connections are most of a gateway's connections, and each would hold 2 KB.
#[derive(Debug)]
pub(crate) struct Tcp(pub(crate) StampedTcp);

/// A byte stream that can only be waited on by reading it: TLS over TCP (rustls decrypts inside the read, and may
/// hold plaintext that the socket's readiness says nothing about).
#[derive(Debug)]
pub(crate) struct Stream<S>(pub(crate) S);

/// Read buffer sizes: small while a connection is quiet, larger while packets arrive in pieces (a busy publisher
/// then needs fewer system calls).
const READ_CHUNK_QUIET: usize = 2 * 1024;
const READ_CHUNK_BUSY: usize = 16 * 1024;

impl Transport for Tcp {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        if !buf.is_empty() {
            return read_growing(&mut self.0, buf).await;
        }
        loop {
            // Payloads decoded from the buffer share it: this frees it once they are gone too.
            *buf = BytesMut::new();
            self.0.tcp().readable().await?;
            reserve_for_read(buf);
            match self.0.try_read_buf(buf) {
                Ok(n) => return Ok(n),
                // Readiness can be stale (it is cleared only by a read that would block): wait again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    async fn write(&mut self, buf: &mut BytesMut) -> io::Result<()> {
        write_all(&mut self.0, buf).await
    }

    async fn close(&mut self) {
        let _ = self.0.shutdown().await;
    }

    fn ack_read(&self) {
        quick_ack(self.0.tcp());
    }

    fn arrival(&self) -> Arrival {
        self.0.arrival()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + OverTcp + 'static> Transport for Stream<S> {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        read_growing(&mut self.0, buf).await
    }

    async fn write(&mut self, buf: &mut BytesMut) -> io::Result<()> {
        write_all(&mut self.0, buf).await
    }

    async fn close(&mut self) {
        let _ = self.0.shutdown().await;
    }

    fn ack_read(&self) {
        quick_ack(self.0.socket().tcp());
    }

    fn arrival(&self) -> Arrival {
        self.0.socket().arrival()
    }
}

async fn read_growing<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> io::Result<usize> {
    reserve_for_read(buf);
    stream.read_buf(buf).await
}

/// Makes room for a read: small for a connection that had nothing half-received, larger when bytes were left
/// over from the last read (the start of a packet whose rest is on its way: a busy connection).
fn reserve_for_read(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 512 {
        let chunk = if buf.is_empty() { READ_CHUNK_QUIET } else { READ_CHUNK_BUSY };
        make_room(buf, chunk);
    }
}

/// Gives `buf` at least `chunk` bytes of room, or as much as it holds if that is more (a large packet arriving in
/// pieces), in a new allocation that takes the unread bytes along.
///
/// Not `BytesMut::reserve`: on a buffer that nothing else shares it grows in place, doubling its capacity each
/// time the unread bytes outnumber the consumed ones, so under a sustained stream the buffer grew without bound
/// (4.7 MB per connection with 4 KiB packets; `a_busy_read_buffer_stays_bounded`). The old allocation goes once
/// the packets split from it are dropped.
fn make_room(buf: &mut BytesMut, chunk: usize) {
    let mut fresh = BytesMut::with_capacity(buf.len() + chunk.max(buf.len()));
    fresh.extend_from_slice(buf);
    *buf = fresh;
}

async fn write_all<S: AsyncWrite + Unpin>(stream: &mut S, buf: &mut BytesMut) -> io::Result<()> {
    stream.write_all(buf).await?;
    buf.clear();
    Ok(())
}

/// MQTT over WebSocket: every binary message carries some bytes of the MQTT stream (packets may span messages).
pub(crate) struct WebSocket<S>(pub(crate) WebSocketStream<S>);

impl<S> std::fmt::Debug for WebSocket<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebSocket")
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + OverTcp + 'static> Transport for WebSocket<S> {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        if buf.is_empty() {
            // Nothing half-received: wait without a buffer (tungstenite reads into its own).
            *buf = BytesMut::new();
        }
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

    fn ack_read(&self) {
        quick_ack(self.0.get_ref().socket().tcp());
    }

    fn arrival(&self) -> Arrival {
        self.0.get_ref().socket().arrival()
    }
}

fn ws_error(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        other => io::Error::other(other),
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;
    use tokio::net::TcpListener;

    use super::*;

    async fn tcp_pair() -> (TcpStream, Tcp) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (client, accepted) =
            tokio::join!(TcpStream::connect(listener.local_addr().unwrap()), listener.accept());
        (client.unwrap(), Tcp(StampedTcp::new(accepted.unwrap().0)))
    }

    #[tokio::test]
    async fn a_quiet_tcp_connection_waits_without_a_read_buffer() {
        let (mut client, mut transport) = tcp_pair().await;
        let mut buf = BytesMut::with_capacity(READ_CHUNK_QUIET);
        assert!(transport.read(&mut buf).now_or_never().is_none(), "nothing was sent yet");
        assert_eq!(buf.capacity(), 0);

        client.write_all(b"\xc0\x00").await.unwrap();
        assert_eq!(transport.read(&mut buf).await.unwrap(), 2);
        assert_eq!(&buf[..], b"\xc0\x00");
        let _ = buf.split();
        assert!(transport.read(&mut buf).now_or_never().is_none(), "everything was read");
        assert_eq!(buf.capacity(), 0);
    }

    #[tokio::test]
    async fn a_tcp_connection_keeps_its_buffer_while_a_packet_is_half_received() {
        let (mut client, mut transport) = tcp_pair().await;
        let mut buf = BytesMut::new();
        client.write_all(b"\x30").await.unwrap();
        assert_eq!(transport.read(&mut buf).await.unwrap(), 1);
        assert!(transport.read(&mut buf).now_or_never().is_none());
        assert_eq!(&buf[..], b"\x30");
        assert!(buf.capacity() >= READ_CHUNK_QUIET);

        client.write_all(b"\x00").await.unwrap();
        assert_eq!(transport.read(&mut buf).await.unwrap(), 1);
        assert_eq!(&buf[..], b"\x30\x00");
    }

    /// A client streaming 4 KiB packets as fast as it can, the reader taking whole packets off the buffer after
    /// each read (as the decoder does) and keeping the last `keep` of them alive (as queues do): the buffer must
    /// stay about the size of a read, not grow with the stream. `BytesMut::reserve` doubled a buffer that nothing
    /// else shared to 4.7 MB here, and to 264 MB over ten publishers in the broker (heaptrack).
    async fn stream_4k_packets(keep: usize) -> usize {
        const PACKET: usize = 4096 + 13;
        const TOTAL: usize = 2_000 * PACKET;
        let (mut client, mut transport) = tcp_pair().await;
        let writer = tokio::spawn(async move {
            let data = vec![7u8; TOTAL];
            client.write_all(&data).await.unwrap();
        });
        let mut buf = BytesMut::new();
        let mut kept = std::collections::VecDeque::new();
        let (mut received, mut largest) = (0, 0);
        while received < TOTAL {
            let n = transport.read(&mut buf).await.unwrap();
            assert!(n > 0);
            received += n;
            largest = largest.max(buf.capacity());
            while buf.len() >= PACKET {
                kept.push_back(buf.split_to(PACKET).freeze());
                if kept.len() > keep {
                    kept.pop_front();
                }
            }
        }
        writer.await.unwrap();
        largest
    }

    #[tokio::test]
    async fn a_busy_read_buffer_stays_bounded() {
        for keep in [0, 64] {
            let largest = stream_4k_packets(keep).await;
            assert!(largest <= 64 * 1024, "keeping {keep} packets, the read buffer grew to {largest} bytes");
        }
    }

    #[tokio::test]
    async fn a_tcp_read_of_a_full_buffer_reads_on_and_the_end_reads_as_zero() {
        let (mut client, mut transport) = tcp_pair().await;
        let data = vec![7u8; READ_CHUNK_QUIET];
        client.write_all(&data).await.unwrap();
        drop(client);
        let mut buf = BytesMut::new();
        let mut total = 0;
        loop {
            match transport.read(&mut buf).await.unwrap() {
                0 => break,
                n => total += n,
            }
        }
        assert_eq!(total, data.len());
        assert_eq!(&buf[..], &data[..]);
    }
}
