//! A fault-injecting TCP proxy between the gateway and the test Kafka broker: pass, cut, blackhole (sockets left
//! open, nothing flows), drop responses, delay. The broker advertises the proxy's address, so every connection a
//! client makes after the metadata exchange goes through it too.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    /// Every connection is closed, and new ones are closed at once.
    Cut,
    /// Connections stay open but nothing flows either way; new ones are accepted and left hanging.
    Blackhole,
    /// Requests reach the broker, its responses are thrown away (the connection is closed when this ends: its
    /// framing is lost).
    DropResponses,
    /// Every chunk waits this long in each direction.
    Delay(Duration),
}

pub struct Proxy {
    pub addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    fault: watch::Sender<Fault>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // No target yet: connections made before `retarget` are refused by closing them.
        let target = Arc::new(Mutex::new(SocketAddr::from(([127, 0, 0, 1], 0))));
        let (fault, faults) = watch::channel(Fault::Pass);
        let task = tokio::spawn(accept(listener, target.clone(), faults));
        Proxy { addr, target, fault, task }
    }

    /// Where connections go from now on (a restarted broker listens elsewhere).
    pub fn retarget(&self, to: SocketAddr) {
        *self.target.lock().unwrap() = to;
    }

    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, target: Arc<Mutex<SocketAddr>>, faults: watch::Receiver<Fault>) {
    loop {
        let Ok((client, _)) = listener.accept().await else { return };
        let to = *target.lock().unwrap();
        tokio::spawn(connection(client, to, faults.clone()));
    }
}

async fn connection(client: TcpStream, to: SocketAddr, mut faults: watch::Receiver<Fault>) {
    // A new connection waits out a blackhole (left open) and is closed during a cut.
    loop {
        let fault = *faults.borrow_and_update();
        match fault {
            Fault::Cut => return,
            Fault::Blackhole => {
                if faults.changed().await.is_err() {
                    return;
                }
            }
            _ => break,
        }
    }
    let Ok(server) = TcpStream::connect(to).await else { return };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, faults.clone(), false);
    let down = pump(server_read, client_write, faults, true);
    // Either direction ending ends both (dropping the halves closes the sockets).
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut faults: watch::Receiver<Fault>,
    response: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut dropped = false;
    loop {
        // Wait out a blackhole before reading: the bytes stay in the kernel, the socket stays open.
        loop {
            let fault = *faults.borrow_and_update();
            match fault {
                Fault::Cut => return,
                Fault::Blackhole => {
                    if faults.changed().await.is_err() {
                        return;
                    }
                }
                Fault::Pass | Fault::Delay(_) if dropped => return,
                _ => break,
            }
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = faults.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let fault = *faults.borrow();
        match fault {
            Fault::Cut => return,
            Fault::DropResponses if response => {
                dropped = true;
                continue;
            }
            Fault::Delay(d) => tokio::time::sleep(d).await,
            _ => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
