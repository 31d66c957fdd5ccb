//! The message journal: every accepted message, appended by one writer task with group commit.
//!
//! The writer thread (`store/writer.rs`) is the only writer of `journal.sqlite`: appends, session changes, cursor
//! commits and the start-up cleanup reach it in order on one channel (appends bounded by places in its queue), and
//! this handle's pool is read-only. The writer takes everything waiting (up to `max_batch`), inserts it in
//! one transaction with multi-row INSERTs and commits once: with `synchronous = FULL` that is one fsync for the
//! whole group, so durability costs one sync per batch rather than per message, and batches grow by themselves
//! when load rises. Only then are the waiting publishers told their messages are durable (and acknowledged).
//!
//! Retention runs in the same task, in small steps between batches (so it never stalls ingest for long and never
//! contends with the writer for SQLite's write lock): rows older than `max_age`, and the oldest rows while the
//! file is larger than `max_bytes`, except rows a durable consumer's cursor still needs; beyond `hard_cap_bytes`
//! the oldest go regardless, and if that is not enough new QoS 1/2 messages are refused (the client sees it).
//! Freed pages are returned to the file system with `PRAGMA incremental_vacuum`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use sqlx::sqlite::SqliteSynchronous;
use sqlx::{Row, SqlitePool};
use tokio::sync::{mpsc, oneshot};

pub use super::ops::JournalStats;
use super::ops::{Answer, CursorChange, CursorCommit, Done, Op, Queued, SessionOp, Shared};
use super::payload_log;
use super::row::{StoredRow, queued_delivery};
pub use super::settings::{Durability, JournalConfig, Retention};
use super::writer::Writer;
use super::{Database, StoreError, unix_millis};
use crate::mqtt::broker::{
    ClientId, Completion, Delivery, Durable, Message, MessageProperties, PresenceChange, PresenceRecord,
    PresenceState, Refusal, RestoredDelivery, SessionRecord, SpillLoad, Will,
};
use crate::mqtt::codec::{QoS, RetainHandling, SubscribeFilter, SubscriptionOptions, topic};

/// A handle to the journal: cheap to clone.
#[derive(Debug, Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

/// What a durable consumer's cursor holds of its gaps ([`Journal::record_gap`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordedGaps {
    /// Journal ids lost, in all.
    pub total: u64,
    /// The last gap: its first and last journal id, and when it was found (unix ms).
    pub last: Option<(i64, i64, i64)>,
}

#[derive(Debug)]
struct Inner {
    /// To the writer thread, in order: appends, session changes, and control. Unbounded, so that session
    /// changes never block the router; appends are bounded by `shared.permits` instead.
    ops: mpsc::UnboundedSender<Op>,
    /// The places in the writer's queue, the counters and the refusing flag, which the writer updates.
    shared: Arc<Shared>,
    /// `JournalConfig::queue`: no message takes more places than there are.
    places: u32,
    pool: SqlitePool,
    include: Vec<String>,
    exclude: Vec<String>,
    /// The id the next append gets. Held while that append is sent, so that ids reach the writer (and are
    /// committed) in ascending order: a reader that has seen id n never later finds a row below it appear.
    next_id: Mutex<i64>,
    /// The payload log's directory (`store/payload_log.rs`).
    payload_dir: std::path::PathBuf,
}

