//! The SQL of `config.sqlite`: users, access rules, certificates, the configuration version and the audit log;
//! also the requests of the command line to the running gateway (`sparkplug_requests`: not configuration, so
//! without a version bump; the gateway audits what it executes).
//!
//! Every change is one transaction that makes the change, writes its audit entry and bumps `config_version`, so
//! a change is never applied without its audit entry, and every process watching the version (the running
//! gateway polls it each second) sees it. The security service is the only caller; it
//! hands plain rows to the pure `auth` and `pki` libraries.

use sqlx::{Row, Sqlite, SqlitePool, Transaction};

use super::StoreError;
use crate::timefmt::now_ms;

/// A user as listed (never the hash).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserInfo {
    pub username: String,
    pub roles: Vec<String>,
    /// Unix ms.
    pub created: i64,
    pub updated: i64,
}

/// A user as the security service keeps it in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub username: String,
    pub password_hash: String,
    pub roles: Vec<String>,
}

/// Everything the security snapshot is built from, read in one transaction so that the parts belong together.
#[derive(Debug, Clone, Default)]
pub struct SecurityRows {
    pub version: i64,
    pub users: Vec<UserRow>,
    /// Access rules as stored (JSON), with their ids.
    pub rules: Vec<(i64, String)>,
}

/// A certificate as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertRecord {
    pub serial: String,
    pub common_name: String,
    pub sans: Vec<String>,
    /// Unix ms.
    pub not_before: i64,
    pub not_after: i64,
    pub fingerprint: String,
    #[serde(skip)]
    pub cert_pem: String,
    pub revoked_at: Option<i64>,
    /// Why it was revoked (`pki::RevocationReason` by name); `None` while valid or when no reason was kept.
    pub revocation_reason: Option<String>,
}

/// A certificate to record.
#[derive(Debug, Clone, Copy)]
pub struct NewCert<'a> {
    pub serial: &'a str,
    pub common_name: &'a str,
    pub canonical_name: &'a str,
    pub sans: &'a [String],
    pub not_before: i64,
    pub not_after: i64,
    pub fingerprint: &'a str,
    pub cert_pem: &'a str,
}

/// Who made a change and how it is described in the audit log.
#[derive(Debug, Clone, Copy)]
pub struct Audited<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub detail: &'a str,
}

/// The configuration version: moves with every change.
pub async fn version(pool: &SqlitePool) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar("SELECT version FROM config_version").fetch_one(pool).await?)
}

