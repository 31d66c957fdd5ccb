//! An uplink route, MQTT → Kafka: a durable journal cursor feeding an idempotent producer.
//!
//! The route reads matching messages from its [`Consumer`] (`kafka:<route>`), never from a link: a Kafka outage
//! only makes the cursor fall behind, and costs disk, not publishers' time. Each message becomes one record; the
//! cursor is committed through the highest journal id below which every record was acknowledged (or
//! dead-lettered), so a crash resends at most what was in flight, and the start-up scan
//! ([`kafka::scan_highest_ids`]) finds which of those Kafka already has. See ARCHITECTURE.md, "Forwarding to
//! Kafka".

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use sqlx::SqlitePool;
use tokio::sync::{mpsc, watch};

use super::config::{KeySpec, TopicTemplate, Uplink, Upstream};
use super::format::{self, AliasBook};
use super::kafka::{self, Delivered, HEADER_GATEWAY, HEADER_ID, HEADER_ROUTE, KafkaClientError, Producer};
use super::settings::MAX_IN_FLIGHT;
use super::status::{RouteState, STALL_AFTER_MS, StatusBoard};
use crate::store::consumer::{Consumer, StartAt};
use crate::store::history::StoredMessage;
use crate::store::{Journal, StoreError};
use crate::timefmt::now_ms;