impl Journal {
    /// Opens `journal.sqlite` in `dir` and starts the writer. `Durability::Off` is the caller's to honour by not
    /// opening a journal at all.
    pub async fn open(dir: &std::path::Path, config: JournalConfig) -> Result<Journal, StoreError> {
        let synchronous = match config.durability {
            Durability::Synced => SqliteSynchronous::Full,
            Durability::Batched { .. } | Durability::Off => SqliteSynchronous::Normal,
        };
        let (migrated, _recovered) =
            super::open(dir, Database::Journal, synchronous, config.max_pages).await?;
        let path = dir.join(super::JOURNAL_FILE);
        // The writer thread is the only writer: the pool that checked, created and migrated the file goes, and
        // readers get connections that refuse writes.
        let pool = reader_pool(&path).await;
        migrated.close().await;
        let pool = pool?;
        let (ops, receiver) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            ops,
            shared: Arc::new(Shared {
                permits: tokio::sync::Semaphore::new(config.queue.max(1)),
                stats: JournalStats::default(),
                refusing: AtomicBool::new(false),
            }),
            places: u32::try_from(config.queue.max(1)).unwrap_or(u32::MAX),
            pool,
            include: config.include.clone(),
            exclude: config.exclude.clone(),
            next_id: Mutex::new(0),
            payload_dir: payload_log::dir_of(&path),
        });
        let next_id = Writer::start(&path, config.clone(), Arc::downgrade(&inner.shared), receiver)?;
        *inner.next_id.lock().unwrap_or_else(PoisonError::into_inner) = next_id;
        spawn_timer(Arc::downgrade(&inner), config.index_interval, || Op::Index(None));
        spawn_timer(Arc::downgrade(&inner), config.retention.prune_interval, || Op::Prune(None));
        if let Durability::Batched { window } = config.durability {
            spawn_timer(Arc::downgrade(&inner), window, || Op::Checkpoint);
        }
        Ok(Journal { inner })
    }

    /// Whether messages on `topic` are recorded (the include/exclude filters).
    pub fn records(&self, topic_name: &str) -> bool {
        let included =
            self.inner.include.is_empty() || self.inner.include.iter().any(|f| topic::matches(f, topic_name));
        included && !self.inner.exclude.iter().any(|f| topic::matches(f, topic_name))
    }

    /// Appends a message; the returned receiver resolves once it is committed (or refused).
    pub async fn append(&self, message: &Arc<Message>) -> Completion {
        let (done, completion) = oneshot::channel();
        if !self.records(&message.topic) {
            let _ = done.send(Ok(()));
            return completion;
        }
        // Waits while the writer's queue is full: backpressure on publishers faster than the disk.
        let places = self.places(message);
        match self.inner.shared.permits.acquire_many(places).await {
            Ok(permit) => permit.forget(),
            Err(_) => {
                let _ = done.send(Err(Refusal::Unavailable));
                return completion;
            }
        }
        if let Err(Some(done)) = self.send_append(message, places, Some(done)) {
            let _ = done.send(Err(Refusal::Unavailable));
        }
        completion
    }

    /// Gives the message its id in the journal and sends it to the writer. The id is known from here on, before
    /// the commit, so that the broker can route the message at once and session queues can refer to it: their
    /// changes travel on the same channel, after it. An id whose append fails is never used again.
    fn send_append(
        &self,
        message: &Arc<Message>,
        places: u32,
        done: Option<Done>,
    ) -> Result<(), Option<Done>> {
        let ts = unix_millis(SystemTime::now());
        let mut next_id = self.inner.next_id.lock().unwrap_or_else(PoisonError::into_inner);
        let id = *next_id;
        let op = Op::Append(Queued { id, ts, message: message.clone(), places, done });
        match self.inner.ops.send(op) {
            Ok(()) => {
                *next_id += 1;
                drop(next_id);
                let _ = message.journal_id.set(id);
                Ok(())
            }
            Err(mpsc::error::SendError(Op::Append(queued))) => Err(queued.done),
            Err(_) => Err(None),
        }
    }

    /// Appends without waiting for the writer, for QoS 0: if the writer is behind, the message is not recorded
    /// (counted in [`JournalStats::dropped_qos0`]) rather than holding up the publisher.
    pub fn append_nowait(&self, message: &Arc<Message>) {
        if !self.records(&message.topic) {
            return;
        }
        let places = self.places(message);
        let Ok(permit) = self.inner.shared.permits.try_acquire_many(places) else {
            self.inner.shared.stats.dropped_qos0.fetch_add(1, Ordering::Relaxed);
            return;
        };
        permit.forget();
        if self.send_append(message, places, None).is_err() {
            self.inner.shared.stats.dropped_qos0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The places in the writer's queue that `message` takes: one per started KiB of topic and payload.
    fn places(&self, message: &Message) -> u32 {
        let bytes = message.topic.len() + message.payload.len();
        u32::try_from(1 + bytes / 1024).unwrap_or(u32::MAX).min(self.inner.places)
    }

    /// Waits until everything appended before this call is committed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.ops.send(Op::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Adds everything committed before this call to the topic index now, instead of within
    /// [`JournalConfig::index_interval`].
    pub async fn index_now(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.ops.send(Op::Index(Some(tx))).is_ok() {
            let _ = rx.await;
        }
    }

    /// Runs one pruning round now; returns the rows deleted.
    pub async fn prune_now(&self) -> u64 {
        let (tx, rx) = oneshot::channel();
        if self.inner.ops.send(Op::Prune(Some(tx))).is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// The journal's readers (history, exports, consumers). Read-only (`query_only`): every write goes through
    /// the writer thread, in order with the appends.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    pub fn stats(&self) -> &JournalStats {
        &self.inner.shared.stats
    }

    /// True while the journal refuses QoS 1/2 (disk full or hard cap); cleared as soon as a commit succeeds.
    pub fn is_refusing(&self) -> bool {
        self.inner.shared.refusing.load(Ordering::Relaxed)
    }

    /// The retained messages as of the last commit, for the broker to start with. Messages whose expiry interval
    /// has run out (counting the time the gateway was down) are left out; the others keep what remains of it.
    pub async fn retained(&self) -> Result<Vec<Message>, StoreError> {
        let rows =
            sqlx::query("SELECT m.* FROM retained r JOIN messages m ON m.id = r.message_id ORDER BY m.id")
                .fetch_all(&self.inner.pool)
                .await?;
        let now = unix_millis(SystemTime::now());
        let mut out = Vec::with_capacity(rows.len());
        let mut log = payload_log::Reader::new(self.inner.payload_dir.clone());
        for row in rows {
            if let Some(message) = message_from_row(&row, now, true, &mut log)? {
                out.push(message);
            }
        }
        Ok(out)
    }

    /// The persistent sessions as of the last commit, with their subscriptions, for the broker to start with:
    /// their in-flight deliveries and the first `window` queued ones; the rest stay in the store, spilled.
    /// Deliveries of sessions that were not persistent, of messages no longer in the journal, and queued ones
    /// whose message expired are removed, by the writer (`Op::Restore`, then one change per expired delivery).
    pub async fn sessions(&self, window: usize) -> Result<Vec<SessionRecord>, StoreError> {
        self.request(|done| Op::Restore { window, done }).await?;
        let mut records = Vec::new();
        let mut index = std::collections::HashMap::new();
        for row in sqlx::query("SELECT * FROM sessions").fetch_all(&self.inner.pool).await? {
            let client_id: String = row.try_get("client_id")?;
            let will = will_from_row(&row, &client_id)?;
            index.insert(client_id.clone(), records.len());
            records.push(SessionRecord {
                client_id: ClientId::new(&client_id),
                username: row.try_get("username")?,
                expiry: u32::try_from(row.try_get::<i64, _>("expiry")?).unwrap_or(u32::MAX),
                disconnected_at: row.try_get("disconnected_at")?,
                will,
                will_due: row.try_get("will_due")?,
                subscriptions: Vec::new(),
                messages: Vec::new(),
                spilled: 0,
            });
        }
        for row in
            sqlx::query("SELECT * FROM subscriptions ORDER BY rowid").fetch_all(&self.inner.pool).await?
        {
            let client_id: String = row.try_get("client_id")?;
            let Some(record) = index.get(&client_id).and_then(|&i| records.get_mut(i)) else { continue };
            let options = SubscriptionOptions {
                qos: QoS::from_u8(u8::try_from(row.try_get::<i64, _>("qos")?).unwrap_or(0))
                    .unwrap_or_default(),
                no_local: row.try_get("no_local")?,
                retain_as_published: row.try_get("retain_as_published")?,
                retain_handling: match row.try_get::<i64, _>("retain_handling")? {
                    1 => RetainHandling::SendAtNewSubscribe,
                    2 => RetainHandling::DoNotSend,
                    _ => RetainHandling::SendAtSubscribe,
                },
            };
            let id = row.try_get::<Option<i64>, _>("subscription_id")?.and_then(|i| u32::try_from(i).ok());
            record.subscriptions.push((SubscribeFilter { filter: row.try_get("filter")?, options }, id));
        }
        let now = unix_millis(SystemTime::now());
        let rows = sqlx::query(
            "SELECT s.seq, s.client_id AS session, s.qos AS delivered_qos, s.retain AS delivered_retain, s.sub_ids, \
             s.packet_id, s.released, m.* FROM session_messages s JOIN messages m ON m.id = s.message_id \
             WHERE s.spilled = 0 ORDER BY s.seq",
        )
        .fetch_all(&self.inner.pool)
        .await?;
        let mut expired = Vec::new();
        let mut log = payload_log::Reader::new(self.inner.payload_dir.clone());
        for row in rows {
            let client_id: String = row.try_get("session")?;
            let Some(record) = index.get(&client_id).and_then(|&i| records.get_mut(i)) else { continue };
            let packet_id = row.try_get::<Option<i64>, _>("packet_id")?.and_then(|p| u16::try_from(p).ok());
            // An expired message still in flight is resent anyway: its packet id is in use at the client. An
            // expired queued one is dropped.
            let Some(delivery) =
                delivery_from_row(&row, if packet_id.is_some() { i64::MIN / 2 } else { now }, &mut log)?
            else {
                expired.push((ClientId::new(&client_id), row.try_get::<i64, _>("id")?));
                continue;
            };
            record.messages.push(RestoredDelivery {
                delivery,
                packet_id,
                released: row.try_get("released")?,
            });
        }
        if !expired.is_empty() {
            for (client, message_id) in expired {
                self.session(SessionOp::Delivered { client, message_id });
            }
            self.flush().await;
        }
        for row in sqlx::query(
            "SELECT client_id, count(*) AS n FROM session_messages WHERE spilled = 1 GROUP BY client_id",
        )
        .fetch_all(&self.inner.pool)
        .await?
        {
            let client_id: String = row.try_get("client_id")?;
            if let Some(record) = index.get(&client_id).and_then(|&i| records.get_mut(i)) {
                record.spilled = u64::try_from(row.try_get::<i64, _>("n")?).unwrap_or(0);
            }
        }
        Ok(records)
    }

    /// Each client's last presence as of the last commit, for the broker to start with: those still `online`
    /// were connected when the gateway stopped, with their wills.
    pub async fn presence(&self) -> Result<Vec<PresenceRecord>, StoreError> {
        let mut out = Vec::new();
        for row in
            sqlx::query("SELECT * FROM presence ORDER BY client_id").fetch_all(&self.inner.pool).await?
        {
            let client_id: String = row.try_get("client_id")?;
            let state: String = row.try_get("state")?;
            let Some(state) = PresenceState::parse(&state) else { continue };
            let will = will_from_row(&row, &client_id)?;
            out.push(PresenceRecord {
                client_id: ClientId::new(&client_id),
                state,
                reason: row.try_get("reason")?,
                ts: row.try_get("ts")?,
                username: row.try_get("username")?,
                peer: row.try_get("peer")?,
                will,
            });
        }
        Ok(out)
    }

    /// Stores a consumer's progress: it has processed everything up to and including `position`. The writer
    /// commits it after the appends sent before it (never visible before the rows it covers), and it is durable
    /// as the journal's durability says (with `synced`, on disk) when this returns.
    pub async fn commit_cursor(&self, name: &str, position: i64) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.request(|done| Op::Cursor(CursorCommit { name, change: CursorChange::Position(position), done }))
            .await
    }

    /// Deletes a durable consumer's cursor (the consumer is gone), through the writer like every write:
    /// retention may then prune what it held.
    pub async fn delete_cursor(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.request(|done| Op::Cursor(CursorCommit { name, change: CursorChange::Delete, done })).await
    }

    /// Records a gap in a durable consumer's reading (journal ids `from..=to`, gone before it read them, found at
    /// `at`, unix ms) with its cursor, through the writer: the count and the last gap survive a restart.
    pub async fn record_gap(&self, name: &str, from: i64, to: i64, at: i64) -> Result<(), StoreError> {
        let name = name.to_owned();
        let change = CursorChange::Gap { from, to, at };
        self.request(|done| Op::Cursor(CursorCommit { name, change, done })).await
    }

    /// The gaps recorded with a consumer's cursor (none if it has no cursor).
    pub async fn recorded_gaps(&self, name: &str) -> Result<RecordedGaps, StoreError> {
        let row = sqlx::query("SELECT gap_total, gap_from, gap_to, gap_at FROM cursors WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.inner.pool)
            .await?;
        let Some(row) = row else { return Ok(RecordedGaps::default()) };
        let last = match (row.try_get("gap_from")?, row.try_get("gap_to")?, row.try_get("gap_at")?) {
            (Some(from), Some(to), Some(at)) => Some((from, to, at)),
            _ => None,
        };
        Ok(RecordedGaps { total: u64::try_from(row.try_get::<i64, _>("gap_total")?).unwrap_or(0), last })
    }

    pub async fn cursor(&self, name: &str) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar("SELECT position FROM cursors WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.inner.pool)
            .await?)
    }

    /// Commits what was queued, stops the writer and closes the database. Appends after this are refused.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.ops.send(Op::Close(tx)).is_ok() {
            let _ = rx.await;
        }
        self.inner.pool.close().await;
    }
}

