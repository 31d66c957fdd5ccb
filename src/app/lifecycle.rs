//! One task lifecycle: every long-lived task of the gateway is named and belongs to a stage, and shutdown stops
//! the stages in a fixed, logged order, each bounded in time:
//!
//! 1. **listeners**: stop accepting (MQTT listeners, the console, the configuration watcher);
//! 2. **router**: tells every connection to close and every in-process link that nothing more will come, and
//!    ends once the connections have detached (their sessions saved);
//! 3. **forwarders**: commit their cursors and stop;
//! 4. **journal**: the writer commits what it holds and closes the file.
//!
//! A task that overruns its stage's bound is logged and aborted, and the next stage starts: a stuck client can
//! delay shutdown by the bound, never stop it.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::shutdown::{Stop, StopToken};

/// When a task stops, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Listeners,
    Router,
    Forwarders,
    Journal,
}

impl Stage {
    const ALL: [Stage; 4] = [Stage::Listeners, Stage::Router, Stage::Forwarders, Stage::Journal];

    fn index(self) -> usize {
        match self {
            Stage::Listeners => 0,
            Stage::Router => 1,
            Stage::Forwarders => 2,
            Stage::Journal => 3,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Stage::Listeners => "listeners",
            Stage::Router => "router",
            Stage::Forwarders => "forwarders",
            Stage::Journal => "journal",
        }
    }
}

#[derive(Debug)]
struct Task {
    name: String,
    stage: Stage,
    handle: JoinHandle<()>,
}

/// The gateway's tasks and the stop of each stage.
#[derive(Debug)]
pub struct Lifecycle {
    stops: [Stop; 4],
    tasks: Vec<Task>,
    /// How long each stage may take to stop.
    bound: Duration,
}

impl Lifecycle {
    pub fn new(bound: Duration) -> Lifecycle {
        Lifecycle { stops: Default::default(), tasks: Vec::new(), bound }
    }

    /// What a task of `stage` waits on to know it must stop.
    pub fn token(&self, stage: Stage) -> StopToken {
        self.stop(stage).token()
    }

    /// Spawns a task of `stage`; it must return when the stage's token fires.
    pub fn spawn(
        &mut self,
        stage: Stage,
        name: impl Into<String>,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        self.adopt(stage, name, tokio::spawn(task));
    }

    /// Takes on a task spawned elsewhere (the router, which its module starts).
    pub fn adopt(&mut self, stage: Stage, name: impl Into<String>, handle: JoinHandle<()>) {
        self.tasks.push(Task { name: name.into(), stage, handle });
    }

    /// Stops every stage in order; see the module documentation.
    pub async fn shutdown(self) {
        let Lifecycle { stops, tasks, bound } = self;
        let mut tasks = tasks;
        for stage in Stage::ALL {
            let (now, later): (Vec<Task>, Vec<Task>) = tasks.into_iter().partition(|t| t.stage == stage);
            tasks = later;
            let names: Vec<&str> = now.iter().map(|t| t.name.as_str()).collect();
            tracing::info!(stage = stage.name(), tasks = ?names, "stopping");
            if let Some(stop) = stops.get(stage.index()) {
                stop.fire();
            }
            let deadline = tokio::time::Instant::now() + bound;
            for mut task in now {
                if tokio::time::timeout_at(deadline, &mut task.handle).await.is_err() {
                    tracing::warn!(
                        stage = stage.name(),
                        task = task.name,
                        "did not stop within {} s: aborted",
                        bound.as_secs_f32()
                    );
                    task.handle.abort();
                }
            }
        }
        tracing::info!("stopped");
    }

    fn stop(&self, stage: Stage) -> &Stop {
        // `stops` has one entry per stage: `Stage::index` is below 4.
        #[allow(clippy::indexing_slicing)]
        &self.stops[stage.index()]
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn stages_stop_in_order_and_a_stuck_task_is_aborted_within_the_bound() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut lifecycle = Lifecycle::new(Duration::from_millis(200));
        for stage in [Stage::Journal, Stage::Router, Stage::Listeners, Stage::Forwarders] {
            let (order, mut token) = (order.clone(), lifecycle.token(stage));
            lifecycle.spawn(stage, stage.name(), async move {
                token.stopped().await;
                order.lock().unwrap().push(stage.name());
            });
        }
        lifecycle.spawn(Stage::Router, "stuck", std::future::pending());
        let started = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(5), lifecycle.shutdown()).await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["listeners", "router", "forwarders", "journal"]);
        assert!(started.elapsed() >= Duration::from_millis(200), "the stuck task was given its bound");
    }
}