/// Journal messages read per round.
const READ_BATCH: usize = 2_000;
/// How often the cursor is committed while records are acknowledged.
const COMMIT_EVERY: Duration = Duration::from_millis(200);
/// How often the offsets the start-up scan begins from are saved.
const HINTS_EVERY: Duration = Duration::from_secs(1);
/// How long metadata and the start-up scan may take before the session is retried.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
const SCAN_TIMEOUT: Duration = Duration::from_secs(60);
/// With records in flight and no acknowledgement for this long, the producer is replaced (a new session with
/// its start-up scan). librdkafka retries for ever by itself (`message.timeout.ms=0`), but a broker that lost
/// its state (tansu restarted: "unknown producer id", then fenced after the epoch bump) never answers it again.
const NO_PROGRESS_RESET: Duration = Duration::from_secs(20);
/// On stop, how long in-flight records may take to be acknowledged.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum UplinkError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Kafka(#[from] KafkaClientError),
    #[error("Kafka refused a record: {0}")]
    Refused(KafkaError),
    #[error("the Kafka producer failed for good: {0}")]
    Fatal(String),
    #[error("dead-letter list: {0}")]
    DeadLetter(#[from] sqlx::Error),
    #[error("{0}")]
    Config(#[from] super::config::ConfigError),
    #[error("no acknowledgement from Kafka for {0:?}: reconnecting")]
    NoProgress(Duration),
    #[error("{0}")]
    Explained(String),
}

/// Everything an uplink route runs with.
#[derive(Debug, Clone)]
pub(crate) struct UplinkRoute {
    pub(crate) spec: Uplink,
    pub(crate) upstream: Upstream,
    pub(crate) journal: Journal,
    pub(crate) config_db: SqlitePool,
    pub(crate) gateway: String,
    pub(crate) board: StatusBoard,
}

impl UplinkRoute {
    /// The cursor's name in the journal.
    pub(crate) fn cursor_name(route: &str) -> String {
        format!("kafka:{route}")
    }

    /// Runs until `stop` turns true; failures are shown in the status and retried with back-off.
    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        let name = self.spec.name.clone();
        let mut backoff = Duration::from_millis(500);
        // Gaps already reported, across sessions: a retried session must not count the same gap again.
        let mut gap_through = 0;
        let health = Health::default();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.board.update(&name, |s| {
                if s.state != RouteState::Stalled {
                    s.state = RouteState::Starting;
                }
            });
            let result = {
                let session = self.session(&mut stop, &mut gap_through, &health);
                tokio::pin!(session);
                loop {
                    tokio::select! {
                        r = &mut session => break r,
                        _ = tick.tick() => self.between_reports(&health),
                    }
                }
            };
            match result {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(route = %name, "Kafka uplink: {e}; retrying in {backoff:?}");
                    self.board.error(&name, &e.to_string());
                    let pending = health.oldest_pending.load(Ordering::Relaxed) > 0;
                    let now = now_ms();
                    self.board.update(&name, |s| {
                        s.state = if pending && s.last_ack_ms.is_none_or(|t| now - t > STALL_AFTER_MS) {
                            RouteState::Stalled
                        } else {
                            RouteState::Error
                        };
                    });
                }
            }
            let retry = tokio::time::Instant::now() + backoff;
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    () = tokio::time::sleep_until(retry) => break,
                    _ = tick.tick() => self.between_reports(&health),
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// While no session reports (one is starting, or waiting to retry after a failure: an outage), the status
    /// still tells the truth: the oldest unacknowledged record keeps ageing, the lag alarm is raised when due,
    /// and a route with records waiting and no acknowledgement for a while is stalled.
    fn between_reports(&self, health: &Health) {
        let now = now_ms();
        let oldest = health.oldest_pending.load(Ordering::Relaxed);
        if oldest == 0 || now - health.reported.load(Ordering::Relaxed) < 1_500 {
            return;
        }
        let lag_ms = (now - oldest).max(0);
        let alarm = health.lag(&self.spec, lag_ms);
        self.board.update(&self.spec.name, |s| {
            s.lag_ms = lag_ms;
            s.lag_alarm = alarm;
            s.rate = 0.0;
            if s.last_ack_ms.is_none_or(|t| now - t > STALL_AFTER_MS) {
                s.state = RouteState::Stalled;
            }
        });
    }

    /// One producer's life: start-up scan, then forwarding until stopped (`Ok`) or broken (`Err`).
    async fn session(
        &self,
        stop: &mut watch::Receiver<bool>,
        gap_through: &mut i64,
        health: &Health,
    ) -> Result<(), UplinkError> {
        let spec = &self.spec;
        let start = if spec.from_now { StartAt::Now } else { StartAt::Beginning };
        let consumer =
            Consumer::open(&self.journal, &Self::cursor_name(&spec.name), vec![spec.filter.clone()], start)
                .await?;
        // The gaps recorded with the cursor, before this session or this process: shown, and not counted again.
        let recorded = consumer.recorded_gaps().await?;
        if let Some((_, to, _)) = recorded.last {
            *gap_through = (*gap_through).max(to);
        }
        self.board.update(&spec.name, |s| {
            s.gap = recorded.total;
            s.last_gap = recorded.last;
        });
        let client_id = format!("weir-{}-{}", self.gateway, spec.name);
        let (producer, delivered, errors) = kafka::producer(&self.upstream, &client_id)?;
        let mut state = State {
            route: self,
            template: TopicTemplate::parse(&spec.topic)?,
            consumer,
            producer: Arc::new(producer),
            delivered,
            errors,
            partitions: HashMap::new(),
            skip: HashMap::new(),
            queue: VecDeque::new(),
            acked_offsets: HashMap::new(),
            hints_saved: HashMap::new(),
            pending_commit: None,
            last_commit: Instant::now(),
            last_hints: Instant::now(),
            last_report: Instant::now(),
            last_progress: Instant::now(),
            last_gap_check: Instant::now(),
            gap_through: *gap_through,
            aliases: AliasBook::default(),
            forwarded_at_report: 0,
            broken: None,
            health,
        };
        // Before anything can fail for want of Kafka: a gap is shown while the outage lasts.
        let result = match state.check_gap().await {
            Ok(()) => state.forward(stop).await,
            Err(e) => Err(e),
        };
        *gap_through = state.gap_through;
        // Whatever happened, keep what was acknowledged.
        let saved = state.save_progress().await;
        // A failure's own text is often generic ("metadata fetch error"); what librdkafka reported last says why
        // (authentication failed, connection refused).
        let mut said = None;
        while let Ok(e) = state.errors.try_recv() {
            said = Some(e);
        }
        result.and(saved).map_err(|e| match said {
            Some(said) => UplinkError::Explained(format!("{e}; the Kafka client said: {said}")),
            None => e,
        })
    }
}

/// A record read from the journal and not yet done with.
#[derive(Debug)]
struct Slot {
    id: i64,
    ts: i64,
    /// Acknowledged, dead-lettered, skipped or filtered out.
    done: bool,
    sent: Instant,
    /// The Kafka topic it was sent to, for the offsets the start-up scan begins from.
    topic: Option<String>,
}

