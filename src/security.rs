//! The security service: users from the configuration database, checked at CONNECT, with login throttling and
//! an audit trail. Built on the storage-agnostic `auth` library; the broker sees it only as an
//! [`Authenticator`].
//!
//! Users live in `config.sqlite`. The gateway keeps a snapshot in memory and reloads it when `config_version`
//! moves (every change bumps it, whichever process makes it, `weir user add` included), so changes apply
//! without a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Instant, SystemTime};

use sqlx::{Row, SqlitePool};

use crate::auth::acl::{Acl, Rule, SubscribeDecision, Who};
use crate::auth::password::{self, Argon2Memory, PasswordError};
use crate::auth::throttle::{Throttle, ThrottleConfig};
use crate::mqtt::broker::{AuthDecision, AuthRequest, Authenticator, Authorizer, Principal};
use crate::mqtt::codec::ReasonCode;
use crate::store::{self, StoreError, unix_millis};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecurityError {
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("no user {0:?}")]
    UnknownUser(String),
    #[error("invalid user name {0:?}: use 1 to 64 characters, no control characters, no '+', '#' or '/'")]
    InvalidUserName(String),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("configuration database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("invalid access rule: {0}")]
    Rule(String),
    #[error("no access rule {0}")]
    UnknownRule(i64),
    #[error("cannot import: {0}")]
    Import(String),
    #[error("the system random number generator failed")]
    Randomness,
}

/// What `weir import mosquitto` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    pub users: usize,
    pub rules: usize,
    /// Lines that were understood but not exactly representable, and users without a password.
    pub warnings: Vec<String>,
}

/// A user as listed for the CLI and the console (never the hash).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserInfo {
    pub username: String,
    pub roles: Vec<String>,
    /// Unix ms.
    pub created: i64,
    pub updated: i64,
}

#[derive(Debug)]
pub struct Security {
    pool: SqlitePool,
    users: RwLock<Arc<HashMap<String, StoredUser>>>,
    /// The access rules in force, rebuilt with the users.
    acl: RwLock<Arc<Acl>>,
    throttle: Mutex<Throttle>,
    /// `config_version` when the snapshot was taken.
    version: Mutex<i64>,
    /// Users that disappeared at the last reloads, for the gateway to close their connections.
    removed: Mutex<Vec<String>>,
    /// Where argon2 runs: one computation per core at most, each in memory that is kept.
    argon2: Argon2Slots,
    /// Per user: the stored hash a password was last verified against, and an HMAC of that password.
    verified: Mutex<HashMap<String, (String, Vec<u8>)>>,
    /// Random per process: the cache means nothing outside this process.
    cache_key: ring::hmac::Key,
}

/// Beyond this many users the login cache starts over (bounded memory).
const MAX_CACHED_LOGINS: usize = 100_000;

#[derive(Debug, Clone)]
struct StoredUser {
    hash: String,
}

impl Security {
    pub async fn load(pool: SqlitePool) -> Result<Security, SecurityError> {
        let security = Security {
            pool,
            users: RwLock::new(Arc::new(HashMap::new())),
            acl: RwLock::new(Arc::new(
                Acl::new(Vec::new(), Vec::new()).map_err(|e| SecurityError::Rule(e.to_string()))?,
            )),
            throttle: Mutex::new(Throttle::new(ThrottleConfig::default())),
            version: Mutex::new(-1),
            argon2: Argon2Slots::new(
                std::thread::available_parallelism().map(std::num::NonZero::get).unwrap_or(1),
            ),
            verified: Mutex::new(HashMap::new()),
            removed: Mutex::new(Vec::new()),
            cache_key: ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
                .map_err(|_| SecurityError::Randomness)?,
        };
        security.reload().await?;
        Ok(security)
    }

