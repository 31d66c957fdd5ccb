//! The one shutdown signal, as each part of the gateway sees it.
//!
//! `app` owns a [`Stop`] per stage of its lifecycle and fires them in a fixed order (listeners, router,
//! forwarders, journal); every long-lived task holds the [`StopToken`] of its stage and returns when it fires.
//! A leaf module, so that the broker and the network layer can take a token without knowing `app`.

use tokio::sync::watch;

/// Fires once; every token made from it sees it.
#[derive(Debug)]
pub struct Stop(watch::Sender<bool>);

/// Waits for its [`Stop`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StopToken(watch::Receiver<bool>);

impl Stop {
    pub fn new() -> Stop {
        Stop(watch::channel(false).0)
    }

    pub fn token(&self) -> StopToken {
        StopToken(self.0.subscribe())
    }

    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Default for Stop {
    fn default() -> Stop {
        Stop::new()
    }
}

impl StopToken {
    /// Resolves once the stop has fired (or its `Stop` is gone, which only happens when the gateway is gone).
    pub async fn stopped(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_token_sees_the_one_stop() {
        let stop = Stop::new();
        let (mut a, b) = (stop.token(), stop.token());
        assert!(!b.is_stopped());
        let waiting = tokio::spawn(async move { a.stopped().await });
        stop.fire();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.unwrap().unwrap();
        assert!(b.is_stopped());
        let mut late = stop.token();
        late.stopped().await;
    }
}