struct State<'a> {
    route: &'a UplinkRoute,
    template: TopicTemplate,
    consumer: Consumer,
    producer: Arc<Producer>,
    delivered: mpsc::UnboundedReceiver<Delivered>,
    errors: mpsc::UnboundedReceiver<String>,
    /// Partition count per Kafka topic, from metadata.
    partitions: HashMap<String, i32>,
    /// Per partition, the highest journal id Kafka already had at start-up: not sent again.
    skip: HashMap<(String, i32), i64>,
    queue: VecDeque<Slot>,
    /// Per partition, the offset of the newest acknowledged record, and the journal id it carried.
    acked_offsets: HashMap<(String, i32), (i64, i64)>,
    hints_saved: HashMap<(String, i32), i64>,
    /// Done with through here, not yet committed.
    pending_commit: Option<i64>,
    last_commit: Instant,
    last_hints: Instant,
    last_report: Instant,
    /// The last acknowledgement, or the session's start.
    last_progress: Instant,
    last_gap_check: Instant,
    /// Gaps are reported up to here.
    gap_through: i64,
    /// Sparkplug B aliases, for `--format sparkplug`.
    aliases: AliasBook,
    forwarded_at_report: u64,
    /// A record failed in a way that needs a new producer (or the topic to appear): sending stops, what is in
    /// flight settles, and the session ends with this error.
    broken: Option<UplinkError>,
    health: &'a Health,
}

/// What a route knows of its health across sessions, so that the status stays true while a new session starts
/// (through an outage): the oldest record not acknowledged, when a session last reported, the lag alarm.
#[derive(Debug, Default)]
struct Health {
    /// Journal time (unix ms) of the oldest record read and not yet acknowledged; 0 when none.
    oldest_pending: AtomicI64,
    /// When a session last reported (unix ms).
    reported: AtomicI64,
    alarm: AtomicBool,
}

