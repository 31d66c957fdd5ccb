//! The line from the router (and the certificate registry) to one connection it wants closed.
//!
//! Every connection has one, for its whole life, so its size counts: a tokio `mpsc` channel is ~570 bytes
//! (cache-padded halves and a 32-slot block), this is under 100. It carries one [`Control`]: the connection closes
//! on the first, so later ones are dropped. Like a channel, the receiver learns when every sender is gone.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::Control;

/// A connection's control line: the router keeps one sender, the certificate registry may keep another.
pub fn control_channel() -> (ControlSender, ControlReceiver) {
    let shared =
        Arc::new(Shared { state: Mutex::new(State { control: None, senders: 1 }), notify: Notify::new() });
    (ControlSender(shared.clone()), ControlReceiver(shared))
}

#[derive(Debug)]
pub struct ControlSender(Arc<Shared>);

#[derive(Debug)]
pub struct ControlReceiver(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the receiver; `notify_one` keeps the wake-up if it is not waiting yet.
    notify: Notify,
}

#[derive(Debug)]
struct State {
    /// The first control sent and not yet received.
    control: Option<Control>,
    senders: usize,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ControlSender {
    /// Never waits. The first control sent is the one the connection acts on; later ones are dropped.
    pub fn send(&self, control: Control) {
        let mut state = self.0.state();
        if state.control.is_none() {
            state.control = Some(control);
            drop(state);
            self.0.notify.notify_one();
        }
    }
}

impl Clone for ControlSender {
    fn clone(&self) -> Self {
        self.0.state().senders += 1;
        ControlSender(self.0.clone())
    }
}

impl Drop for ControlSender {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.senders -= 1;
        if state.senders == 0 {
            drop(state);
            self.0.notify.notify_one();
        }
    }
}

impl ControlReceiver {
    /// The control sent, or `None` once every sender is gone without sending one. Cancel-safe: nothing is taken
    /// unless it is returned.
    pub async fn recv(&mut self) -> Option<Control> {
        loop {
            {
                let mut state = self.0.state();
                if let Some(control) = state.control.take() {
                    return Some(control);
                }
                if state.senders == 0 {
                    return None;
                }
            }
            self.0.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;
    use crate::mqtt::codec::ReasonCode;

    #[tokio::test]
    async fn the_first_control_is_received_and_the_end_after_it() {
        let (tx, mut rx) = control_channel();
        assert_eq!(rx.recv().now_or_never(), None, "nothing sent yet");
        let registry = tx.clone();
        registry.send(Control::Disconnect(ReasonCode::ADMINISTRATIVE_ACTION));
        tx.send(Control::Disconnect(ReasonCode::SESSION_TAKEN_OVER));
        drop(tx);
        drop(registry);
        assert_eq!(rx.recv().await, Some(Control::Disconnect(ReasonCode::ADMINISTRATIVE_ACTION)));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn the_receiver_learns_when_every_sender_is_gone() {
        let (tx, mut rx) = control_channel();
        let registry = tx.clone();
        drop(tx);
        assert_eq!(rx.recv().now_or_never(), None, "one sender is left");
        let waiting = tokio::spawn(async move { rx.recv().await });
        drop(registry);
        assert_eq!(waiting.await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send() {
        let (tx, mut rx) = control_channel();
        let waiting = tokio::spawn(async move { rx.recv().await });
        tx.send(Control::Disconnect(ReasonCode::SERVER_SHUTTING_DOWN));
        assert_eq!(waiting.await.unwrap(), Some(Control::Disconnect(ReasonCode::SERVER_SHUTTING_DOWN)));
    }

    #[test]
    fn it_is_small() {
        assert!(std::mem::size_of::<Shared>() <= 96, "{}", std::mem::size_of::<Shared>());
    }
}
