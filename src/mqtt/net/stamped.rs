//! TCP reads that say when their bytes arrived: the kernel's receive timestamp (`SO_TIMESTAMPNS`) of the last
//! segment each read took, for the order of packets across connections ([`crate::mqtt::broker::Arrival`]).
//!
//! With `unsafe` (like `src/interfaces.rs`): `recvmsg(2)` and its control messages through `libc`, as tokio's own
//! reads do for the bytes. Each block says why it is sound.

#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::mqtt::broker::Arrival;

/// A TCP stream that notes when the bytes of its last read arrived.
#[derive(Debug)]
pub(crate) struct StampedTcp {
    tcp: TcpStream,
    last: Arrival,
}

impl StampedTcp {
    /// Asks the kernel to stamp what arrives on `tcp`. Without stamps (an old kernel), reads work as before and
    /// their arrival is unknown.
    pub(crate) fn new(tcp: TcpStream) -> StampedTcp {
        enable_stamps(&tcp);
        StampedTcp { tcp, last: Arrival::UNKNOWN }
    }

    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// When the bytes of the last read arrived; unknown if the kernel did not stamp them.
    pub(crate) fn arrival(&self) -> Arrival {
        self.last
    }

    /// Like [`TcpStream::try_read_buf`], noting the arrival.
    pub(crate) fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let fd = self.tcp.as_raw_fd();
        let spare = buf.spare_capacity_mut();
        let (n, arrival) = self.tcp.try_io(Interest::READABLE, || recv(fd, spare))?;
        // SAFETY: `recv` initialised the first `n` bytes of the spare capacity (recvmsg wrote them), and `n` is at
        // most its length.
        unsafe { buf.set_len(buf.len() + n) };
        self.note(n, arrival);
        Ok(n)
    }

    /// A read without a stamp makes the arrival unknown, not that of an earlier read: an arrival taken for earlier
    /// than it was could deliver a publish to a subscription that came after it.
    fn note(&mut self, n: usize, arrival: Option<Arrival>) {
        if n > 0 {
            self.last = arrival.unwrap_or(Arrival::UNKNOWN);
        }
    }
}

