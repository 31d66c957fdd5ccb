//! Arrival order across connections: a PUBLISH waits until the connections that became readable before it have
//! handed what they read to the router, so that a SUBSCRIBE that arrived first is in force for it.
//!
//! MQTT orders packets within a connection only, but users write "a responder subscribes, a requester publishes at
//! once" and expect it to work, as it does with a single-threaded broker. With several worker threads the last
//! connection woken often runs first (the scheduler's LIFO slot), or on a worker that is already awake while the
//! earlier one waits for another to wake up: its PUBLISH then reaches the router before the other's SUBSCRIBE.
//!
//! Each connection's read is woken through a [`ReadTicket`] waker. The wake, which comes from the I/O driver in
//! the order the sockets became readable, takes a ticket; the connection gives it back once it has handled what it
//! read (or found nothing to read). A connection about to route a PUBLISH first waits, yielding, until no ticket
//! older than its own is outstanding. Tickets held longer than [`MAX_WAIT`] do not count, so nothing can stall
//! on one connection, and a PUBLISH waits at most that long.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// The longest a PUBLISH waits for earlier arrivals. Handing a read to the router takes microseconds; this bounds
/// the unexpected, such as a worker thread the operating system did not run for a while.
const MAX_WAIT: Duration = Duration::from_millis(20);

/// The outstanding tickets of one broker, with when each was taken.
#[derive(Debug, Default)]
pub struct Arrivals {
    next: AtomicU64,
    outstanding: Mutex<BTreeMap<u64, Instant>>,
}

impl Arrivals {
    fn take(&self) -> u64 {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.set().insert(ticket, Instant::now());
        ticket
    }

    fn give_back(&self, ticket: u64) {
        self.set().remove(&ticket);
    }

    fn set(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Instant>> {
        self.outstanding.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a ticket older than `ticket` is outstanding. A ticket held longer than [`MAX_WAIT`] no longer
    /// counts, and is dropped: a connection that does not read what arrived (it is blocked writing to a client that
    /// does not read) must not hold up everyone else.
    fn earlier_than(&self, ticket: u64) -> bool {
        let mut set = self.set();
        while let Some(entry) = set.first_entry() {
            if entry.get().elapsed() < MAX_WAIT {
                return *entry.key() < ticket;
            }
            entry.remove();
        }
        false
    }
}

/// One connection's place in the arrival order: the waker its reads are polled with.
#[derive(Debug)]
pub struct ReadTicket {
    inner: Arc<TicketWaker>,
    waker: Waker,
}

#[derive(Debug)]
struct TicketWaker {
    arrivals: Arc<Arrivals>,
    /// The ticket taken at the last wake; 0 when none is held.
    ticket: AtomicU64,
    /// The connection task's own waker.
    task: Mutex<Option<Waker>>,
}

impl Wake for TicketWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.ticket.load(Ordering::Acquire) == 0 {
            let ticket = self.arrivals.take();
            if self.ticket.compare_exchange(0, ticket, Ordering::AcqRel, Ordering::Acquire).is_err() {
                self.arrivals.give_back(ticket);
            }
        }
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl ReadTicket {
    pub fn new(arrivals: Arc<Arrivals>) -> ReadTicket {
        let inner = Arc::new(TicketWaker { arrivals, ticket: AtomicU64::new(0), task: Mutex::new(None) });
        let waker = Waker::from(inner.clone());
        ReadTicket { inner, waker }
    }

    /// `read`, polled so that the wake that makes it ready takes this connection's ticket.
    pub fn read<F: Future>(&self, read: F) -> TicketedRead<'_, F> {
        TicketedRead { ticket: self, read }
    }

    /// This connection's ticket, taken now if the last read was not woken: for what was read without waiting,
    /// which arrived no later than now.
    pub fn place(&self) -> u64 {
        let held = self.inner.ticket.load(Ordering::Acquire);
        if held != 0 {
            return held;
        }
        let ticket = self.inner.arrivals.take();
        match self.inner.ticket.compare_exchange(0, ticket, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => ticket,
            Err(current) => {
                self.inner.arrivals.give_back(ticket);
                current
            }
        }
    }

    /// Called with what was read handed to the router: later arrivals need not wait for this connection.
    pub fn done(&self) {
        let ticket = self.inner.ticket.swap(0, Ordering::AcqRel);
        if ticket != 0 {
            self.inner.arrivals.give_back(ticket);
        }
    }

    /// Waits, yielding, until every connection that became readable before this one has handed its packets to the
    /// router (at most [`MAX_WAIT`]).
    pub async fn wait_for_earlier(&self) {
        if self.inner.ticket.load(Ordering::Acquire) == 0 {
            // Read without waiting: the data was there already. Other sockets may have become readable before it
            // without their wakes delivered yet (a busy worker polls the I/O driver now and then); yielding lets
            // the driver deliver them, so that they take their tickets before this one.
            tokio::task::yield_now().await;
        }
        let ticket = self.place();
        let started = Instant::now();
        while self.inner.arrivals.earlier_than(ticket) && started.elapsed() < MAX_WAIT {
            tokio::task::yield_now().await;
        }
    }
}

impl Drop for ReadTicket {
    fn drop(&mut self) {
        self.done();
    }
}

pin_project_lite::pin_project! {
    /// A read polled with a [`ReadTicket`]'s waker.
    #[derive(Debug)]
    pub struct TicketedRead<'a, F> {
        ticket: &'a ReadTicket,
        #[pin]
        read: F,
    }
}

