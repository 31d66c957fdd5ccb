//! The audit log of security and configuration events.

use std::path::Path;

use super::OpsError;
use crate::store::{self, AuditEntry};

/// The newest `limit` entries, newest first. Only reads: works beside a running gateway.
pub async fn entries(data_dir: &Path, limit: i64) -> Result<Vec<AuditEntry>, OpsError> {
    let pool = store::open_for_reading(data_dir, store::Database::Config)
        .await
        .map_err(|_| OpsError::NoData { what: "configuration database", dir: data_dir.to_owned() })?;
    let entries = store::audit_entries(&pool, limit).await?;
    pool.close().await;
    Ok(entries)
}