    /// Reloads the users if the configuration changed since the last look. Cheap enough to call every second.
    pub async fn reload_if_changed(&self) -> Result<bool, SecurityError> {
        let version: i64 =
            sqlx::query_scalar("SELECT version FROM config_version").fetch_one(&self.pool).await?;
        if version == *self.version.lock().unwrap_or_else(PoisonError::into_inner) {
            return Ok(false);
        }
        self.reload().await?;
        Ok(true)
    }

    async fn reload(&self) -> Result<(), SecurityError> {
        // One transaction, so that the version read belongs to the users read.
        let mut tx = self.pool.begin().await?;
        let version: i64 =
            sqlx::query_scalar("SELECT version FROM config_version").fetch_one(&mut *tx).await?;
        let rows =
            sqlx::query("SELECT username, password_hash, roles FROM users").fetch_all(&mut *tx).await?;
        let rule_rows = sqlx::query("SELECT id, rule FROM acl_rules ORDER BY id").fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let mut users = HashMap::with_capacity(rows.len());
        let mut roles = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get("username")?;
            let user_roles: String = row.try_get("roles")?;
            roles.push((name.clone(), serde_json::from_str::<Vec<String>>(&user_roles).unwrap_or_default()));
            users.insert(name, StoredUser { hash: row.try_get("password_hash")? });
        }
        let mut rules = Vec::with_capacity(rule_rows.len());
        for row in rule_rows {
            let text: String = row.try_get("rule")?;
            match serde_json::from_str::<Rule>(&text) {
                Ok(rule) => rules.push(rule),
                Err(e) => {
                    tracing::error!(id = row.try_get::<i64, _>("id")?, "unreadable access rule ignored: {e}")
                }
            }
        }
        // Rules are validated when added; a rule set that does not compile keeps the previous one in force.
        match Acl::new(rules, roles) {
            Ok(acl) => *self.acl.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(acl),
            Err(e) => tracing::error!("access rules not applied: {e}"),
        }
        let previous = std::mem::replace(
            &mut *self.users.write().unwrap_or_else(PoisonError::into_inner),
            Arc::new(users),
        );
        let current = self.users.read().unwrap_or_else(PoisonError::into_inner).clone();
        self.removed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(previous.keys().filter(|name| !current.contains_key(*name)).cloned());
        *self.version.lock().unwrap_or_else(PoisonError::into_inner) = version;
        Ok(())
    }

    /// Marks the configuration changed for every process watching it.
    async fn bump(&self) -> Result<(), SecurityError> {
        sqlx::query("UPDATE config_version SET version = version + 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Users deleted since the last call.
    pub fn take_removed_users(&self) -> Vec<String> {
        std::mem::take(&mut *self.removed.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether the gateway currently accepts this user (its in-memory snapshot, which follows the database).
    pub fn knows(&self, username: &str) -> bool {
        self.users.read().unwrap_or_else(PoisonError::into_inner).contains_key(username)
    }

    fn user(&self, name: &str) -> Option<StoredUser> {
        self.users.read().unwrap_or_else(PoisonError::into_inner).get(name).cloned()
    }

    pub async fn add_user(
        &self,
        username: &str,
        password: &str,
        roles: &[String],
        actor: &str,
    ) -> Result<(), SecurityError> {
        check_user_name(username)?;
        let hash = self.hash(password.to_owned()).await?;
        let now = unix_millis(SystemTime::now());
        let roles = serde_json::to_string(roles).unwrap_or_else(|_| "[]".into());
        let inserted = sqlx::query(
            "INSERT INTO users (username, password_hash, roles, created, updated) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (username) DO NOTHING",
        )
        .bind(username)
        .bind(hash)
        .bind(&roles)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(SecurityError::UserExists(username.to_owned()));
        }
        store::audit(&self.pool, actor, "user.add", &format!("{username} roles {roles}")).await?;
        self.bump().await?;
        self.reload().await
    }

    pub async fn set_password(
        &self,
        username: &str,
        password: &str,
        actor: &str,
    ) -> Result<(), SecurityError> {
        let hash = self.hash(password.to_owned()).await?;
        let updated = sqlx::query("UPDATE users SET password_hash = ?, updated = ? WHERE username = ?")
            .bind(hash)
            .bind(unix_millis(SystemTime::now()))
            .bind(username)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if updated == 0 {
            return Err(SecurityError::UnknownUser(username.to_owned()));
        }
        store::audit(&self.pool, actor, "user.passwd", username).await?;
        self.bump().await?;
        self.reload().await
    }

    pub async fn delete_user(&self, username: &str, actor: &str) -> Result<(), SecurityError> {
        let deleted = sqlx::query("DELETE FROM users WHERE username = ?")
            .bind(username)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(SecurityError::UnknownUser(username.to_owned()));
        }
        store::audit(&self.pool, actor, "user.del", username).await?;
        self.bump().await?;
        self.reload().await
    }

    /// Imports a Mosquitto password file and ACL file in one transaction: all or nothing. Hashes are kept as
    /// they are (`$6$`/`$7$`) and upgraded to argon2id at each user's next successful login. Users that already
    /// exist are an error (nothing is imported), so that an import never silently replaces a password.
    pub async fn import_mosquitto(
        &self,
        passwd: Option<&str>,
        acl: Option<&str>,
        actor: &str,
    ) -> Result<ImportSummary, SecurityError> {
        use crate::auth::mosquitto;
        let entries = match passwd {
            Some(text) => {
                mosquitto::parse_password_file(text).map_err(|e| SecurityError::Import(e.to_string()))?
            }
            None => Vec::new(),
        };
        let imported = match acl {
            Some(text) => {
                Some(mosquitto::parse_acl_file(text).map_err(|e| SecurityError::Import(e.to_string()))?)
            }
            None => None,
        };
        if let Some(imported) = &imported {
            Acl::new(imported.rules.clone(), Vec::new()).map_err(|e| SecurityError::Rule(e.to_string()))?;
        }
        for e in &entries {
            check_user_name(&e.username)?;
        }
        let now = unix_millis(SystemTime::now());
        let mut tx = self.pool.begin().await?;
        for e in &entries {
            let inserted = sqlx::query(
                "INSERT INTO users (username, password_hash, roles, created, updated) VALUES (?, ?, '[]', ?, ?) \
                 ON CONFLICT (username) DO NOTHING",
            )
            .bind(&e.username)
            .bind(&e.hash)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                return Err(SecurityError::UserExists(e.username.clone()));
            }
        }
        let mut rules = 0;
        let mut warnings = Vec::new();
        if let Some(imported) = imported {
            for rule in &imported.rules {
                let text = serde_json::to_string(rule).map_err(|e| SecurityError::Rule(e.to_string()))?;
                sqlx::query("INSERT INTO acl_rules (rule, created) VALUES (?, ?)")
                    .bind(text)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                rules += 1;
            }
            warnings = imported.warnings.iter().map(|w| format!("line {}: {}", w.line, w.message)).collect();
            let known: std::collections::HashSet<&str> =
                entries.iter().map(|e| e.username.as_str()).collect();
            for user in imported.users.iter().filter(|u| !known.contains(u.as_str()) && !self.knows(u)) {
                warnings.push(format!("the ACL file names user {user:?}, who has no password"));
            }
        }
        sqlx::query("UPDATE config_version SET version = version + 1").execute(&mut *tx).await?;
        tx.commit().await?;
        let summary = ImportSummary { users: entries.len(), rules, warnings };
        store::audit(
            &self.pool,
            actor,
            "import.mosquitto",
            &format!("{} users, {} rules", summary.users, summary.rules),
        )
        .await?;
        self.reload().await?;
        Ok(summary)
    }

    /// Adds an access rule; returns its id.
    pub async fn add_rule(&self, rule: &Rule, actor: &str) -> Result<i64, SecurityError> {
        Acl::new(vec![rule.clone()], Vec::new()).map_err(|e| SecurityError::Rule(e.to_string()))?;
        let text = serde_json::to_string(rule).map_err(|e| SecurityError::Rule(e.to_string()))?;
        let id = sqlx::query("INSERT INTO acl_rules (rule, created) VALUES (?, ?)")
            .bind(&text)
            .bind(unix_millis(SystemTime::now()))
            .execute(&self.pool)
            .await?
            .last_insert_rowid();
        store::audit(&self.pool, actor, "acl.add", &format!("#{id} {text}")).await?;
        self.bump().await?;
        self.reload().await?;
        Ok(id)
    }

    pub async fn delete_rule(&self, id: i64, actor: &str) -> Result<(), SecurityError> {
        let deleted = sqlx::query("DELETE FROM acl_rules WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(SecurityError::UnknownRule(id));
        }
        store::audit(&self.pool, actor, "acl.del", &format!("#{id}")).await?;
        self.bump().await?;
        self.reload().await
    }

    pub async fn list_rules(&self) -> Result<Vec<(i64, Rule)>, SecurityError> {
        let rows = sqlx::query("SELECT id, rule FROM acl_rules ORDER BY id").fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let text: String = row.try_get("rule")?;
            let rule = serde_json::from_str(&text).map_err(|e| SecurityError::Rule(e.to_string()))?;
            out.push((row.try_get("id")?, rule));
        }
        Ok(out)
    }

    fn acl(&self) -> Arc<Acl> {
        self.acl.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub async fn list_users(&self) -> Result<Vec<UserInfo>, SecurityError> {
        let rows = sqlx::query("SELECT username, roles, created, updated FROM users ORDER BY username")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let roles: String = row.try_get("roles")?;
                Ok(UserInfo {
                    username: row.try_get("username")?,
                    roles: serde_json::from_str(&roles).unwrap_or_default(),
                    created: row.try_get("created")?,
                    updated: row.try_get("updated")?,
                })
            })
            .collect()
    }

    /// The decision for one CONNECT, with throttling, counting and the audit trail.
    async fn decide(&self, request: AuthRequest<'_>) -> AuthDecision {
        let mut request = request;
        if let Some(identity) = request.certificate {
            if !request.certificate_password {
                return AuthDecision::Allow { username: Some(identity.to_owned()) };
            }
            // The certificate names the user; the password must be that user's.
            request.username = Some(identity);
        }
        let Some(username) = request.username else {
            if request.anonymous_allowed {
                return AuthDecision::Allow { username: None };
            }
            self.audit_failure(&request, "no credentials on a listener that requires them").await;
            return AuthDecision::Deny(
                ReasonCode::NOT_AUTHORIZED,
                "this listener does not allow anonymous clients",
            );
        };
        let now = Instant::now();
        let throttled = self.throttle.lock().unwrap_or_else(PoisonError::into_inner).check(
            request.peer,
            Some(username),
            now,
        );
        if let Err(retry) = throttled {
            tracing::warn!(peer = %request.peer, user = username, retry_after = ?retry.0, "login refused: too many failed attempts");
            return AuthDecision::Deny(
                ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                "too many failed attempts; try again later",
            );
        }
        let verified = match (self.user(username), request.password) {
            (Some(user), Some(password)) => self.verify(username, &user.hash, password).await,
            _ => None,
        };
        match verified {
            Some(v) if v.ok => {
                self.throttle.lock().unwrap_or_else(PoisonError::into_inner).record_success(
                    request.peer,
                    Some(username),
                    now,
                );
                if v.needs_upgrade
                    && let Some(password) = request.password.and_then(|p| std::str::from_utf8(p).ok())
                {
                    self.upgrade_hash(username, password).await;
                }
                // Audited without holding up the CONNACK: a reconnect storm must not wait for the log.
                let (pool, detail) = (
                    self.pool.clone(),
                    format!("user {username:?}, client {:?}, from {}", request.client_id, request.peer),
                );
                tokio::spawn(async move {
                    if let Err(e) = store::audit(&pool, "mqtt", "login", &detail).await {
                        tracing::warn!("audit log: {e}");
                    }
                });
                AuthDecision::Allow { username: Some(username.to_owned()) }
            }
            _ => {
                self.throttle.lock().unwrap_or_else(PoisonError::into_inner).record_failure(
                    request.peer,
                    Some(username),
                    now,
                );
                self.audit_failure(&request, "wrong user name or password").await;
                AuthDecision::Deny(ReasonCode::BAD_USER_NAME_OR_PASSWORD, "wrong user name or password")
            }
        }
    }

    /// Checks a password. Argon2 is deliberately expensive in CPU and memory, so at most one verification per
    /// core runs at a time, in memory allocated once per core (a reconnect storm queues instead of allocating
    /// 8 MiB per waiting client), and a password that verified before against the same stored hash is recognised
    /// by a keyed fast hash kept in memory only (the key is random per process), so that a device reconnecting
    /// does not pay argon2 again.
    async fn verify(&self, username: &str, stored: &str, password: &[u8]) -> Option<password::Verified> {
        let tag = ring::hmac::sign(&self.cache_key, &[username.as_bytes(), b"\0", password].concat());
        let known = || {
            let cache = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
            cache.get(username).is_some_and(|(hash, known)| {
                hash == stored && bool::from(subtle::ConstantTimeEq::ct_eq(known.as_slice(), tag.as_ref()))
            })
        };
        if known() {
            return Some(password::Verified { ok: true, needs_upgrade: false });
        }
        let slot = self.argon2.acquire().await?;
        // Another connection of the same device may have verified it while this one waited.
        if known() {
            return Some(password::Verified { ok: true, needs_upgrade: false });
        }
        let (hash, secret) = (stored.to_owned(), password.to_vec());
        let verified = slot.run(move |memory| password::verify_with(&hash, &secret, memory)).await?.ok()?;
        if verified.ok && !verified.needs_upgrade {
            let mut cache = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.len() >= MAX_CACHED_LOGINS {
                cache.clear();
            }
            cache.insert(username.to_owned(), (stored.to_owned(), tag.as_ref().to_vec()));
        }
        Some(verified)
    }

    /// Hashes a new password in an argon2 slot.
    async fn hash(&self, password: String) -> Result<String, SecurityError> {
        let failed = || SecurityError::Password(PasswordError::Hashing("the hashing task failed".into()));
        let slot = self.argon2.acquire().await.ok_or_else(failed)?;
        Ok(slot.run(move |memory| password::hash_with(&password, memory)).await.ok_or_else(failed)??)
    }

    async fn audit_failure(&self, request: &AuthRequest<'_>, why: &str) {
        tracing::info!(peer = %request.peer, user = ?request.username, client = request.client_id, "login failed: {why}");
        let detail = format!(
            "{why}; user {:?}, client {:?}, from {}",
            request.username, request.client_id, request.peer
        );
        if let Err(e) = store::audit(&self.pool, "mqtt", "login.failed", &detail).await {
            tracing::warn!("audit log: {e}");
        }
    }

    /// Replaces an old-scheme hash (Mosquitto's) with argon2id after a successful login. Best effort: the old
    /// hash keeps working if this fails (a password that fails today's policy is left as it is).
    async fn upgrade_hash(&self, username: &str, password: &str) {
        let Ok(hash) = self.hash(password.to_owned()).await else { return };
        let result = sqlx::query("UPDATE users SET password_hash = ?, updated = ? WHERE username = ?")
            .bind(hash)
            .bind(unix_millis(SystemTime::now()))
            .bind(username)
            .execute(&self.pool)
            .await;
        match result {
            Ok(_) => {
                let _ = store::audit(&self.pool, "system", "user.hash_upgraded", username).await;
                let _ = self.bump().await;
                let _ = self.reload().await;
            }
            Err(e) => tracing::warn!(user = username, "could not upgrade the password hash: {e}"),
        }
    }
}