impl<F: Future> Future for TicketedRead<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let ticket: &ReadTicket = this.ticket;
        {
            let mut task = ticket.inner.task.lock().unwrap_or_else(PoisonError::into_inner);
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let polled = this.read.poll(&mut Context::from_waker(&ticket.waker));
        if polled.is_pending() {
            // Woken with nothing to read after all (stale readiness): not an arrival.
            ticket.done();
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_publish_waits_for_a_connection_woken_before_it_and_no_longer() {
        let arrivals = Arc::new(Arrivals::default());
        let first = ReadTicket::new(arrivals.clone());
        let second = ReadTicket::new(arrivals.clone());
        first.waker.wake_by_ref();
        second.waker.wake_by_ref();
        assert!(arrivals.earlier_than(second.inner.ticket.load(Ordering::Acquire)));
        // The first connection hands over its packets while the second waits.
        let mut wait = std::pin::pin!(second.wait_for_earlier());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(wait.as_mut().poll(&mut cx).is_pending(), "waits while the first has not handed over");
        first.done();
        assert!(wait.as_mut().poll(&mut cx).is_ready(), "goes on once it has");
        second.done();
        assert!(arrivals.set().is_empty(), "nothing is outstanding once both are done");
    }

    #[tokio::test]
    async fn the_wait_is_bounded_when_an_earlier_connection_never_reads() {
        let arrivals = Arc::new(Arrivals::default());
        let stuck = ReadTicket::new(arrivals.clone());
        let started = Instant::now();
        stuck.waker.wake_by_ref();
        let publisher = ReadTicket::new(arrivals.clone());
        publisher.wait_for_earlier().await;
        assert!(started.elapsed() >= MAX_WAIT, "waited for the earlier connection as long as allowed");
        assert!(
            !arrivals.earlier_than(publisher.inner.ticket.load(Ordering::Acquire)),
            "a stale ticket is dropped"
        );
        let late = ReadTicket::new(arrivals.clone());
        late.waker.wake_by_ref();
        drop(stuck);
        drop(publisher);
        drop(late);
        assert!(arrivals.set().is_empty(), "dropped connections give their tickets back");
    }

    #[tokio::test]
    async fn a_read_that_stays_pending_gives_its_ticket_back() {
        let arrivals = Arc::new(Arrivals::default());
        let ticket = ReadTicket::new(arrivals.clone());
        ticket.waker.wake_by_ref();
        assert_eq!(arrivals.set().len(), 1);
        let mut read = std::pin::pin!(ticket.read(std::future::pending::<()>()));
        assert!(read.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_pending());
        assert!(arrivals.set().is_empty());
    }
}
