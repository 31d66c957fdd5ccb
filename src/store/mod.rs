//! Durable storage in SQLite, as two files in the data directory:
//!
//! - `journal.sqlite`: the write-heavy message journal (history, and the backlog of durable consumers), written
//!   by one writer thread with group commit, its payloads of 2 KiB and more in the segment files of
//!   `journal.payloads/` beside it. See [`journal`] and [`payload_log`].
//! - `config.sqlite`: configuration (users, ACLs, certificates, routes as their issues land) and the audit log.
//!
//! Keeping them apart means a flood of messages cannot slow a configuration change or endanger it, and the
//! journal can be pruned, vacuumed or, if damaged, set aside without touching the configuration.
//!
//! Both use WAL mode. Opening checks each file (`PRAGMA quick_check`); a file that is damaged or not a database
//! is moved aside (`<name>.damaged-<unix seconds>`, with its `-wal` and `-shm`) with a clear log line, and a fresh
//! one is created, so that a damaged file never stops the gateway from starting.

pub mod config_db;
pub mod consumer;
pub mod export;
pub mod history;
pub mod journal;
pub mod presence;
pub mod topics;
// The journal's parts below its handle (`journal`): dependencies point one way, journal -> writer -> ops, row,
// settings, checkpoint, payload_log.
mod checkpoint;
mod ops;
pub mod payload_log;
mod row;
mod settings;
mod writer;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};

pub(crate) use crate::timefmt::unix_millis;
pub use journal::{Durability, Journal, JournalConfig, JournalStats, RecordedGaps, Retention};
/// SQLite's `synchronous` setting, for callers of [`open`].
pub use sqlx::sqlite::SqliteSynchronous as Synchronous;

static JOURNAL_MIGRATIONS: Migrator = sqlx::migrate!("migrations/journal");
static CONFIG_MIGRATIONS: Migrator = sqlx::migrate!("migrations/config");

pub const JOURNAL_FILE: &str = "journal.sqlite";
pub const CONFIG_FILE: &str = "config.sqlite";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Database { path: PathBuf, source: sqlx::Error },
    #[error("database {path}: migration failed: {source}")]
    Migrate { path: PathBuf, source: sqlx::migrate::MigrateError },
    #[error("cannot move the damaged database {path} aside: {source}")]
    MoveAside { path: PathBuf, source: std::io::Error },
    #[error("journal query: {0}")]
    Query(#[from] sqlx::Error),
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("journal writer: {0}")]
    Writer(String),
    #[error(transparent)]
    Payload(#[from] payload_log::PayloadError),
}

/// Which database a pool belongs to, for opening with the right migrations and settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    Journal,
    Config,
}

impl Database {
    fn file(self) -> &'static str {
        match self {
            Database::Journal => JOURNAL_FILE,
            Database::Config => CONFIG_FILE,
        }
    }

    fn migrations(self) -> &'static Migrator {
        match self {
            Database::Journal => &JOURNAL_MIGRATIONS,
            Database::Config => &CONFIG_MIGRATIONS,
        }
    }
}

/// Opens (creating if need be) one of the databases in `dir`, checked and migrated. A damaged file is moved aside
/// and replaced by a fresh one; the returned flag says so, for the audit log.
pub async fn open(
    dir: &Path,
    database: Database,
    synchronous: SqliteSynchronous,
    max_pages: Option<u32>,
) -> Result<(SqlitePool, bool), StoreError> {
    let path = dir.join(database.file());
    match try_open(&path, database, synchronous, max_pages).await {
        Ok(pool) => Ok((pool, false)),
        Err(e) if path.exists() => {
            let aside = move_aside(&path)?;
            tracing::error!(
                "{} is damaged ({e}); moved it aside to {} and starting with a fresh database",
                path.display(),
                aside.display()
            );
            let pool = try_open(&path, database, synchronous, max_pages).await?;
            Ok((pool, true))
        }
        Err(e) => Err(e),
    }
}

async fn try_open(
    path: &Path,
    database: Database,
    synchronous: SqliteSynchronous,
    max_pages: Option<u32>,
) -> Result<SqlitePool, StoreError> {
    let db_error = |source| StoreError::Database { path: path.to_owned(), source };
    create_private(path).map_err(|e| db_error(sqlx::Error::Io(e.source)))?;
    let mut options = connect_options(path, synchronous);
    if let Some(pages) = max_pages {
        options = options.pragma("max_page_count", pages.to_string());
    }
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .min_connections(1)
        .idle_timeout(None)
        .connect_with(options)
        .await
        .map_err(db_error)?;
    let check: String = sqlx::query("PRAGMA quick_check")
        .fetch_one(&pool)
        .await
        .map_err(db_error)?
        .try_get(0)
        .map_err(db_error)?;
    if check != "ok" {
        pool.close().await;
        return Err(db_error(sqlx::Error::Protocol(format!("integrity check failed: {check}"))));
    }
    database
        .migrations()
        .run(&pool)
        .await
        .map_err(|source| StoreError::Migrate { path: path.to_owned(), source })?;
    Ok(pool)
}