/// Access decisions. Anonymous clients exist only on listeners that allow them; unless some rule speaks about
/// anonymous clients they are not restricted by topic. Authenticated users are denied what no rule allows,
/// except holders of the `admin` role.
impl Authorizer for Security {
    fn can_publish(&self, who: &Principal, topic: &str) -> bool {
        let acl = self.acl();
        unrestricted(&acl, who) || acl.can_publish(subject(who), topic)
    }

    fn can_subscribe(&self, who: &Principal, filter: &str) -> bool {
        let acl = self.acl();
        unrestricted(&acl, who) || acl.can_subscribe(subject(who), filter) != SubscribeDecision::Denied
    }

    fn can_read(&self, who: &Principal, topic: &str) -> bool {
        let acl = self.acl();
        unrestricted(&acl, who) || acl.can_read(subject(who), topic)
    }
}

fn unrestricted(acl: &Acl, who: &Principal) -> bool {
    who.username.is_none() && !acl.restricts_anonymous()
}

/// The principal as the rules see it (borrowed: these checks run for every PUBLISH and filtered delivery).
fn subject(who: &Principal) -> Who<'_> {
    Who { username: who.username.as_deref(), client_id: &who.client_id }
}

impl Authenticator for Security {
    fn authenticate<'a>(
        &'a self,
        request: AuthRequest<'a>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = AuthDecision> + Send + 'a>> {
        Box::pin(self.decide(request))
    }
}