impl Health {
    /// Raises the lag alarm past the route's threshold and clears it below half of it, logging each once per
    /// episode (not once per session). Returns whether it is raised.
    fn lag(&self, spec: &Uplink, lag_ms: i64) -> bool {
        let alarm_ms = i64::try_from(spec.lag_alarm_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let raised = self.alarm.load(Ordering::Relaxed);
        if lag_ms > alarm_ms && !raised {
            self.alarm.store(true, Ordering::Relaxed);
            tracing::warn!(route = %spec.name, lag_ms, "Kafka uplink lag alarm: the oldest unforwarded message is older than {}s", spec.lag_alarm_secs);
            true
        } else if raised && lag_ms <= alarm_ms / 2 {
            self.alarm.store(false, Ordering::Relaxed);
            tracing::info!(route = %spec.name, lag_ms, "Kafka uplink lag alarm cleared");
            false
        } else {
            raised
        }
    }
}

impl State<'_> {
    async fn forward(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), UplinkError> {
        tokio::select! {
            r = self.recover() => r?,
            // The scan can take a while (a slow broker): stopping need not wait for it.
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        let name = self.route.spec.name.clone();
        let mut caught_up = false;
        loop {
            if *stop.borrow() {
                return self.drain().await;
            }
            if let Some((code, reason)) = self.producer.client().fatal_error() {
                return Err(UplinkError::Fatal(format!("{code}: {reason}")));
            }
            if self.last_gap_check.elapsed() >= Duration::from_secs(1) {
                self.check_gap().await?;
            }
            if self.broken.is_none() && self.queue.len() < MAX_IN_FLIGHT {
                let room = (MAX_IN_FLIGHT - self.queue.len()).min(READ_BATCH);
                let batch = self.consumer.next_batch(room).await?;
                // A short batch is not the end when the route's filter is read in id order (many topics).
                caught_up = self.consumer.caught_up();
                for (from, to) in self.consumer.take_gaps() {
                    self.gap(from, to).await?;
                }
                for m in batch {
                    self.send(m).await?;
                    if self.broken.is_some() {
                        break;
                    }
                }
            }
            let wait = if self.broken.is_some() || caught_up || self.queue.len() >= MAX_IN_FLIGHT {
                Duration::from_millis(if caught_up { 20 } else { 100 })
            } else {
                Duration::ZERO
            };
            tokio::select! {
                biased;
                _ = stop.changed() => {}
                Some(d) = self.delivered.recv() => self.settle(d).await?,
                Some(e) = self.errors.recv() => {
                    tracing::debug!(route = %name, "Kafka client: {e}");
                    self.route.board.error(&name, &e);
                }
                () = tokio::time::sleep(wait) => {}
            }
            while let Ok(d) = self.delivered.try_recv() {
                self.settle(d).await?;
            }
            self.advance().await?;
            if self.last_progress.elapsed() > NO_PROGRESS_RESET
                && self.queue.iter().find(|s| !s.done).is_some_and(|s| s.sent.elapsed() > NO_PROGRESS_RESET)
            {
                return Err(UplinkError::NoProgress(NO_PROGRESS_RESET));
            }
            if self.broken.is_some() && self.queue.iter().all(|s| s.done || s.sent.elapsed() > DRAIN_TIMEOUT)
            {
                return Err(self.broken.take().unwrap_or(UplinkError::Fatal("broken".into())));
            }
            self.report();
        }
    }

    /// Retention removes nothing a cursor still needs, except at the hard cap: then journal entries after what
    /// this route has read are gone before it forwarded them. Found here (every second, and at the start of each
    /// session, so that it shows during an outage) and by the consumer as it reads.
    async fn check_gap(&mut self) -> Result<(), UplinkError> {
        self.last_gap_check = Instant::now();
        if let Some((from, to)) = self.consumer.gap().await? {
            self.gap(from, to).await?;
        }
        Ok(())
    }

    /// A gap of journal ids `from..=to`: recorded with the cursor (so that it outlives a restart), counted,
    /// logged, shown; each id once, across sessions and restarts.
    async fn gap(&mut self, from: i64, to: i64) -> Result<(), UplinkError> {
        let from = from.max(self.gap_through + 1);
        if to < from {
            return Ok(());
        }
        let now = now_ms();
        self.consumer.record_gap(from, to, now).await?;
        self.gap_through = to;
        let lost = u64::try_from(to - from + 1).unwrap_or(0);
        let name = &self.route.spec.name;
        tracing::error!(
            route = %name,
            from,
            to,
            "the journal's hard cap removed {lost} journal entries before this Kafka route forwarded them (a gap)"
        );
        self.route.board.update(name, |s| {
            s.gap += lost;
            s.last_gap = Some((from, to, now));
        });
        self.route.board.error(
            name,
            &format!("gap: journal ids {from} to {to} ({lost} entries) lost to the journal's hard cap"),
        );
        Ok(())
    }

    /// Before sending anything: which of the records after the cursor Kafka already has (a crash between its
    /// acknowledgement and our cursor commit).
    async fn recover(&mut self) -> Result<(), UplinkError> {
        let spec = &self.route.spec;
        // Every record that can have been in flight: the first `MAX_IN_FLIGHT` after the cursor, which a filter
        // read in id order may give in several batches.
        let mut pending = Vec::new();
        while pending.len() < MAX_IN_FLIGHT {
            let batch = self.consumer.next_batch(MAX_IN_FLIGHT - pending.len()).await?;
            pending.extend(batch);
            if self.consumer.caught_up() {
                break;
            }
        }
        self.consumer.rewind();
        // Records wait: if Kafka cannot be reached to scan it, the status ages them (`between_reports`).
        if let Some(first) = pending.iter().find(|m| m.ts >= spec.from_ms) {
            let _ = self.health.oldest_pending.compare_exchange(
                0,
                first.ts.max(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        let hints = self.load_hints().await?;
        let mut wanted: HashMap<(String, i32), Option<i64>> = HashMap::new();
        for m in &pending {
            if m.ts < spec.from_ms {
                continue;
            }
            let Ok(topic) = self.template.expand(&m.topic) else { continue };
            let partitions = self.partitions_of(&topic).await?;
            let partition = kafka::partition_for(key(spec.key, m).unwrap_or_default(), partitions);
            let at = (topic, partition);
            let hint = hints.get(&at).copied();
            wanted.insert(at, hint);
        }
        let client_id = format!("weir-{}-{}", self.route.gateway, spec.name);
        self.skip = kafka::scan_highest_ids(
            &self.route.upstream,
            &client_id,
            &self.route.gateway,
            &spec.name,
            wanted,
            SCAN_TIMEOUT,
        )
        .await?;
        if !self.skip.is_empty() {
            tracing::info!(route = %spec.name, partitions = self.skip.len(), "records already in Kafka will not be sent again");
        }
        Ok(())
    }

    async fn partitions_of(&mut self, topic: &str) -> Result<i32, UplinkError> {
        if let Some(&n) = self.partitions.get(topic) {
            return Ok(n);
        }
        let n = kafka::partitions(&self.producer, topic, METADATA_TIMEOUT).await?;
        self.partitions.insert(topic.to_owned(), n);
        Ok(n)
    }

    /// Turns one journal message into a record and hands it to librdkafka.
    async fn send(&mut self, m: StoredMessage) -> Result<(), UplinkError> {
        let spec = &self.route.spec;
        let slot = Slot { id: m.id, ts: m.ts, done: true, sent: Instant::now(), topic: None };
        if m.ts < spec.from_ms {
            self.queue.push_back(slot);
            return Ok(());
        }
        let topic = match self.template.expand(&m.topic) {
            Ok(t) => t,
            Err(reason) => {
                self.dead_letter(&m, "", &reason).await?;
                self.queue.push_back(slot);
                return Ok(());
            }
        };
        let partitions = match self.partitions_of(&topic).await {
            Ok(n) => n,
            Err(e) => {
                // Most likely the topic does not exist (yet): wait for it, lose nothing.
                self.broken = Some(e);
                return Ok(());
            }
        };
        let record_key = key(spec.key, &m);
        let partition = kafka::partition_for(record_key.unwrap_or_default(), partitions);
        if self.skip.get(&(topic.clone(), partition)).is_some_and(|&max| m.id <= max) {
            self.route.board.update(&spec.name, |s| s.skipped_duplicates += 1);
            self.queue.push_back(slot);
            return Ok(());
        }
        let value = match format::value(spec.format, &mut self.aliases, self.route.journal.pool(), &m).await?
        {
            Ok(v) => v,
            Err(reason) => {
                self.dead_letter(&m, &topic, &reason).await?;
                self.queue.push_back(slot);
                return Ok(());
            }
        };
        let headers = headers(&self.route.gateway, &spec.name, &m);
        let mut record = BaseRecord::with_opaque_to(&topic, Box::new(m.id))
            .partition(partition)
            .payload(&value)
            .timestamp(m.ts)
            .headers(headers);
        if let Some(k) = record_key {
            record = record.key(k);
        }
        self.queue.push_back(Slot { done: false, topic: Some(topic.clone()), ..slot });
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((e, back)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    // librdkafka's queue is full: take delivery reports until there is room.
                    record = back;
                    match tokio::time::timeout(Duration::from_millis(100), self.delivered.recv()).await {
                        Ok(Some(d)) => self.settle(d).await?,
                        Ok(None) => return Err(UplinkError::Fatal("the producer stopped reporting".into())),
                        Err(_) => {}
                    }
                }
                Err((e, _)) if kafka::is_permanent(&e) => {
                    self.dead_letter(&m, &topic, &e.to_string()).await?;
                    self.mark_done(m.id);
                    return Ok(());
                }
                Err((e, _)) => {
                    self.broken = Some(UplinkError::Refused(e));
                    return Ok(());
                }
            }
        }
    }

    /// A delivery report: acknowledged, refused for good (dead letter), or failed (new session).
    async fn settle(&mut self, d: Delivered) -> Result<(), UplinkError> {
        match d.result {
            Ok((partition, offset)) => {
                if let Some(topic) = self.slot(d.id).and_then(|s| s.topic.clone()) {
                    let entry = self.acked_offsets.entry((topic, partition)).or_insert((offset, d.id));
                    if offset >= entry.0 {
                        *entry = (offset, d.id);
                    }
                }
                self.mark_done(d.id);
                self.last_progress = Instant::now();
                let now = now_ms();
                self.route.board.update(&self.route.spec.name, |s| {
                    s.forwarded += 1;
                    s.last_ack_ms = Some(now);
                });
            }
            Err(e) if kafka::is_permanent(&e) => {
                if let Some(m) = self.reread(d.id).await? {
                    let topic = self.template.expand(&m.topic).unwrap_or_default();
                    self.dead_letter(&m, &topic, &e.to_string()).await?;
                }
                self.mark_done(d.id);
            }
            Err(e) => {
                if self.broken.is_none() {
                    self.broken = Some(UplinkError::Refused(e));
                }
            }
        }
        Ok(())
    }

    fn slot(&self, id: i64) -> Option<&Slot> {
        self.queue.binary_search_by_key(&id, |s| s.id).ok().and_then(|i| self.queue.get(i))
    }

    fn mark_done(&mut self, id: i64) {
        if let Ok(i) = self.queue.binary_search_by_key(&id, |s| s.id)
            && let Some(slot) = self.queue.get_mut(i)
        {
            slot.done = true;
        }
    }

    /// Moves the cursor over what is done, in order, and commits it now and then.
    async fn advance(&mut self) -> Result<(), UplinkError> {
        while self.queue.front().is_some_and(|s| s.done) {
            self.pending_commit = self.queue.pop_front().map(|s| s.id);
        }
        if self.last_commit.elapsed() >= COMMIT_EVERY {
            self.save_progress().await?;
        }
        Ok(())
    }

    /// Commits the cursor, and (less often) the offsets the start-up scan begins from. The offsets are saved
    /// only after the cursor, so each is of a record at or before it: a lower bound of where to look.
    async fn save_progress(&mut self) -> Result<(), UplinkError> {
        self.last_commit = Instant::now();
        if let Some(through) = self.pending_commit.take()
            && through > self.consumer.position()
        {
            self.consumer.commit(through).await?;
            let position = self.consumer.position();
            self.route.board.update(&self.route.spec.name, |s| s.position = position);
        }
        if self.last_hints.elapsed() < HINTS_EVERY {
            return Ok(());
        }
        self.last_hints = Instant::now();
        let position = self.consumer.position();
        let route = &self.route.spec.name;
        for ((topic, partition), (offset, id)) in &self.acked_offsets {
            let at = (topic.clone(), *partition);
            if *id > position || self.hints_saved.get(&at) == Some(offset) {
                continue;
            }
            sqlx::query(
                "INSERT INTO kafka_route_offsets (route, topic, partition, offset) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (route, topic, partition) DO UPDATE SET offset = excluded.offset",
            )
            .bind(route)
            .bind(topic)
            .bind(partition)
            .bind(offset)
            .execute(&self.route.config_db)
            .await?;
            self.hints_saved.insert(at, *offset);
        }
        Ok(())
    }

    async fn load_hints(&self) -> Result<HashMap<(String, i32), i64>, UplinkError> {
        let rows: Vec<(String, i32, i64)> =
            sqlx::query_as("SELECT topic, partition, offset FROM kafka_route_offsets WHERE route = ?")
                .bind(&self.route.spec.name)
                .fetch_all(&self.route.config_db)
                .await?;
        Ok(rows.into_iter().map(|(t, p, o)| ((t, p), o)).collect())
    }

    /// On stop: send nothing more, give what is in flight a bounded time to be acknowledged.
    async fn drain(&mut self) -> Result<(), UplinkError> {
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while self.queue.iter().any(|s| !s.done) {
            match tokio::time::timeout_at(deadline, self.delivered.recv()).await {
                Ok(Some(d)) => self.settle(d).await?,
                Ok(None) | Err(_) => break,
            }
        }
        while self.queue.front().is_some_and(|s| s.done) {
            self.pending_commit = self.queue.pop_front().map(|s| s.id);
        }
        self.last_hints = Instant::now() - HINTS_EVERY;
        Ok(())
    }

    /// A message whose record failed after it was sent: read again from the journal for the dead letter.
    async fn reread(&self, id: i64) -> Result<Option<StoredMessage>, UplinkError> {
        let query = crate::store::history::HistoryQuery {
            order: crate::store::history::Order::OldestFirst,
            after: Some(id - 1),
            limit: 1,
            ..crate::store::history::HistoryQuery::new("#")
        };
        let page = crate::store::history::query(self.route.journal.pool(), &query).await?;
        Ok(page.messages.into_iter().find(|m| m.id == id))
    }

    /// Keeps a record Kafka refused for good, with the reason: counted, listed, never lost silently.
    async fn dead_letter(&self, m: &StoredMessage, topic: &str, reason: &str) -> Result<(), UplinkError> {
        let route = &self.route.spec.name;
        tracing::warn!(route = %route, journal_id = m.id, mqtt_topic = %m.topic, "Kafka refused a record for good: {reason}; kept in the dead letters");
        sqlx::query(
            "INSERT INTO kafka_dead_letters (route, ts, journal_id, source, destination, reason, payload) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(route)
        .bind(now_ms())
        .bind(m.id)
        .bind(&m.topic)
        .bind(topic)
        .bind(reason)
        .bind(&m.payload)
        .execute(&self.route.config_db)
        .await?;
        self.route.board.update(route, |s| s.dead_letters += 1);
        self.route.board.error(route, &format!("dead letter: {reason}"));
        Ok(())
    }

    /// Health from acknowledgements: lag age, stall, alarm, rate.
    fn report(&mut self) {
        let elapsed = self.last_report.elapsed();
        if elapsed < Duration::from_millis(250) {
            return;
        }
        self.last_report = Instant::now();
        let spec = &self.route.spec;
        let now = now_ms();
        let oldest = self.queue.iter().find(|s| !s.done);
        let lag_ms = oldest.map_or(0, |s| (now - s.ts).max(0));
        let waiting_since = oldest.map(|s| s.sent.elapsed());
        self.health.oldest_pending.store(oldest.map_or(0, |s| s.ts.max(1)), Ordering::Relaxed);
        self.health.reported.store(now, Ordering::Relaxed);
        let alarm = self.health.lag(spec, lag_ms);
        let broken = self.broken.as_ref().map(ToString::to_string);
        let forwarded_at_report = &mut self.forwarded_at_report;
        self.route.board.update(&spec.name, |s| {
            s.lag_ms = lag_ms;
            s.lag_alarm = alarm;
            s.rate = (s.forwarded.saturating_sub(*forwarded_at_report)) as f64 / elapsed.as_secs_f64();
            *forwarded_at_report = s.forwarded;
            let last_ack_age = s.last_ack_ms.map_or(i64::MAX, |t| now - t);
            s.state = match waiting_since {
                None => RouteState::Idle,
                Some(w) if w.as_millis() > STALL_AFTER_MS as u128 && last_ack_age > STALL_AFTER_MS => {
                    RouteState::Stalled
                }
                Some(_) if broken.is_some() => RouteState::Stalled,
                Some(_) => RouteState::Forwarding,
            };
            if let Some(b) = &broken
                && s.last_error.as_deref() != Some(b.as_str())
            {
                s.last_error = Some(b.clone());
                s.last_error_ms = Some(now);
            }
        });
    }
}

/// A dead letter to send again: its id in `kafka_dead_letters` and the message it holds.
#[derive(Debug)]
pub(crate) struct Letter {
    pub(crate) id: i64,
    pub(crate) message: StoredMessage,
}

/// What a replay did, by dead letter id.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    pub(crate) sent: Vec<i64>,
    pub(crate) refused: Vec<(i64, String)>,
}

/// Sends dead letters again through the route (its topic template, key, format and headers, the original
/// journal id in `weir.id`), each to a definite end within `timeout`: acknowledged, or refused with the reason.
pub(crate) async fn replay(
    spec: &Uplink,
    upstream: &Upstream,
    gateway: &str,
    journal: &SqlitePool,
    letters: Vec<Letter>,
    timeout: Duration,
) -> Result<Replayed, UplinkError> {
    let template = TopicTemplate::parse(&spec.topic)?;
    let client_id = format!("weir-{gateway}-{}-replay", spec.name);
    let (producer, mut delivered, _errors) = kafka::bounded_producer(upstream, &client_id, timeout)?;
    let producer = Arc::new(producer);
    let mut book = AliasBook::default();
    let mut partitions: HashMap<String, i32> = HashMap::new();
    let mut done = Replayed::default();
    let mut waiting = std::collections::BTreeSet::new();
    for Letter { id, message: m } in letters {
        let topic = match template.expand(&m.topic) {
            Ok(t) => t,
            Err(reason) => {
                done.refused.push((id, reason));
                continue;
            }
        };
        let count = match partitions.get(&topic) {
            Some(&n) => n,
            None => match kafka::partitions(&producer, &topic, METADATA_TIMEOUT).await {
                Ok(n) => *partitions.entry(topic.clone()).or_insert(n),
                Err(e) => {
                    done.refused.push((id, e.to_string()));
                    continue;
                }
            },
        };
        let value = match format::value(spec.format, &mut book, journal, &m).await? {
            Ok(v) => v,
            Err(reason) => {
                done.refused.push((id, reason));
                continue;
            }
        };
        let record_key = key(spec.key, &m);
        let mut record = BaseRecord::with_opaque_to(&topic, Box::new(id))
            .partition(kafka::partition_for(record_key.unwrap_or_default(), count))
            .payload(&value)
            .timestamp(m.ts)
            .headers(headers(gateway, &spec.name, &m));
        if let Some(k) = record_key {
            record = record.key(k);
        }
        match producer.send(record) {
            Ok(()) => {
                waiting.insert(id);
            }
            Err((e, _)) => done.refused.push((id, e.to_string())),
        }
    }
    let deadline = tokio::time::Instant::now() + timeout + Duration::from_secs(5);
    while !waiting.is_empty() {
        match tokio::time::timeout_at(deadline, delivered.recv()).await {
            Ok(Some(d)) => {
                waiting.remove(&d.id);
                match d.result {
                    Ok(_) => done.sent.push(d.id),
                    Err(e) => done.refused.push((d.id, e.to_string())),
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    // librdkafka ends each within `timeout`; this is the bound on the bound.
    for id in waiting {
        done.refused.push((id, "no answer from Kafka in time (it may have the record)".to_owned()));
    }
    Ok(done)
}

/// The record key a message gets.
fn key(spec: KeySpec, m: &StoredMessage) -> Option<&[u8]> {
    match spec {
        KeySpec::Topic => Some(m.topic.as_bytes()),
        KeySpec::Client => m.client_id.as_deref().map(str::as_bytes),
        KeySpec::Level(n) => m.topic.split('/').nth(n - 1).map(str::as_bytes),
    }
}

/// The headers every record carries: where it comes from (gateway, route, journal id, which the start-up scan
/// reads back) and the MQTT message's properties.
fn headers(gateway: &str, route: &str, m: &StoredMessage) -> OwnedHeaders {
    let id = m.id.to_string();
    let qos = m.qos.to_string();
    let mut headers = OwnedHeaders::new_with_capacity(9 + m.user_properties.len())
        .insert(Header { key: HEADER_GATEWAY, value: Some(gateway.as_bytes()) })
        .insert(Header { key: HEADER_ROUTE, value: Some(route.as_bytes()) })
        .insert(Header { key: HEADER_ID, value: Some(id.as_bytes()) })
        .insert(Header { key: "mqtt.topic", value: Some(m.topic.as_bytes()) })
        .insert(Header { key: "mqtt.qos", value: Some(qos.as_bytes()) })
        .insert(Header {
            key: "mqtt.retain",
            value: Some(if m.retain { "true" } else { "false" }.as_bytes()),
        });
    if let Some(c) = &m.client_id {
        headers = headers.insert(Header { key: "mqtt.client_id", value: Some(c.as_bytes()) });
    }
    if let Some(u) = &m.username {
        headers = headers.insert(Header { key: "mqtt.username", value: Some(u.as_bytes()) });
    }
    if let Some(ct) = &m.content_type {
        headers = headers.insert(Header { key: "mqtt.content_type", value: Some(ct.as_bytes()) });
    }
    for (k, v) in &m.user_properties {
        headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &[u8]) -> StoredMessage {
        StoredMessage {
            id: 7,
            ts: 1_700_000_000_000,
            topic: "plant/line1/temp".into(),
            payload: payload.to_vec(),
            qos: 1,
            retain: false,
            client_id: Some("dev1".into()),
            username: None,
            content_type: Some("text/plain".into()),
            response_topic: None,
            correlation_data: None,
            user_properties: vec![("unit".into(), "C".into())],
            payload_ref: None,
        }
    }

    #[test]
    fn keys_and_envelopes() {
        let m = message(b"21.5");
        assert_eq!(key(KeySpec::Topic, &m), Some(&b"plant/line1/temp"[..]));
        assert_eq!(key(KeySpec::Client, &m), Some(&b"dev1"[..]));
        assert_eq!(key(KeySpec::Level(2), &m), Some(&b"line1"[..]));
        assert_eq!(key(KeySpec::Level(9), &m), None);
        let v: serde_json::Value = serde_json::from_slice(&format::envelope(&m)).unwrap();
        assert_eq!(v["payload"], "21.5");
        assert_eq!(v["payload_encoding"], "utf8");
        assert_eq!(v["journal_id"], 7);
        assert_eq!(v["user_properties"][0][1], "C");
        let v: serde_json::Value =
            serde_json::from_slice(&format::envelope(&message(&[0xff, 0x00]))).unwrap();
        assert_eq!(v["payload"], "/wA=");
        assert_eq!(v["payload_encoding"], "base64");
    }
}