/// The will stored in a row of `sessions` or `presence` (columns `will_*`), if any.
fn will_from_row(row: &sqlx::sqlite::SqliteRow, client_id: &str) -> Result<Option<Will>, StoreError> {
    let Some(topic) = row.try_get::<Option<String>, _>("will_topic")? else { return Ok(None) };
    let payload: Vec<u8> = row.try_get::<Option<Vec<u8>>, _>("will_payload")?.unwrap_or_default();
    let qos = row.try_get::<Option<i64>, _>("will_qos")?.and_then(|q| u8::try_from(q).ok());
    let retain = row.try_get::<Option<bool>, _>("will_retain")?.unwrap_or(false);
    let mut message = Message::new(&topic, payload, qos.and_then(QoS::from_u8).unwrap_or_default(), retain);
    message.origin = Some(ClientId::new(client_id));
    message.properties = MessageProperties {
        payload_format_indicator: row
            .try_get::<Option<i64>, _>("will_payload_format")?
            .and_then(|p| u8::try_from(p).ok()),
        message_expiry_interval: row
            .try_get::<Option<i64>, _>("will_expiry")?
            .and_then(|e| u32::try_from(e).ok()),
        content_type: row.try_get("will_content_type")?,
        response_topic: row.try_get("will_response_topic")?,
        correlation_data: row.try_get::<Option<Vec<u8>>, _>("will_correlation_data")?.map(bytes::Bytes::from),
        user_properties: row
            .try_get::<Option<String>, _>("will_user_properties")?
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default(),
    }
    .boxed();
    let delay = row.try_get::<Option<i64>, _>("will_delay")?.and_then(|d| u32::try_from(d).ok());
    Ok(Some(Will { message, delay: delay.unwrap_or(0) }))
}

impl Durable for Journal {
    fn record<'a>(
        &'a self,
        message: &'a Arc<Message>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Completion> + Send + 'a>> {
        Box::pin(self.append(message))
    }

    fn record_nowait(&self, message: &Arc<Message>) {
        self.append_nowait(message);
    }

    fn refusing(&self) -> bool {
        self.is_refusing()
    }