/// Where argon2 runs: at most one computation per core, each on a blocking thread (argon2 is deliberately slow;
/// it stays off the async workers) in working memory that belongs to its slot.
///
/// Why the memory is kept: a computation fills 8 MiB. Allocated per login and freed, it stays with glibc, in
/// the arena of whichever blocking thread ran it: after 1,000 distinct users logged in at once the process kept
/// ~200-260 MB. Kept per slot, argon2 never holds more than cores x 8 MiB, allocated at the first login and
/// then reused. The buffers are pooled apart from the permits (a buffer is taken by whoever holds a permit), and
/// a permit is released only when its computation has finished and put its buffer back, even if the login
/// waiting for it was abandoned: so there are never more buffers than permits.
#[derive(Debug)]
struct Argon2Slots {
    permits: Arc<tokio::sync::Semaphore>,
    /// Buffers not in use now; at most one per permit.
    idle: Arc<Mutex<Vec<Argon2Memory>>>,
}

/// The right to run one argon2 computation.
#[derive(Debug)]
struct Argon2Slot {
    permit: tokio::sync::OwnedSemaphorePermit,
    idle: Arc<Mutex<Vec<Argon2Memory>>>,
}

impl Argon2Slots {
    fn new(slots: usize) -> Argon2Slots {
        Argon2Slots {
            permits: Arc::new(tokio::sync::Semaphore::new(slots)),
            idle: Arc::new(Mutex::new(Vec::with_capacity(slots))),
        }
    }