impl AsyncRead for StampedTcp {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let fd = this.tcp.as_raw_fd();
        loop {
            ready!(this.tcp.poll_read_ready(cx))?;
            // SAFETY: `recv` only writes bytes into the unfilled part, never de-initialises any.
            let unfilled = unsafe { buf.unfilled_mut() };
            match this.tcp.try_io(Interest::READABLE, || recv(fd, unfilled)) {
                Ok((n, arrival)) => {
                    // SAFETY: recvmsg wrote (so initialised) the first `n` bytes of the unfilled part.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    this.note(n, arrival);
                    return Poll::Ready(Ok(()));
                }
                // The readiness was stale; `try_io` cleared it, so the next poll waits for new data.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for StampedTcp {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// Waits until the kernel stamps TCP reads, at most a second: it starts a little after the first socket asks (it
/// switches a global flag from a work queue), and the first clients' packets should be stamped too. Checked with
/// a byte over a loopback connection of its own; immediate when another socket has turned stamping on already.
pub(crate) async fn wait_until_stamping() {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    let stamped = tokio::time::timeout_at(deadline, async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        enable_stamps(&listener);
        let (client, accepted) = tokio::join!(TcpStream::connect(listener.local_addr()?), listener.accept());
        let (mut client, mut server) = (client?, StampedTcp::new(accepted?.0));
        loop {
            client.write_all(b"?").await?;
            let mut byte = [0u8; 1];
            server.read_exact(&mut byte).await?;
            if server.arrival().nanos().is_some() {
                return io::Result::Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    })
    .await;
    match stamped {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("checking the kernel's receive timestamps: {e}"),
        Err(_) => tracing::warn!(
            "the kernel does not stamp TCP reads (SO_TIMESTAMPNS): a SUBSCRIBE may miss a PUBLISH that raced it"
        ),
    }
}

/// Turns the stamps on for `socket` (and the connections a listener accepts).
pub(crate) fn enable_stamps(socket: &impl AsRawFd) {
    #[cfg(target_os = "linux")]
    {
        let on: libc::c_int = 1;
        // SAFETY: `on` lives across the call, and its size is passed with it.
        let result = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                std::ptr::from_ref(&on).cast(),
                std::mem::size_of_val(&on) as libc::socklen_t,
            )
        };
        if result != 0 {
            tracing::debug!("SO_TIMESTAMPNS: {}", io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}

/// One `recvmsg(2)` into `into`: the bytes read, and the stamp of the last segment among them, if any.
fn recv(fd: RawFd, into: &mut [MaybeUninit<u8>]) -> io::Result<(usize, Option<Arrival>)> {
    let mut iov = libc::iovec { iov_base: into.as_mut_ptr().cast(), iov_len: into.len() };
    // Room for the one control message asked for (a `timespec` after its header), aligned as a header must be.
    let mut control = [0u64; 8];
    // SAFETY: all-zero is a valid `msghdr` (null pointers, zero lengths); the fields used are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points to `iov` (describing `into`, writable for its length) and to `control` (writable for
    // `msg_controllen` bytes); all three outlive the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut arrival = None;
    // SAFETY: the kernel filled `control` with well-formed control messages and set `msg_controllen` to their
    // length; CMSG_FIRSTHDR/CMSG_NXTHDR stay within it and return null at its end. A SCM_TIMESTAMPNS message's
    // data is one `timespec`, read unaligned since the data need not be aligned for it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS {
                let at: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                #[allow(clippy::unnecessary_cast)] // 32-bit `time_t` and `c_long` on armv7
                let nanos =
                    (at.tv_sec as i64).saturating_mul(1_000_000_000).saturating_add(at.tv_nsec as i64);
                arrival = Some(Arrival::from_nanos(nanos));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, arrival))
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    async fn pair(listener: &TcpListener) -> (TcpStream, StampedTcp) {
        let (client, accepted) =
            tokio::join!(TcpStream::connect(listener.local_addr().unwrap()), listener.accept());
        (client.unwrap(), StampedTcp::new(accepted.unwrap().0))
    }

    /// One byte sent on `client`, read by `socket` through [`StampedTcp::try_read_buf`]; its arrival.
    async fn byte_through_try_read(client: &mut TcpStream, socket: &mut StampedTcp, byte: u8) -> Arrival {
        client.write_all(&[byte]).await.unwrap();
        let mut bytes = BytesMut::with_capacity(16);
        loop {
            socket.tcp().readable().await.unwrap();
            match socket.try_read_buf(&mut bytes) {
                Ok(n) => {
                    assert_eq!(&bytes[..n], [byte]);
                    return socket.arrival();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Bytes sent on one connection and then on another are stamped in that order, whichever is read first, by
    /// both ways of reading.
    #[tokio::test]
    async fn reads_are_stamped_in_the_order_their_bytes_arrived() {
        wait_until_stamping().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut first_client, mut first) = pair(&listener).await;
        let (mut second_client, mut second) = pair(&listener).await;
        for round in 1..=20u8 {
            first_client.write_all(&[round]).await.unwrap();
            // Sent after the byte above, and read before it.
            let second_arrival = byte_through_try_read(&mut second_client, &mut second, round).await;
            let mut buf = [0u8; 1];
            first.read_exact(&mut buf).await.unwrap();
            assert_eq!(buf[0], round);
            let (a, b) = (first.arrival().nanos().unwrap(), second_arrival.nanos().unwrap());
            assert!(a <= b, "round {round}: the first byte arrived at {a}, the second at {b}");
        }
        second_client.write_all(b"xyz").await.unwrap();
        drop(second_client);
        let mut rest = Vec::new();
        second.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"xyz");
    }
}