    fn presence(&self, change: &PresenceChange) {
        self.session(SessionOp::Presence(Box::new(change.clone())));
    }

    fn save_session(&self, session: &SessionRecord) {
        self.session(SessionOp::Save(Box::new(session.clone())));
    }

    fn remove_session(&self, client: &ClientId) {
        self.session(SessionOp::Remove(client.clone()));
    }

    fn save_subscription(&self, client: &ClientId, filter: &SubscribeFilter, id: Option<u32>) {
        self.session(SessionOp::Subscribe(client.clone(), filter.clone(), id));
    }

    fn remove_subscription(&self, client: &ClientId, filter: &str) {
        self.session(SessionOp::Unsubscribe(client.clone(), filter.to_owned()));
    }

    fn queued(&self, client: &ClientId, message_id: i64, delivery: &Delivery) {
        self.session(queued(client, message_id, delivery, None));
    }

    fn in_flight(&self, client: &ClientId, message_id: i64, packet_id: u16, released: bool) {
        self.session(SessionOp::InFlight { client: client.clone(), message_id, packet_id, released });
    }

    fn delivered(&self, client: &ClientId, message_id: i64) {
        self.session(SessionOp::Delivered { client: client.clone(), message_id });
    }

    fn spill(&self, client: &ClientId, generation: u64, message_id: i64, delivery: &Delivery) {
        self.session(queued(client, message_id, delivery, Some(generation)));
    }

    fn load_spilled(
        &self,
        client: &ClientId,
        generation: u64,
        limit: usize,
        keep: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = SpillLoad> + Send + 'static>> {
        let (done, loaded) = oneshot::channel();
        self.session(SessionOp::Load { client: client.clone(), generation, limit, keep, done });
        // A dropped sender (the writer stopped, or its transaction failed) means nothing was consumed.
        Box::pin(async move { loaded.await.unwrap_or(SpillLoad { failed: true, ..SpillLoad::default() }) })
    }

    fn discard_queue(&self, client: &ClientId) {
        self.session(SessionOp::Discard(client.clone()));
    }
}

impl Journal {
    /// Sends the writer a request and waits for its answer.
    async fn request<T>(&self, op: impl FnOnce(Answer<T>) -> Op) -> Result<T, StoreError> {
        let (done, answer) = oneshot::channel();
        if self.inner.ops.send(op(done)).is_err() {
            return Err(StoreError::Writer("the journal is closed".into()));
        }
        match answer.await {
            Ok(result) => result.map_err(StoreError::Writer),
            Err(_) => Err(StoreError::Writer("the journal writer stopped".into())),
        }
    }

    /// Session changes never wait and are never dropped while the writer runs.
    fn session(&self, op: SessionOp) {
        let _ = self.inner.ops.send(Op::Session(op));
    }
}

fn queued(client: &ClientId, message_id: i64, delivery: &Delivery, spilled: Option<u64>) -> SessionOp {
    SessionOp::Queued {
        client: client.clone(),
        message_id,
        qos: delivery.qos,
        retain: delivery.retain,
        sub_ids: delivery.subscription_ids.clone(),
        spilled,
    }
}

/// The journal's pool for readers: connections that refuse writes (`query_only`). A second writer beside the writer
/// thread would contend with it for SQLite's write lock (waiting up to the busy timeout) and escape the order of its
/// channel. None of the settings of [`super::connect_options`] either: WAL and incremental vacuum are properties of
/// the file, set when it was created, and setting `auto_vacuum` on a connection writes the file's header, which
/// would make every new reader connection wait for the writer's lock.
async fn reader_pool(path: &std::path::Path) -> Result<SqlitePool, StoreError> {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(10))
        .pragma("query_only", "ON");
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .min_connections(1)
        .idle_timeout(None)
        .connect_with(options)
        .await
        .map_err(|source| StoreError::Database { path: path.to_owned(), source })
}

fn spawn_timer(inner: std::sync::Weak<Inner>, every: Duration, op: fn() -> Op) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else { return };
            // The writer folds ticks that piled up behind a long batch into one.
            let _ = inner.ops.send(op());
        }
    });
}

/// Rebuilds a journaled message from a sqlx row. `None` if its expiry interval has run out.
fn message_from_row(
    row: &sqlx::sqlite::SqliteRow,
    now: i64,
    retain: bool,
    log: &mut payload_log::Reader,
) -> Result<Option<Message>, sqlx::Error> {
    Ok(StoredRow::from_sqlx(row)?.into_message(now, retain, log))
}