    /// Waits for a free slot (`None` only if the semaphore were closed, which it never is).
    async fn acquire(&self) -> Option<Argon2Slot> {
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        Some(Argon2Slot { permit, idle: self.idle.clone() })
    }
}

impl Argon2Slot {
    /// Runs `work` on a blocking thread with this slot's memory (`None` if it panicked).
    async fn run<T: Send + 'static>(
        self,
        work: impl FnOnce(&mut Argon2Memory) -> T + Send + 'static,
    ) -> Option<T> {
        let Argon2Slot { permit, idle } = self;
        tokio::task::spawn_blocking(move || {
            let mut memory = idle.lock().unwrap_or_else(PoisonError::into_inner).pop().unwrap_or_default();
            let result = work(&mut memory);
            idle.lock().unwrap_or_else(PoisonError::into_inner).push(memory);
            drop(permit);
            result
        })
        .await
        .ok()
    }
}

fn check_user_name(name: &str) -> Result<(), SecurityError> {
    let ok = !name.is_empty()
        && name.chars().count() <= 64
        && !name.chars().any(|c| c.is_control() || matches!(c, '+' | '#' | '/'))
        && name.trim() == name;
    if ok { Ok(()) } else { Err(SecurityError::InvalidUserName(name.to_owned())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn security() -> (tempfile::TempDir, Security) {
        let dir = tempfile::tempdir().unwrap();
        let (pool, _) =
            store::open(dir.path(), store::Database::Config, sqlx::sqlite::SqliteSynchronous::Full, None)
                .await
                .unwrap();
        (dir, Security::load(pool).await.unwrap())
    }

    fn request<'a>(user: Option<&'a str>, password: Option<&'a [u8]>) -> AuthRequest<'a> {
        AuthRequest {
            peer: "192.0.2.7".parse().unwrap(),
            username: user,
            password,
            client_id: "c",
            anonymous_allowed: false,
            certificate: None,
            certificate_password: false,
        }
    }

    #[tokio::test]
    async fn users_are_managed_with_clear_errors_and_an_audit_trail() {
        let (_dir, s) = security().await;
        s.add_user("alice", "correct horse battery", &["operators".into()], "cli").await.unwrap();
        assert!(matches!(
            s.add_user("alice", "another good one", &[], "cli").await,
            Err(SecurityError::UserExists(_))
        ));
        assert!(matches!(
            s.add_user("bob", "short", &[], "cli").await,
            Err(SecurityError::Password(PasswordError::Weak(_)))
        ));
        assert!(matches!(
            s.add_user("", "long enough pw", &[], "cli").await,
            Err(SecurityError::InvalidUserName(_))
        ));
        assert!(matches!(
            s.add_user("a/b", "long enough pw", &[], "cli").await,
            Err(SecurityError::InvalidUserName(_))
        ));
        assert!(matches!(s.delete_user("nobody", "cli").await, Err(SecurityError::UnknownUser(_))));
        assert!(matches!(
            s.set_password("nobody", "long enough pw", "cli").await,
            Err(SecurityError::UnknownUser(_))
        ));
        let users = s.list_users().await.unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].roles, ["operators"]);
        s.set_password("alice", "a new long passphrase", "cli").await.unwrap();
        s.delete_user("alice", "cli").await.unwrap();
        let actions: Vec<String> =
            sqlx::query_scalar("SELECT action FROM audit_log ORDER BY id").fetch_all(&s.pool).await.unwrap();
        assert_eq!(actions, ["user.add", "user.passwd", "user.del"]);
    }

    #[tokio::test]
    async fn connect_decisions() {
        let (_dir, s) = security().await;
        s.add_user("alice", "correct horse battery", &[], "cli").await.unwrap();
        let ok = s.decide(request(Some("alice"), Some(b"correct horse battery"))).await;
        assert_eq!(ok, AuthDecision::Allow { username: Some("alice".into()) });
        for (user, password) in
            [(Some("alice"), Some(&b"wrong"[..])), (Some("mallory"), Some(&b"x"[..])), (Some("alice"), None)]
        {
            let d = s.decide(request(user, password)).await;
            assert!(
                matches!(d, AuthDecision::Deny(ReasonCode::BAD_USER_NAME_OR_PASSWORD, _)),
                "{user:?}: {d:?}"
            );
        }
        let anon = s.decide(request(None, None)).await;
        assert!(matches!(anon, AuthDecision::Deny(ReasonCode::NOT_AUTHORIZED, _)));
        let mut allowed = request(None, None);
        allowed.anonymous_allowed = true;
        assert_eq!(s.decide(allowed).await, AuthDecision::Allow { username: None });
    }

    #[tokio::test]
    async fn the_login_cache_never_admits_a_wrong_or_old_password() {
        let (_dir, s) = security().await;
        s.add_user("alice", "correct horse battery", &[], "cli").await.unwrap();
        // A storm of the same device: every one admitted, argon2 run only while the cache is cold.
        let decisions = futures_util::future::join_all(
            (0..50).map(|_| s.decide(request(Some("alice"), Some(b"correct horse battery")))),
        )
        .await;
        assert!(decisions.iter().all(|d| *d == AuthDecision::Allow { username: Some("alice".into()) }));
        let wrong = s.decide(request(Some("alice"), Some(b"correct horse batterx"))).await;
        assert!(matches!(wrong, AuthDecision::Deny(..)), "a cached login does not admit another password");
        s.set_password("alice", "a brand new passphrase", "cli").await.unwrap();
        let old = s.decide(request(Some("alice"), Some(b"correct horse battery"))).await;
        assert!(matches!(old, AuthDecision::Deny(..)), "the old password stops working at once");
        let new = s.decide(request(Some("alice"), Some(b"a brand new passphrase"))).await;
        assert_eq!(new, AuthDecision::Allow { username: Some("alice".into()) });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_storm_of_distinct_users_reuses_one_argon2_buffer_per_core() {
        let (_dir, s) = security().await;
        let users: Vec<String> = (0..24).map(|i| format!("dev{i}")).collect();
        for user in &users {
            s.add_user(user, "correct horse battery", &[], "cli").await.unwrap();
        }
        let decisions = futures_util::future::join_all(users.iter().map(|user| {
            let password: &[u8] =
                if user == "dev7" { b"wrong horse battery" } else { b"correct horse battery" };
            s.decide(request(Some(user), Some(password)))
        }))
        .await;
        for (user, decision) in users.iter().zip(&decisions) {
            if user == "dev7" {
                assert!(matches!(decision, AuthDecision::Deny(..)), "{decision:?}");
            } else {
                assert_eq!(*decision, AuthDecision::Allow { username: Some(user.clone()) });
            }
        }
        let slots = std::thread::available_parallelism().map(std::num::NonZero::get).unwrap_or(1);
        let kept = s.argon2.idle.lock().unwrap().len();
        assert!((1..=slots).contains(&kept), "{kept} buffers for {slots} slots");
        assert_eq!(s.argon2.permits.available_permits(), slots, "every slot is free again");
    }

    #[tokio::test]
    async fn repeated_failures_are_throttled_and_audited() {
        let (_dir, s) = security().await;
        s.add_user("alice", "correct horse battery", &[], "cli").await.unwrap();
        for _ in 0..6 {
            s.decide(request(Some("alice"), Some(b"guess"))).await;
        }
        let d = s.decide(request(Some("alice"), Some(b"correct horse battery"))).await;
        assert!(matches!(d, AuthDecision::Deny(_, "too many failed attempts; try again later")), "{d:?}");
        let failures: i64 =
            sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'login.failed'")
                .fetch_one(&s.pool)
                .await
                .unwrap();
        assert_eq!(failures, 6);
    }

    #[tokio::test]
    async fn mosquitto_hashes_work_and_are_upgraded_at_login() {
        let (_dir, s) = security().await;
        // Made with `mosquitto_passwd -c -b f plc1 'S3cure-Pump#4'` (2.0.11: PBKDF2-SHA512, 101 iterations).
        let hash = (
            "$7$101$q55UyFttirtQuZ1l$XFH5jKTwsZhemob6xRFbsZRQ1Sc3NKyZ3QqeOEVkBe6aiYjoQZajZVxhyNV3lTtEqURoGsbs6oXXNx8QDH7fww==",
            "S3cure-Pump#4",
        );
        sqlx::query(
            "INSERT INTO users (username, password_hash, created, updated) VALUES ('legacy', ?, 0, 0)",
        )
        .bind(hash.0)
        .execute(&s.pool)
        .await
        .unwrap();
        s.bump().await.unwrap();
        assert!(s.reload_if_changed().await.unwrap());
        assert!(!s.reload_if_changed().await.unwrap(), "nothing changed since");
        let d = s.decide(request(Some("legacy"), Some(hash.1.as_bytes()))).await;
        assert_eq!(d, AuthDecision::Allow { username: Some("legacy".into()) });
        let stored: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE username = 'legacy'")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert!(stored.starts_with("$argon2id$"), "{stored}");
    }
}