/// Creates a missing database file empty, with mode 0600, before SQLite opens it: SQLite would create it with
/// the process's umask (0644), and gives its `-wal` and `-shm` files the database file's mode.
fn create_private(path: &Path) -> Result<(), crate::files::FileError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(crate::files::PRIVATE_FILE).open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(crate::files::FileError { path: path.to_owned(), source }),
    }
}

/// The settings every connection gets. Why they are safe on power loss: WAL with `synchronous = FULL` syncs the
/// log at every commit, so a committed transaction survives; with `NORMAL` it survives a process crash, and a
/// power cut may lose the most recent commits but never corrupts the file. `auto_vacuum = INCREMENTAL` lets
/// pruning give space back in small steps.
pub fn connect_options(path: &Path, synchronous: SqliteSynchronous) -> SqliteConnectOptions {
    let options = match SqliteConnectOptions::from_str("sqlite://") {
        Ok(options) => options,
        Err(_) => SqliteConnectOptions::new(),
    };
    options
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous)
        .auto_vacuum(SqliteAutoVacuum::Incremental)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true)
}

fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".damaged-{stamp}"));
    let aside = PathBuf::from(aside);
    std::fs::rename(path, &aside)
        .map_err(|source| StoreError::MoveAside { path: path.to_owned(), source })?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let side = PathBuf::from(side);
        if side.exists() {
            let mut target = aside.as_os_str().to_owned();
            target.push(suffix);
            std::fs::rename(&side, PathBuf::from(target))
                .map_err(|source| StoreError::MoveAside { path: side.clone(), source })?;
        }
    }
    // The journal's payload log goes with it: a fresh journal starts a fresh log.
    let log = payload_log::dir_of(path);
    if log.exists() {
        let mut target = log.as_os_str().to_owned();
        target.push(format!(".damaged-{stamp}"));
        std::fs::rename(&log, PathBuf::from(target))
            .map_err(|source| StoreError::MoveAside { path: log, source })?;
    }
    Ok(aside)
}

/// Opens a database for reading, without checks, migrations or recovery: for `weir history` next to a
/// running gateway (WAL lets readers and the writer work at once).
pub async fn open_for_reading(dir: &Path, database: Database) -> Result<SqlitePool, StoreError> {
    let path = dir.join(database.file());
    // Plain settings: no journal-mode or vacuum changes, which would be writes. Not SQLite's read-only mode
    // either, which cannot recover the WAL of a gateway that was killed; this process only ever reads.
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(10));
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .map_err(|source| StoreError::Database { path, source })
}

/// Appends an entry to the audit log in the configuration database.
pub async fn audit(config: &SqlitePool, actor: &str, action: &str, detail: &str) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO audit_log (ts, actor, action, detail) VALUES (?, ?, ?, ?)")
        .bind(unix_millis(SystemTime::now()))
        .bind(actor)
        .bind(action)
        .bind(detail)
        .execute(config)
        .await?;
    Ok(())
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// Unix ms.
    pub ts: i64,
    pub actor: String,
    pub action: String,
    pub detail: String,
}

/// The newest `limit` audit log entries, newest first.
pub async fn audit_entries(config: &SqlitePool, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
    let rows = sqlx::query("SELECT ts, actor, action, detail FROM audit_log ORDER BY id DESC LIMIT ?")
        .bind(limit)
        .fetch_all(config)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(AuditEntry {
                ts: r.try_get("ts")?,
                actor: r.try_get("actor")?,
                action: r.try_get("action")?,
                detail: r.try_get("detail")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fresh_databases_are_created_checked_and_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, recovered) =
            open(dir.path(), Database::Journal, SqliteSynchronous::Full, None).await.unwrap();
        assert!(!recovered);
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&journal).await.unwrap();
        assert_eq!(mode, "wal");
        let vacuum: i64 = sqlx::query_scalar("PRAGMA auto_vacuum").fetch_one(&journal).await.unwrap();
        assert_eq!(vacuum, 2, "incremental");
        let (config, _) = open(dir.path(), Database::Config, SqliteSynchronous::Full, None).await.unwrap();
        audit(&config, "test", "opened", "").await.unwrap();
        assert!(dir.path().join(JOURNAL_FILE).exists() && dir.path().join(CONFIG_FILE).exists());
    }

    #[tokio::test]
    async fn a_damaged_file_is_moved_aside_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(JOURNAL_FILE), b"this is not a database, it is a power cut").unwrap();
        let (pool, recovered) =
            open(dir.path(), Database::Journal, SqliteSynchronous::Full, None).await.unwrap();
        assert!(recovered);
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM messages").fetch_one(&pool).await.unwrap();
        assert_eq!(n, 0);
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("journal.sqlite.damaged-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
    }
}