/// A queued delivery from a row of `session_messages` joined with its message. `None` if the message expired.
fn delivery_from_row(
    row: &sqlx::sqlite::SqliteRow,
    now: i64,
    log: &mut payload_log::Reader,
) -> Result<Option<Delivery>, sqlx::Error> {
    let Some(message) = message_from_row(row, now, false, log)? else { return Ok(None) };
    Ok(Some(queued_delivery(
        message,
        row.try_get("delivered_qos")?,
        row.try_get("delivered_retain")?,
        row.try_get("sub_ids")?,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::broker::MessageProperties;
    use crate::store::history::{self, HistoryQuery, Order};

    async fn journal(dir: &std::path::Path, adjust: impl FnOnce(&mut JournalConfig)) -> Journal {
        let mut config = JournalConfig::default();
        config.retention.prune_interval = Duration::from_secs(3600);
        adjust(&mut config);
        Journal::open(dir, config).await.unwrap()
    }

    fn message(topic: &str, payload: impl Into<bytes::Bytes>, qos: QoS) -> Arc<Message> {
        let mut m = Message::new(topic, payload, qos, false);
        m.origin = Some(ClientId::new("device-1"));
        m.username = Some(Arc::from("alice"));
        Arc::new(m)
    }

    /// The payloads of every page of `q`, following `next` to the end.
    async fn every_page(j: &Journal, mut q: HistoryQuery) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let page = history::query(j.pool(), &q).await.unwrap();
            seen.extend(page.messages.iter().map(|m| String::from_utf8(m.payload.clone()).unwrap()));
            match page.next {
                Some(next) => q.after = Some(next),
                None => return seen,
            }
        }
    }

    /// Writes `sql` to the journal's file on a connection of its own, as another program (or a crash) would:
    /// the journal's pool refuses writes.
    fn write_beside(dir: &std::path::Path, sql: &str) {
        let file = rusqlite::Connection::open(dir.join(super::super::JOURNAL_FILE)).unwrap();
        file.busy_timeout(Duration::from_secs(10)).unwrap();
        file.execute_batch(sql).unwrap();
    }

    async fn count(j: &Journal) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM messages").fetch_one(j.pool()).await.unwrap()
    }

    #[tokio::test]
    async fn committed_messages_are_queryable_with_their_properties() {
        let dir = tempfile::tempdir().unwrap();
        let j = journal(dir.path(), |_| {}).await;
        let mut m = Message::new("plant/a/temp", "21.5", QoS::AtLeastOnce, true);
        m.origin = Some(ClientId::new("press-1"));
        m.username = Some(Arc::from("alice"));
        m.properties = MessageProperties {
            content_type: Some("text/plain".into()),
            response_topic: Some("plant/a/reply".into()),
            correlation_data: Some(bytes::Bytes::from_static(b"\x01\x02")),
            user_properties: vec![("line".into(), "4".into())],
            ..MessageProperties::default()
        }
        .boxed();
        let completion = j.append(&Arc::new(m)).await;
        assert_eq!(completion.await.unwrap(), Ok(()));
        let page = history::query(j.pool(), &HistoryQuery::new("plant/#")).await.unwrap();
        let got = &page.messages[0];
        assert_eq!(
            (got.topic.as_str(), got.payload.as_slice(), got.qos, got.retain),
            ("plant/a/temp", &b"21.5"[..], 1, true)
        );
        assert_eq!(got.client_id.as_deref(), Some("press-1"));
        assert_eq!(got.username.as_deref(), Some("alice"));
        assert_eq!(got.content_type.as_deref(), Some("text/plain"));
        assert_eq!(got.response_topic.as_deref(), Some("plant/a/reply"));
        assert_eq!(got.correlation_data.as_deref(), Some(&b"\x01\x02"[..]));
        assert_eq!(got.user_properties, vec![("line".to_owned(), "4".to_owned())]);
        assert_eq!(j.stats().appended.load(Ordering::Relaxed), 1);
        j.close().await;
    }

    #[tokio::test]
    async fn include_and_exclude_filters_choose_what_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let j = journal(dir.path(), |c| {
            c.include = vec!["plant/#".into()];
            c.exclude = vec!["plant/debug/#".into()];
        })
        .await;
        for topic in ["plant/a", "plant/debug/x", "office/b", "$SYS/broker/uptime"] {
            j.append_nowait(&message(topic, "x", QoS::AtMostOnce));
        }
        j.flush().await;
        let page = history::query(j.pool(), &HistoryQuery::new("#")).await.unwrap();
        let topics: Vec<_> = page.messages.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(topics, ["plant/a"]);
        assert!(!j.records("$SYS/broker/uptime") && j.records("plant/b"));
    }

    #[tokio::test]
    async fn queries_filter_by_topic_and_time_and_paginate_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let j = journal(dir.path(), |_| {}).await;
        for i in 0..60 {
            j.append_nowait(&message(&format!("site/{}/v", i % 3), i.to_string(), QoS::AtMostOnce));
        }
        j.append_nowait(&message("site", "parent", QoS::AtMostOnce));
        j.flush().await;
        let mut q = HistoryQuery::new("site/1/+");
        q.limit = 7;
        let seen = every_page(&j, q).await;
        let expected: Vec<String> = (0..60).rev().filter(|i| i % 3 == 1).map(|i| i.to_string()).collect();
        assert_eq!(seen, expected, "newest first, every page, nothing twice");

        let mut q = HistoryQuery::new("site/#");
        q.order = Order::OldestFirst;
        q.limit = 2;
        let page = history::query(j.pool(), &q).await.unwrap();
        assert_eq!(page.messages[0].payload, b"0");
        let all = history::query(j.pool(), &HistoryQuery { limit: 1000, ..HistoryQuery::new("site/#") })
            .await
            .unwrap();
        assert_eq!(all.messages.len(), 61, "# matches the parent level too");
        assert!(all.next.is_none());

        let future = unix_millis(SystemTime::now()) + 60_000;
        let none = HistoryQuery { since: Some(future), ..HistoryQuery::new("#") };
        assert!(history::query(j.pool(), &none).await.unwrap().messages.is_empty());
        let before = HistoryQuery { until: Some(future), ..HistoryQuery::new("site/0/v") };
        assert_eq!(history::query(j.pool(), &before).await.unwrap().messages.len(), 20);
        assert!(history::query(j.pool(), &HistoryQuery::new("a/#/b")).await.is_err());
    }

    #[tokio::test]
    async fn queries_read_the_topic_index_and_the_rows_after_it_alike() {
        let dir = tempfile::tempdir().unwrap();
        let j = journal(dir.path(), |c| c.index_interval = Duration::from_secs(3600)).await;
        let topics = ["t/1", "t/2", "t/1/x", "u/2", "t", "t1"];
        let mut all = Vec::new();
        for i in 0..1900 {
            if i == 1200 {
                j.flush().await;
                j.index_now().await;
            }
            let topic = topics[i % topics.len()];
            j.append_nowait(&message(topic, i.to_string(), QoS::AtMostOnce));
            all.push((topic, i.to_string()));
        }
        j.flush().await;
        let (indexed, newest): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT value FROM journal_state WHERE key = 'topic_index'), (SELECT max(id) FROM messages)",
        )
        .fetch_one(j.pool())
        .await
        .unwrap();
        assert!(indexed > 1000 && indexed < newest, "half indexed: {indexed} of {newest}");
        for filter in ["t/1", "t/+", "t/#", "#", "+/2", "t", "t/+/#", "t1"] {
            for order in [Order::NewestFirst, Order::OldestFirst] {
                let mut q = HistoryQuery::new(filter);
                q.order = order;
                q.limit = 170;
                let seen = every_page(&j, q).await;
                let mut expected: Vec<String> = all
                    .iter()
                    .filter(|(t, _)| crate::mqtt::codec::topic::matches(filter, t))
                    .map(|(_, p)| p.clone())
                    .collect();
                if order == Order::NewestFirst {
                    expected.reverse();
                }
                assert_eq!(seen, expected, "{filter} {order:?}");
            }
        }
        // Pruned rows leave the index too.
        write_beside(dir.path(), "DELETE FROM messages WHERE id <= 10");
        let dangling: i64 =
            sqlx::query_scalar("SELECT count(*) FROM topic_index WHERE id NOT IN (SELECT id FROM messages)")
                .fetch_one(j.pool())
                .await
                .unwrap();
        assert_eq!(dangling, 0);
        j.close().await;
    }

    #[tokio::test]
    async fn a_wildcard_over_few_or_many_topics_pages_through_every_match_in_order() {
        // Up to 64 topics under the prefix are read topic by topic from the index; more (or a time range), in id
        // order from the page's position, window by window. Rows both in the index and in the writer's tail.
        for topic_count in [3usize, 100, 500] {
            let dir = tempfile::tempdir().unwrap();
            let j = journal(dir.path(), |c| c.index_interval = Duration::from_secs(3600)).await;
            let mut all = Vec::new();
            for i in 0..3000 {
                if i == 2000 {
                    j.flush().await;
                    j.index_now().await;
                }
                let topic = match i % 7 {
                    0 => "other".to_owned(),
                    // Beside the prefix, in the same range of the index as `p/...` in no way: `p` and `p0/`.
                    3 if i % 2 == 0 => "p0/x".to_owned(),
                    _ => format!("p/{}", i % topic_count),
                };
                j.append_nowait(&message(&topic, i.to_string(), QoS::AtMostOnce));
                all.push((topic, i.to_string()));
            }
            j.flush().await;
            let since = unix_millis(SystemTime::now()) - 3_600_000;
            for filter in ["p/#", "p/+"] {
                for order in [Order::NewestFirst, Order::OldestFirst] {
                    for time_range in [false, true] {
                        let mut q = HistoryQuery::new(filter);
                        q.order = order;
                        q.limit = 97;
                        if time_range {
                            q.since = Some(since);
                        }
                        let seen = every_page(&j, q).await;
                        let mut expected: Vec<String> =
                            all.iter().filter(|(t, _)| t.starts_with("p/")).map(|(_, p)| p.clone()).collect();
                        if order == Order::NewestFirst {
                            expected.reverse();
                        }
                        assert_eq!(
                            seen, expected,
                            "{topic_count} topics, {filter} {order:?}, since: {time_range}"
                        );
                    }
                }
            }
            j.close().await;
        }
    }

    #[tokio::test]
    async fn a_wildcard_over_many_topics_costs_its_page_not_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let j = journal(dir.path(), |c| c.index_interval = Duration::from_secs(3600)).await;
        // 300 topics under `p/`: 100 messages, then 40,000 of another topic, then 200 more; half in the index.
        let mut matching = Vec::new();
        for i in 0..40_300 {
            if i == 20_000 {
                j.flush().await;
                j.index_now().await;
            }
            let topic = if !(100..40_100).contains(&i) { format!("p/{}", i % 500) } else { "q/x".to_owned() };
            let m = message(&topic, i.to_string(), QoS::AtMostOnce);
            // Waits only for places in the writer's queue, so that nothing is dropped.
            drop(j.append(&m).await);
            if topic.starts_with("p/") {
                matching.push(*m.journal_id.get().unwrap());
            }
        }
        j.flush().await;
        let ids = |page: &history::Page| page.messages.iter().map(|m| m.id).collect::<Vec<_>>();

        // A page in id order reads the journal from its position to its last match, and no further.
        let mut q = HistoryQuery { order: Order::OldestFirst, limit: 50, ..HistoryQuery::new("p/#") };
        q.after = Some(matching[20]);
        let page = history::query(j.pool(), &q).await.unwrap();
        assert_eq!(ids(&page), matching[21..71]);
        assert_eq!(page.rows_read, 50, "the rows between its position and its last match");
        let mut q = HistoryQuery { limit: 150, ..HistoryQuery::new("p/#") };
        q.after = Some(matching[250] + 1);
        let page = history::query(j.pool(), &q).await.unwrap();
        let expected: Vec<i64> = matching[101..=250].iter().rev().copied().collect();
        assert_eq!(ids(&page), expected, "newest first");
        assert_eq!(page.rows_read, 150);

        // With a bound on the rows read (a consumer's batch), a page that meets a long stretch of other topics
        // ends early, short or empty, and says where to go on; nothing is skipped.
        let mut q = HistoryQuery {
            order: Order::OldestFirst,
            limit: 150,
            max_rows: Some(10_000),
            ..HistoryQuery::new("p/+")
        };
        let mut seen = Vec::new();
        let mut empty = 0;
        loop {
            let page = history::query(j.pool(), &q).await.unwrap();
            assert!(page.rows_read <= 10_000 + 8_192, "{} rows read", page.rows_read);
            if page.messages.is_empty() && page.next.is_some() {
                empty += 1;
            }
            seen.extend(ids(&page));
            match page.next {
                Some(next) => q.after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, matching);
        assert!(empty >= 1, "the stretch of 40,000 took a page of its own");

        // Without one (the console), a sparse stretch is read through the index after a while: the page fills,
        // without reading every row of the stretch.
        let q = HistoryQuery { limit: 250, ..HistoryQuery::new("p/#") };
        let page = history::query(j.pool(), &q).await.unwrap();
        let mut expected: Vec<i64> = matching[50..].to_vec();
        expected.reverse();
        assert_eq!(ids(&page), expected);
        assert!(page.next.is_some());
        assert!(page.rows_read < 40_000, "{} rows read", page.rows_read);
        j.close().await;
    }

    #[tokio::test]
    async fn numeric_series_for_charts() {
        let dir = tempfile::tempdir().unwrap();
        let j = journal(dir.path(), |_| {}).await;
        for payload in ["1.5", "{\"t\": 2}", "off", "3"] {
            j.append_nowait(&message("m/temp", payload, QoS::AtMostOnce));
        }
        j.flush().await;
        let q = HistoryQuery::new("m/temp");
        let values: Vec<f64> =
            history::series(j.pool(), &q, None, 1000).await.unwrap().into_iter().map(|p| p.1).collect();
        assert_eq!(values, [1.5, 3.0]);
        let values: Vec<f64> =
            history::series(j.pool(), &q, Some("/t"), 1000).await.unwrap().into_iter().map(|p| p.1).collect();
        assert_eq!(values, [2.0]);
    }

    #[tokio::test]
    async fn retention_prunes_old_rows_but_spares_what_a_cursor_needs() {
        let dir = tempfile::tempdir().unwrap();
        let j = journal(dir.path(), |c| c.retention.max_age = Some(Duration::ZERO)).await;
        for i in 0..10 {
            j.append_nowait(&message("r", i.to_string(), QoS::AtMostOnce));
        }
        j.flush().await;
        j.commit_cursor("kafka:route-1", 4).await.unwrap();
        assert_eq!(j.cursor("kafka:route-1").await.unwrap(), Some(4));
        // Rows must be strictly older than the cut-off.
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(j.prune_now().await, 4);
        assert_eq!(count(&j).await, 6, "rows after the cursor are kept");
        j.commit_cursor("kafka:route-1", 10).await.unwrap();
        assert_eq!(j.prune_now().await, 5);
        assert_eq!(count(&j).await, 1, "the newest row stays, so that no id is ever handed out twice");
        j.append_nowait(&message("r", "after", QoS::AtMostOnce));
        j.flush().await;
        let newest: i64 =
            sqlx::query_scalar("SELECT max(id) FROM messages").fetch_one(j.pool()).await.unwrap();
        assert_eq!(newest, 11, "ids go on from where they were, past the cursor");
    }

    #[tokio::test]
    async fn at_the_hard_cap_the_oldest_go_past_any_cursor_and_beyond_it_publishes_are_refused() {
        const CAP: u64 = 1024 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let j = journal(dir.path(), |c| {
            c.retention = Retention {
                max_age: None,
                max_bytes: None,
                hard_cap_bytes: Some(CAP),
                ..c.retention.clone()
            };
        })
        .await;
        // A durable consumer that has read nothing: below the hard cap it would keep every row.
        j.commit_cursor("kafka:stalled", 0).await.unwrap();
        // Two rows to a 4 KiB page, in the rows (below `payload_log_min`).
        let payload = bytes::Bytes::from(vec![b'x'; 1900]);
        let mut last = None;
        for i in 0..2000 {
            let m = message(&format!("cap/{}", i % 10), payload.clone(), QoS::AtLeastOnce);
            assert_eq!(j.append(&m).await.await.unwrap(), Ok(()), "message {i}");
            last = m.journal_id.get().copied();
        }
        let used: i64 = sqlx::query_scalar(
            "SELECT (page_count - freelist_count) * page_size FROM pragma_page_count, pragma_freelist_count, \
             pragma_page_size",
        )
        .fetch_one(j.pool())
        .await
        .unwrap();
        assert!(u64::try_from(used).unwrap() < CAP + 64 * 1024, "{used} bytes used with a cap of {CAP}");
        let (rows, newest): (i64, Option<i64>) =
            sqlx::query_as("SELECT count(*), max(id) FROM messages").fetch_one(j.pool()).await.unwrap();
        assert!(rows < 1000, "the oldest of 2,000 rows went: {rows} left");
        assert_eq!(newest, last, "the newest is kept");

        // Retained messages are never removed: once they alone fill the cap, publishes are refused.
        let mut refused = None;
        for i in 0..2000 {
            let m =
                Arc::new(Message::new(&format!("cap/retained/{i}"), payload.clone(), QoS::AtLeastOnce, true));
            if let Err(e) = j.append(&m).await.await.unwrap() {
                refused = Some((i, e));
                break;
            }
        }
        let (fitted, refusal) = refused.expect("refused at the hard cap");
        assert_eq!(refusal, Refusal::Full);
        assert!(fitted >= 300, "{fitted} retained messages of 2 KB fitted under a 1 MiB cap");
        assert!(j.is_refusing());
    }

    #[tokio::test]
    async fn retained_messages_are_kept_through_pruning_and_expire_by_their_interval() {
        let dir = tempfile::tempdir().unwrap();
        let j = journal(dir.path(), |c| c.retention.max_age = Some(Duration::ZERO)).await;
        let retained = |topic: &str, payload: &str, expiry: Option<u32>| {
            let mut m = Message::new(topic, payload.to_owned(), QoS::AtLeastOnce, true);
            m.properties =
                MessageProperties { message_expiry_interval: expiry, ..MessageProperties::default() }.boxed();
            Arc::new(m)
        };
        j.append_nowait(&retained("a", "old", None));
        j.append_nowait(&retained("a", "new", None));
        j.append_nowait(&retained("b", "short-lived", Some(1)));
        j.append_nowait(&retained("c", "gone", None));
        j.append_nowait(&retained("c", "", None));
        j.append_nowait(&message("plain", "x", QoS::AtMostOnce));
        j.flush().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        j.prune_now().await;
        let kept: Vec<(String, bool)> = j
            .retained()
            .await
            .unwrap()
            .iter()
            .map(|m| (String::from_utf8_lossy(&m.payload).into_owned(), m.retain))
            .collect();
        assert_eq!(kept, [("new".to_owned(), true), ("short-lived".to_owned(), true)], "pruning spared them");
        assert_eq!(count(&j).await, 3, "everything else was pruned but the newest row");
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let kept: Vec<String> = j.retained().await.unwrap().iter().map(|m| m.topic.to_string()).collect();
        assert_eq!(kept, ["a"], "b's expiry interval ran out");
    }

    #[tokio::test]
    async fn ids_are_given_on_append_in_order_and_never_twice() {
        let dir = tempfile::tempdir().unwrap();
        let j = journal(dir.path(), |_| {}).await;
        let sent: Vec<_> = (0..300).map(|i| message("ids", i.to_string(), QoS::AtLeastOnce)).collect();
        let mut completions = Vec::new();
        for m in &sent {
            completions.push(j.append(m).await);
        }
        // Known before the commit (the broker routes QoS 1 then), consecutive in the order appended.
        let ids: Vec<i64> = sent.iter().map(|m| *m.journal_id.get().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
        for c in completions {
            assert_eq!(c.await.unwrap(), Ok(()));
        }
        let stored: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT id, payload FROM messages ORDER BY id").fetch_all(j.pool()).await.unwrap();
        let expected: Vec<(i64, Vec<u8>)> =
            ids.iter().zip(0..).map(|(&id, i)| (id, i.to_string().into_bytes())).collect();
        assert_eq!(stored, expected, "every row under the id its message was given");

        // A session queue may refer to an id whose append never committed (the gateway died in between):
        // after a restart that id is not given to another message.
        let dangling = ids[ids.len() - 1] + 10;
        write_beside(
            dir.path(),
            &format!(
                "INSERT INTO session_messages (client_id, message_id, qos, retain) VALUES ('c', {dangling}, 1, 0)"
            ),
        );
        j.close().await;
        let j = journal(dir.path(), |_| {}).await;
        let next = message("ids", "after", QoS::AtLeastOnce);
        assert_eq!(j.append(&next).await.await.unwrap(), Ok(()));
        assert_eq!(next.journal_id.get(), Some(&(dangling + 1)));
        j.close().await;
    }

    #[tokio::test]
    async fn the_writers_queue_is_bounded_in_bytes_as_well_as_in_messages() {
        let dir = tempfile::tempdir().unwrap();
        let j = journal(dir.path(), |c| c.queue = 64).await;
        let dropped = || j.stats().dropped_qos0.load(Ordering::Relaxed);
        for (payload, sent, fit) in [(8 * 1024, 20, 7), (100, 100, 64)] {
            // The writer cannot commit while another connection holds the write lock: what is sent waits.
            let lock = rusqlite::Connection::open(dir.path().join(super::super::JOURNAL_FILE)).unwrap();
            lock.execute_batch("BEGIN IMMEDIATE").unwrap();
            let before = (dropped(), count(&j).await);
            let payload = bytes::Bytes::from(vec![b'x'; payload]);
            for _ in 0..sent {
                j.append_nowait(&message("queue", payload.clone(), QoS::AtMostOnce));
            }
            // 8 KiB and a topic take 9 places, so 7 fill 63 of the 64; 100 bytes take one.
            assert_eq!(dropped() - before.0, sent - fit, "{} B messages", payload.len());
            lock.execute_batch("ROLLBACK").unwrap();
            j.flush().await;
            assert_eq!(count(&j).await - before.1, i64::try_from(fit).unwrap());
        }
    }

    #[tokio::test]
    async fn a_full_database_refuses_counts_and_recovers_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        let j = journal(dir.path(), |c| {
            c.max_pages = Some(64);
            c.retention = Retention {
                max_age: Some(Duration::ZERO),
                max_bytes: None,
                hard_cap_bytes: None,
                ..c.retention.clone()
            };
        })
        .await;
        let payload = bytes::Bytes::from(vec![b'x'; 2000]);
        let mut refused = None;
        for i in 0..1000 {
            let completion = j.append(&message("fill", payload.clone(), QoS::AtLeastOnce)).await;
            if let Err(e) = completion.await.unwrap() {
                refused = Some((i, e));
                break;
            }
        }
        let (accepted, refusal) = refused.expect("the page limit is reached");
        assert_eq!(refusal, Refusal::Full);
        assert!(accepted > 10, "{accepted} messages fit before the limit");
        assert!(j.is_refusing());
        j.append_nowait(&message("fill", payload.clone(), QoS::AtMostOnce));
        j.flush().await;
        assert_eq!(j.stats().dropped_qos0.load(Ordering::Relaxed), 1);
        assert_eq!(count(&j).await, accepted, "what was accepted is intact");
        let check: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(j.pool()).await.unwrap();
        assert_eq!(check, "ok");
        // Space returns (retention frees it): appends succeed again without any intervention.
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(j.prune_now().await > 0);
        let small = message("fill", "small", QoS::AtLeastOnce);
        assert_eq!(j.append(&small).await.await.unwrap(), Ok(()));
        assert!(!j.is_refusing());
        // The refused messages' ids are not given again.
        let newest: i64 =
            sqlx::query_scalar("SELECT max(id) FROM messages").fetch_one(j.pool()).await.unwrap();
        assert_eq!(small.journal_id.get(), Some(&newest));
        assert!(newest > accepted + 1, "{newest} after {accepted} accepted and one refused");
    }

    #[tokio::test]
    async fn only_the_writer_writes_the_journal_and_cursors_and_restarts_still_work() {
        let dir = tempfile::tempdir().unwrap();
        let j = journal(dir.path(), |_| {}).await;
        for i in 0..3 {
            j.append_nowait(&message("one-writer", i.to_string(), QoS::AtMostOnce));
        }
        j.flush().await;
        // A second writer beside the writer thread cannot come back unnoticed: the pool is for reading.
        for sql in [
            "INSERT INTO cursors (name, position, updated) VALUES ('sneaky', 1, 0)",
            "DELETE FROM messages",
            "DELETE FROM session_messages",
        ] {
            assert!(sqlx::query(sql).execute(j.pool()).await.is_err(), "{sql} was allowed");
        }
        j.commit_cursor("kafka:a", 2).await.unwrap();
        assert_eq!(j.cursor("kafka:a").await.unwrap(), Some(2));
        assert_eq!(count(&j).await, 3);
        j.close().await;

        // A crash left a queued delivery of a session that no longer exists: start-up removes it.
        write_beside(
            dir.path(),
            "INSERT INTO session_messages (client_id, message_id, qos, retain) VALUES ('gone', 1, 1, 0)",
        );
        let j = journal(dir.path(), |_| {}).await;
        assert!(j.sessions(10).await.unwrap().is_empty());
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM session_messages").fetch_one(j.pool()).await.unwrap();
        assert_eq!(left, 0, "the start-up cleanup ran");
        assert!(
            sqlx::query("DELETE FROM cursors").execute(j.pool()).await.is_err(),
            "read-only after a restart"
        );
        assert_eq!(j.cursor("kafka:a").await.unwrap(), Some(2), "the cursor survived the restart");
        j.commit_cursor("kafka:a", 3).await.unwrap();
        assert_eq!(j.cursor("kafka:a").await.unwrap(), Some(3));
        j.close().await;
    }

    #[tokio::test]
    async fn a_cursor_commit_is_never_visible_before_the_rows_it_covers() {
        let dir = tempfile::tempdir().unwrap();
        // One append per commit: 2,000 commits stand between the first append and the last. Without a sync per
        // commit (`batched`), so that a slow disk does not make this slow; the order does not depend on it.
        let j = journal(dir.path(), |c| {
            c.max_batch = 1;
            c.durability = Durability::Batched { window: Duration::from_secs(1) };
        })
        .await;
        let watcher = {
            let pool = j.pool().clone();
            tokio::spawn(async move {
                // Until the cursor appears, then once more: whenever it is visible, so is every row it covers.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                loop {
                    let (position, covered): (Option<i64>, i64) = sqlx::query_as(
                        "SELECT (SELECT position FROM cursors WHERE name = 'kafka:order'), \
                         (SELECT count(*) FROM messages WHERE id <= \
                          (SELECT position FROM cursors WHERE name = 'kafka:order'))",
                    )
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                    if position.is_some() {
                        return covered;
                    }
                    assert!(tokio::time::Instant::now() < deadline, "the cursor never appeared");
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut last = 0;
        for i in 0..2000 {
            let m = message("order", i.to_string(), QoS::AtMostOnce);
            j.append_nowait(&m);
            last = *m.journal_id.get().unwrap();
        }
        j.commit_cursor("kafka:order", last).await.unwrap();
        let covered: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE id <= ?")
            .bind(last)
            .fetch_one(j.pool())
            .await
            .unwrap();
        assert_eq!(covered, 2000, "commit returned only after the rows it covers were committed");
        assert_eq!(watcher.await.unwrap(), 2000, "the cursor was never visible before its rows");
        assert_eq!(j.stats().dropped_qos0.load(Ordering::Relaxed), 0);
        j.close().await;
    }
}
