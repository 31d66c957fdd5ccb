//! The operations layer: every administrative action, once, with typed requests and results. The command line
//! (`main.rs`) and the web console are thin adapters over it: they parse what the operator typed or posted,
//! call one function here, and present the result.
//!
//! An [`Ops`] works on a data directory. Opened by the CLI, it has a security service of its own over
//! `config.sqlite`, and the running gateway picks every change up within a second (`config_version`); inside the
//! gateway (the console) it shares the gateway's service. History and audit queries only read.
//!
//! - [`users`]: add, change password or roles, delete, list.
//! - [`rules`]: topic access rules: parse, add, delete, list.
//! - [`certs`]: device certificates (issue, sign a CSR, list, show, export, revoke) and the CA (export, import).
//! - [`history`]: message history queries and exports.
//! - [`presence`]: the presence history and uptime, and the birth and death rules.
//! - [`audit`]: the audit log.
//! - [`import`]: users and rules from Mosquitto's files.
//! - [`backup`]: one encrypted file with the configuration, the CA and optionally the journal; restore.
//! - [`sparkplug`]: a rebirth request to a Sparkplug B edge node (the console; the command line through a request
//!   the running gateway takes from `config.sqlite`).

pub mod audit;
pub mod backup;
pub mod certs;
pub mod history;
pub mod import;
pub mod presence;
pub mod rules;
pub mod sparkplug;
pub mod tokens;
pub mod users;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::files::FileError;
use crate::pki::PkiError;
use crate::security::{CertError, Security, SecurityError};
use crate::store::{self, StoreError};

/// Why an operation failed. Each message is meant for the operator as it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    /// What was asked is not well formed (a subject, a key type, a time); the text says what is expected.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Security(#[from] SecurityError),
    #[error(transparent)]
    Certificates(#[from] CertError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("no {what} in {dir} (is this the data directory?)")]
    NoData { what: &'static str, dir: PathBuf },
    #[error(transparent)]
    Export(#[from] store::export::ExportError),
    /// The running gateway did not answer a request in time (or is not running); the text says what became of
    /// the request.
    #[error("{0}")]
    Unanswered(String),
}

/// Who performs an operation, as the audit log names them: `cli:<login>`, `console:<user>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(String);

impl Actor {
    /// The operator at the command line, by their login name.
    pub fn cli() -> Actor {
        Actor(format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into())))
    }

    pub fn new(name: impl Into<String>) -> Actor {
        Actor(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Administrative operations on one data directory.
#[derive(Debug, Clone)]
pub struct Ops {
    data_dir: PathBuf,
    security: Arc<Security>,
}

impl Ops {
    /// Opens the data directory's configuration (creating the directory, private, and the database if need be).
    pub async fn open(data_dir: &Path) -> Result<Ops, OpsError> {
        crate::files::create_private_dir(data_dir)?;
        let (pool, _) =
            store::open(data_dir, store::Database::Config, store::Synchronous::Full, None).await?;
        let security = Arc::new(Security::load(pool, data_dir).await?);
        Ok(Ops { data_dir: data_dir.to_owned(), security })
    }

    /// Operations on a running gateway's own security service (the console).
    pub fn with(data_dir: &Path, security: Arc<Security>) -> Ops {
        Ops { data_dir: data_dir.to_owned(), security }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn security(&self) -> &Security {
        &self.security
    }
}