pub async fn security_rows(pool: &SqlitePool) -> Result<SecurityRows, StoreError> {
    let mut tx = pool.begin().await?;
    let version: i64 = sqlx::query_scalar("SELECT version FROM config_version").fetch_one(&mut *tx).await?;
    let users = sqlx::query("SELECT username, password_hash, roles FROM users").fetch_all(&mut *tx).await?;
    let rules = sqlx::query("SELECT id, rule FROM acl_rules ORDER BY id").fetch_all(&mut *tx).await?;
    tx.commit().await?;
    let users = users
        .iter()
        .map(|row| {
            Ok(UserRow {
                username: row.try_get("username")?,
                password_hash: row.try_get("password_hash")?,
                roles: roles(row.try_get("roles")?),
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
    let rules = rules
        .iter()
        .map(|row| Ok((row.try_get("id")?, row.try_get("rule")?)))
        .collect::<Result<_, sqlx::Error>>()?;
    Ok(SecurityRows { version, users, rules })
}

/// Ends a change to `config.sqlite` (here and in `forward::config`): its audit entry and the version bump the
/// running gateway polls, committed with it.
pub(crate) async fn finish(mut tx: Transaction<'_, Sqlite>, audited: Audited<'_>) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO audit_log (ts, actor, action, detail) VALUES (?, ?, ?, ?)")
        .bind(now_ms())
        .bind(audited.actor)
        .bind(audited.action)
        .bind(audited.detail)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE config_version SET version = version + 1").execute(&mut *tx).await?;
    tx.commit().await
}

/// Runs one statement as a change; false (and nothing written) if it affected no row.
async fn change_one(
    pool: &SqlitePool,
    statement: sqlx::query::Query<'_, Sqlite, sqlx::sqlite::SqliteArguments>,
    audited: Audited<'_>,
) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    if statement.execute(&mut *tx).await?.rows_affected() == 0 {
        return Ok(false);
    }
    finish(tx, audited).await?;
    Ok(true)
}

/// Adds a user; false if the name is taken.
pub async fn insert_user(
    pool: &SqlitePool,
    username: &str,
    hash: &str,
    user_roles: &[String],
    audited: Audited<'_>,
) -> Result<bool, StoreError> {
    let now = now_ms();
    let statement = sqlx::query(
        "INSERT INTO users (username, password_hash, roles, created, updated) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (username) DO NOTHING",
    )
    .bind(username)
    .bind(hash)
    .bind(serde_json::to_string(user_roles).unwrap_or_else(|_| "[]".into()))
    .bind(now)
    .bind(now);
    change_one(pool, statement, audited).await
}

/// Replaces a user's password hash; false if there is no such user.
pub async fn set_password_hash(
    pool: &SqlitePool,
    username: &str,
    hash: &str,
    audited: Audited<'_>,
) -> Result<bool, StoreError> {
    let statement = sqlx::query("UPDATE users SET password_hash = ?, updated = ? WHERE username = ?")
        .bind(hash)
        .bind(now_ms())
        .bind(username);
    change_one(pool, statement, audited).await
}

/// Replaces a user's roles; false if there is no such user.
pub async fn set_roles(
    pool: &SqlitePool,
    username: &str,
    user_roles: &[String],
    audited: Audited<'_>,
) -> Result<bool, StoreError> {
    let statement = sqlx::query("UPDATE users SET roles = ?, updated = ? WHERE username = ?")
        .bind(serde_json::to_string(user_roles).unwrap_or_else(|_| "[]".into()))
        .bind(now_ms())
        .bind(username);
    change_one(pool, statement, audited).await
}

/// Deletes a user; false if there is no such user.
pub async fn delete_user(
    pool: &SqlitePool,
    username: &str,
    audited: Audited<'_>,
) -> Result<bool, StoreError> {
    change_one(pool, sqlx::query("DELETE FROM users WHERE username = ?").bind(username), audited).await
}

pub async fn list_users(pool: &SqlitePool) -> Result<Vec<UserInfo>, StoreError> {
    let rows = sqlx::query("SELECT username, roles, created, updated FROM users ORDER BY username")
        .fetch_all(pool)
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            Ok(UserInfo {
                username: row.try_get("username")?,
                roles: roles(row.try_get("roles")?),
                created: row.try_get("created")?,
                updated: row.try_get("updated")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?)
}

/// Adds an access rule (JSON); returns its id.
pub async fn insert_rule(pool: &SqlitePool, rule_json: &str, actor: &str) -> Result<i64, StoreError> {
    let mut tx = pool.begin().await?;
    let id = sqlx::query("INSERT INTO acl_rules (rule, created) VALUES (?, ?)")
        .bind(rule_json)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?
        .last_insert_rowid();
    let detail = format!("#{id} {rule_json}");
    finish(tx, Audited { actor, action: "acl.add", detail: &detail }).await?;
    Ok(id)
}

/// Deletes an access rule; false if there is none with this id.
pub async fn delete_rule(pool: &SqlitePool, id: i64, audited: Audited<'_>) -> Result<bool, StoreError> {
    change_one(pool, sqlx::query("DELETE FROM acl_rules WHERE id = ?").bind(id), audited).await
}

pub async fn list_rules(pool: &SqlitePool) -> Result<Vec<(i64, String)>, StoreError> {
    let rows = sqlx::query("SELECT id, rule FROM acl_rules ORDER BY id").fetch_all(pool).await?;
    Ok(rows
        .iter()
        .map(|row| Ok((row.try_get("id")?, row.try_get("rule")?)))
        .collect::<Result<_, sqlx::Error>>()?)
}

/// A birth or death rule as stored (see `migrations/config/0005_presence_rules.sql`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PresenceRuleRow {
    pub id: i64,
    /// `user`, `role` or `client`.
    pub match_kind: String,
    pub pattern: String,
    /// `birth` or `death`.
    pub event: String,
    pub topic: String,
    pub payload: String,
    pub qos: u8,
    pub retain: bool,
    /// Unix ms.
    pub created: i64,
}

/// Adds a birth or death rule (its `id` and `created` are given here); returns its id.
pub async fn insert_presence_rule(
    pool: &SqlitePool,
    rule: &PresenceRuleRow,
    actor: &str,
) -> Result<i64, StoreError> {
    let mut tx = pool.begin().await?;
    let id = sqlx::query(
        "INSERT INTO presence_rules (match_kind, pattern, event, topic, payload, qos, retain, created) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&rule.match_kind)
    .bind(&rule.pattern)
    .bind(&rule.event)
    .bind(&rule.topic)
    .bind(&rule.payload)
    .bind(i64::from(rule.qos))
    .bind(rule.retain)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?
    .last_insert_rowid();
    let detail = format!(
        "#{id} {} {}:{} topic {:?} qos {}{}",
        rule.event,
        rule.match_kind,
        rule.pattern,
        rule.topic,
        rule.qos,
        if rule.retain { " retained" } else { "" }
    );
    finish(tx, Audited { actor, action: "presence.rule.add", detail: &detail }).await?;
    Ok(id)
}

/// Deletes a birth or death rule; false if there is none with this id.
pub async fn delete_presence_rule(
    pool: &SqlitePool,
    id: i64,
    audited: Audited<'_>,
) -> Result<bool, StoreError> {
    change_one(pool, sqlx::query("DELETE FROM presence_rules WHERE id = ?").bind(id), audited).await
}

pub async fn list_presence_rules(pool: &SqlitePool) -> Result<Vec<PresenceRuleRow>, StoreError> {
    let rows = sqlx::query("SELECT * FROM presence_rules ORDER BY id").fetch_all(pool).await?;
    Ok(rows
        .iter()
        .map(|row| {
            Ok(PresenceRuleRow {
                id: row.try_get("id")?,
                match_kind: row.try_get("match_kind")?,
                pattern: row.try_get("pattern")?,
                event: row.try_get("event")?,
                topic: row.try_get("topic")?,
                payload: row.try_get("payload")?,
                qos: u8::try_from(row.try_get::<i64, _>("qos")?).unwrap_or(0),
                retain: row.try_get("retain")?,
                created: row.try_get("created")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?)
}

/// Imports users (name, hash) and rules (JSON) all at once: returns the first user name that exists already
/// (then nothing is imported).
pub async fn import(
    pool: &SqlitePool,
    users: &[(String, String)],
    rules: &[String],
    audited: Audited<'_>,
) -> Result<Result<(), String>, StoreError> {
    let now = now_ms();
    let mut tx = pool.begin().await?;
    for (username, hash) in users {
        let inserted = sqlx::query(
            "INSERT INTO users (username, password_hash, roles, created, updated) VALUES (?, ?, '[]', ?, ?) \
             ON CONFLICT (username) DO NOTHING",
        )
        .bind(username)
        .bind(hash)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(Err(username.clone()));
        }
    }
    for rule in rules {
        sqlx::query("INSERT INTO acl_rules (rule, created) VALUES (?, ?)")
            .bind(rule)
            .bind(now)
            .execute(&mut *tx)
            .await?;
    }
    finish(tx, audited).await?;
    Ok(Ok(()))
}

/// Whether a valid, unexpired certificate carries this canonical name.
pub async fn live_cert_named(pool: &SqlitePool, canonical_name: &str) -> Result<bool, StoreError> {
    let taken: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM certificates WHERE canonical_name = ? AND revoked_at IS NULL AND not_after > ?",
    )
    .bind(canonical_name)
    .bind(now_ms())
    .fetch_one(pool)
    .await?;
    Ok(taken > 0)
}

pub async fn insert_cert(
    pool: &SqlitePool,
    cert: NewCert<'_>,
    audited: Audited<'_>,
) -> Result<(), StoreError> {
    let statement = sqlx::query(
        "INSERT INTO certificates (serial, common_name, canonical_name, sans, not_before, not_after, \
         fingerprint, cert_pem, issued) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(cert.serial)
    .bind(cert.common_name)
    .bind(cert.canonical_name)
    .bind(serde_json::to_string(cert.sans).unwrap_or_else(|_| "[]".into()))
    .bind(cert.not_before)
    .bind(cert.not_after)
    .bind(cert.fingerprint)
    .bind(cert.cert_pem)
    .bind(now_ms());
    change_one(pool, statement, audited).await?;
    Ok(())
}

pub async fn list_certs(pool: &SqlitePool) -> Result<Vec<CertRecord>, StoreError> {
    let rows = sqlx::query("SELECT * FROM certificates ORDER BY issued").fetch_all(pool).await?;
    Ok(rows.iter().map(cert_from_row).collect::<Result<_, sqlx::Error>>()?)
}

pub async fn cert_by_serial(pool: &SqlitePool, serial: &str) -> Result<Option<CertRecord>, StoreError> {
    let row = sqlx::query("SELECT * FROM certificates WHERE serial = ?")
        .bind(serial.to_lowercase())
        .fetch_optional(pool)
        .await?;
    Ok(row.as_ref().map(cert_from_row).transpose()?)
}

/// Certificates with this canonical name: valid ones first, then the newest.
pub async fn certs_named(pool: &SqlitePool, canonical_name: &str) -> Result<Vec<CertRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT * FROM certificates WHERE canonical_name = ? ORDER BY revoked_at IS NOT NULL, issued DESC",
    )
    .bind(canonical_name)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(cert_from_row).collect::<Result<_, sqlx::Error>>()?)
}

/// Marks a certificate revoked; false if it was already.
pub async fn revoke_cert(
    pool: &SqlitePool,
    serial: &str,
    reason: &str,
    audited: Audited<'_>,
) -> Result<bool, StoreError> {
    let statement = sqlx::query(
        "UPDATE certificates SET revoked_at = ?, revocation_reason = ? WHERE serial = ? AND revoked_at IS NULL",
    )
    .bind(now_ms())
    .bind(reason)
    .bind(serial);
    change_one(pool, statement, audited).await
}

/// A revoked certificate as the CRL lists it.
#[derive(Debug, Clone)]
pub struct Revocation {
    pub serial: String,
    /// Unix ms.
    pub at: i64,
    pub reason: Option<String>,
}

/// Revoked certificates.
pub async fn revocations(pool: &SqlitePool) -> Result<Vec<Revocation>, StoreError> {
    let rows = sqlx::query(
        "SELECT serial, revoked_at, revocation_reason FROM certificates WHERE revoked_at IS NOT NULL",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|row| {
            Ok(Revocation {
                serial: row.try_get("serial")?,
                at: row.try_get("revoked_at")?,
                reason: row.try_get("revocation_reason")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?)
}

fn cert_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<CertRecord, sqlx::Error> {
    let sans: String = row.try_get("sans")?;
    Ok(CertRecord {
        serial: row.try_get("serial")?,
        common_name: row.try_get("common_name")?,
        sans: serde_json::from_str(&sans).unwrap_or_default(),
        not_before: row.try_get("not_before")?,
        not_after: row.try_get("not_after")?,
        fingerprint: row.try_get("fingerprint")?,
        cert_pem: row.try_get("cert_pem")?,
        revoked_at: row.try_get("revoked_at")?,
        revocation_reason: row.try_get("revocation_reason")?,
    })
}

fn roles(json: String) -> Vec<String> {
    serde_json::from_str(&json).unwrap_or_default()
}

/// Audit entries, newest first, with their ids: those before `before` (an id), whose actor, action or detail
/// contains `contains`.
pub async fn audit_page(
    pool: &SqlitePool,
    contains: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<(i64, super::AuditEntry)>, StoreError> {
    let pattern =
        contains.map(|c| format!("%{}%", c.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
    let rows = sqlx::query(
        "SELECT id, ts, actor, action, detail FROM audit_log WHERE id < ?1 AND (?2 IS NULL \
         OR actor LIKE ?2 ESCAPE '\\' OR action LIKE ?2 ESCAPE '\\' OR detail LIKE ?2 ESCAPE '\\') \
         ORDER BY id DESC LIMIT ?3",
    )
    .bind(before.unwrap_or(i64::MAX))
    .bind(pattern.as_deref())
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            Ok((
                r.try_get("id")?,
                super::AuditEntry {
                    ts: r.try_get("ts")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    detail: r.try_get("detail")?,
                },
            ))
        })
        .collect::<Result<_, sqlx::Error>>()?)
}

/// A bearer token as listed (never the token).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    pub name: String,
    /// Unix ms.
    pub created: i64,
    pub last_used: Option<i64>,
}

/// Adds a token by the SHA-256 (hex) of its value; false if the name is taken.
pub async fn insert_token(
    pool: &SqlitePool,
    name: &str,
    sha256: &str,
    audited: Audited<'_>,
) -> Result<bool, StoreError> {
    let statement = sqlx::query(
        "INSERT INTO api_tokens (name, sha256, created) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(sha256)
    .bind(now_ms());
    change_one(pool, statement, audited).await
}

pub async fn delete_token(pool: &SqlitePool, name: &str, audited: Audited<'_>) -> Result<bool, StoreError> {
    change_one(pool, sqlx::query("DELETE FROM api_tokens WHERE name = ?").bind(name), audited).await
}

pub async fn list_tokens(pool: &SqlitePool) -> Result<Vec<TokenInfo>, StoreError> {
    let rows =
        sqlx::query("SELECT name, created, last_used FROM api_tokens ORDER BY name").fetch_all(pool).await?;
    Ok(rows
        .iter()
        .map(|r| {
            Ok(TokenInfo {
                name: r.try_get("name")?,
                created: r.try_get("created")?,
                last_used: r.try_get("last_used")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?)
}

/// The name of the token whose SHA-256 is `sha256`, noting its use.
pub async fn use_token(pool: &SqlitePool, sha256: &str) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar("UPDATE api_tokens SET last_used = ? WHERE sha256 = ? RETURNING name")
        .bind(now_ms())
        .bind(sha256)
        .fetch_optional(pool)
        .await?)
}

/// A request of the command line to the running gateway (`sparkplug_requests`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparkplugRequestRow {
    pub id: i64,
    /// `rebirth`.
    pub action: String,
    pub group: String,
    pub node: String,
    pub actor: String,
    /// `pending`, `taken`, `done`, `refused` or `expired`.
    pub state: String,
    /// What was done, or why not.
    pub result: Option<String>,
}

/// How long answered and expired requests are kept.
const REQUESTS_KEPT_MS: i64 = 24 * 3600 * 1000;

/// Records a request for the running gateway, executable until `expires` (unix ms); returns its id. Requests
/// answered more than a day ago are deleted.
pub async fn insert_sparkplug_request(
    pool: &SqlitePool,
    action: &str,
    group: &str,
    node: &str,
    actor: &str,
    expires: i64,
) -> Result<i64, StoreError> {
    let now = now_ms();
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM sparkplug_requests WHERE state <> 'pending' AND created < ?")
        .bind(now - REQUESTS_KEPT_MS)
        .execute(&mut *tx)
        .await?;
    let id = sqlx::query(
        "INSERT INTO sparkplug_requests (action, group_id, node_id, actor, created, expires) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(action)
    .bind(group)
    .bind(node)
    .bind(actor)
    .bind(now)
    .bind(expires)
    .execute(&mut *tx)
    .await?
    .last_insert_rowid();
    tx.commit().await?;
    Ok(id)
}

/// Takes the pending requests for execution: each is returned by one call only (pending -> taken in one
/// statement), so it is never executed twice, even by two processes. Those past their expiry are marked expired
/// instead. Reads only, when nothing is pending (the gateway asks every second).
pub async fn take_sparkplug_requests(pool: &SqlitePool) -> Result<Vec<SparkplugRequestRow>, StoreError> {
    let pending: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sparkplug_requests WHERE state = 'pending')")
            .fetch_one(pool)
            .await?;
    if !pending {
        return Ok(Vec::new());
    }
    let now = now_ms();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE sparkplug_requests SET state = 'expired', answered = ?, \
         result = 'not executed: the request expired' WHERE state = 'pending' AND expires <= ?",
    )
    .bind(now)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let rows = sqlx::query(
        "UPDATE sparkplug_requests SET state = 'taken' WHERE state = 'pending' \
         RETURNING id, action, group_id, node_id, actor, state, result",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut taken = rows.iter().map(request_row).collect::<Result<Vec<_>, sqlx::Error>>()?;
    taken.sort_by_key(|r| r.id);
    Ok(taken)
}

/// Answers a taken request: `done` or `refused`, with the text the command line prints.
pub async fn answer_sparkplug_request(
    pool: &SqlitePool,
    id: i64,
    done: bool,
    result: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE sparkplug_requests SET state = ?, answered = ?, result = ? WHERE id = ? AND state = 'taken'",
    )
    .bind(if done { "done" } else { "refused" })
    .bind(now_ms())
    .bind(result)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Withdraws a request nobody has taken (its requester stopped waiting); false if it was taken meanwhile.
pub async fn withdraw_sparkplug_request(pool: &SqlitePool, id: i64) -> Result<bool, StoreError> {
    let changed = sqlx::query(
        "UPDATE sparkplug_requests SET state = 'expired', answered = ?, \
         result = 'not executed: withdrawn by its requester' WHERE id = ? AND state = 'pending'",
    )
    .bind(now_ms())
    .bind(id)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

pub async fn sparkplug_request(
    pool: &SqlitePool,
    id: i64,
) -> Result<Option<SparkplugRequestRow>, StoreError> {
    let row = sqlx::query(
        "SELECT id, action, group_id, node_id, actor, state, result FROM sparkplug_requests WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.as_ref().map(request_row).transpose()?)
}

fn request_row(row: &sqlx::sqlite::SqliteRow) -> Result<SparkplugRequestRow, sqlx::Error> {
    Ok(SparkplugRequestRow {
        id: row.try_get("id")?,
        action: row.try_get("action")?,
        group: row.try_get("group_id")?,
        node: row.try_get("node_id")?,
        actor: row.try_get("actor")?,
        state: row.try_get("state")?,
        result: row.try_get("result")?,
    })
}
