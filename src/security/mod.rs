//! The security service: who may connect, what each client may do with topics, and the certificates it may
//! connect with. One service over the pure libraries `auth` (passwords, the rule engine, throttling, Mosquitto
//! files) and `pki` (the CA, certificates, CRLs, rustls configurations); its SQL is in
//! [`crate::store::config_db`]. The broker sees it only through the [`Authenticator`] and [`Authorizer`] traits.
//!
//! - Users and rules: an in-memory [`Snapshot`], rebuilt whenever `config_version` moves (every change bumps it,
//!   whichever process makes it, `weir user add` included) and swapped in whole, so a CONNECT never sees the new
//!   users with the old rules.
//! - [`certs`]: device certificates, revocation and the CRL.
//! - [`server`]: the gateway's CA on disk and the server certificate of the TLS listeners, renewed when due.

mod argon2;
pub mod certs;
pub mod server;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use crate::auth::acl::{Acl, Rule, SubscribeDecision};
use crate::auth::password::{self, PasswordError};
use crate::auth::throttle::{Throttle, ThrottleConfig};
use crate::auth::{ADMIN_ROLE, Identity};
use crate::mqtt::broker::{AuthDecision, AuthRequest, Authenticator, Authorizer};
use crate::mqtt::codec::ReasonCode;
use crate::store::config_db::{self, Audited};
use crate::store::{self, StoreError};
use argon2::Argon2Slots;
pub use certs::{CertError, Certificates};
pub use config_db::{CertRecord, UserInfo};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecurityError {
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("no user {0:?}")]
    UnknownUser(String),
    #[error("invalid user name {0:?}: use 1 to 64 characters, no control characters, no '+', '#' or '/'")]
    InvalidUserName(String),
    #[error("invalid role {0:?}: use 1 to 64 letters, digits, '-', '_' or '.'")]
    InvalidRole(String),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid access rule: {0}")]
    Rule(String),
    #[error("no access rule {0}")]
    UnknownRule(i64),
    #[error("cannot import: {0}")]
    Import(String),
    #[error("the system random number generator failed")]
    Randomness,
}

impl From<sqlx::Error> for SecurityError {
    fn from(e: sqlx::Error) -> Self {
        SecurityError::Store(StoreError::Query(e))
    }
}

/// The role that may read the console but change nothing.
pub const VIEWER_ROLE: &str = "viewer";

/// What a user may do in the web console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleRole {
    Admin,
    Viewer,
}

/// Why a password was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PasswordRefusal {
    #[error("wrong user name or password")]
    Wrong,
    #[error("too many failed attempts; try again later")]
    Throttled,
}

/// What `weir import mosquitto` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    pub users: usize,
    pub rules: usize,
    /// Lines that were understood but not exactly representable, and users without a password.
    pub warnings: Vec<String>,
}

/// Users and rules as one value: replaced whole, never in parts.
#[derive(Debug)]
struct Snapshot {
    /// `config_version` when it was read.
    version: i64,
    /// Password hashes by user name.
    users: HashMap<String, String>,
    acl: Acl,
}

#[derive(Debug)]
pub struct Security {
    pool: sqlx::SqlitePool,
    snapshot: RwLock<Arc<Snapshot>>,
    throttle: Mutex<Throttle>,
    /// Users that disappeared at the last reloads, for the gateway to close their connections.
    removed: Mutex<Vec<String>>,
    /// Where argon2 runs: one computation per core at most, each in memory that is kept.
    argon2: Argon2Slots,
    /// Per user: the stored hash a password was last verified against, and an HMAC of that password.
    verified: Mutex<HashMap<String, (String, Vec<u8>)>>,
    /// Random per process: the cache means nothing outside this process.
    cache_key: ring::hmac::Key,
    certificates: Certificates,
}

/// Beyond this many users the login cache starts over (bounded memory).
const MAX_CACHED_LOGINS: usize = 100_000;

impl Security {
    /// The service over the configuration database `pool` of the data directory `data_dir` (whose `pki/` holds
    /// the CA).
    pub async fn load(pool: sqlx::SqlitePool, data_dir: &Path) -> Result<Security, SecurityError> {
        let empty = Snapshot {
            version: -1,
            users: HashMap::new(),
            acl: Acl::new(Vec::new(), Vec::new()).map_err(|e| SecurityError::Rule(e.to_string()))?,
        };
        let security = Security {
            certificates: Certificates::new(pool.clone(), data_dir),
            pool,
            snapshot: RwLock::new(Arc::new(empty)),
            throttle: Mutex::new(Throttle::new(ThrottleConfig::default())),
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

    /// Device certificates and the CA.
    pub fn certificates(&self) -> &Certificates {
        &self.certificates
    }

    /// The configuration database.
    pub fn pool(&self) -> &sqlx::SqlitePool {
        &self.pool
    }

    /// Reloads users and rules if the configuration changed since the last look. Cheap enough to call every
    /// second.
    pub async fn reload_if_changed(&self) -> Result<bool, SecurityError> {
        if config_db::version(&self.pool).await? == self.snapshot().version {
            return Ok(false);
        }
        self.reload().await?;
        Ok(true)
    }

    async fn reload(&self) -> Result<(), SecurityError> {
        let rows = config_db::security_rows(&self.pool).await?;
        let mut users = HashMap::with_capacity(rows.users.len());
        let mut roles = Vec::with_capacity(rows.users.len());
        for user in rows.users {
            roles.push((user.username.clone(), user.roles));
            users.insert(user.username, user.password_hash);
        }
        let mut rules = Vec::with_capacity(rows.rules.len());
        for (id, text) in rows.rules {
            match serde_json::from_str::<Rule>(&text) {
                Ok(rule) => rules.push(rule),
                Err(e) => tracing::error!(id, "unreadable access rule ignored: {e}"),
            }
        }
        let previous = self.snapshot();
        // Rules are validated when added; a rule set that does not compile keeps the previous rules in force,
        // with the previous users, so that the two always belong together.
        let acl = match Acl::new(rules, roles) {
            Ok(acl) => acl,
            Err(e) => {
                tracing::error!("users and access rules not applied: {e}");
                return Ok(());
            }
        };
        self.removed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(previous.users.keys().filter(|name| !users.contains_key(*name)).cloned());
        *self.snapshot.write().unwrap_or_else(PoisonError::into_inner) =
            Arc::new(Snapshot { version: rows.version, users, acl });
        Ok(())
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Users deleted since the last call.
    pub fn take_removed_users(&self) -> Vec<String> {
        std::mem::take(&mut *self.removed.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether the gateway currently accepts this user (its in-memory snapshot, which follows the database).
    pub fn knows(&self, username: &str) -> bool {
        self.snapshot().users.contains_key(username)
    }

    /// The roles the user has in the rules in force.
    pub fn roles(&self, username: &str) -> Vec<String> {
        self.snapshot().acl.roles(username).to_vec()
    }

    /// Whether the user holds the admin role in the rules in force.
    pub fn is_admin(&self, username: &str) -> bool {
        self.snapshot().acl.roles(username).iter().any(|r| r == ADMIN_ROLE)
    }

    pub async fn add_user(
        &self,
        username: &str,
        password: &str,
        roles: &[String],
        actor: &str,
    ) -> Result<(), SecurityError> {
        check_user_name(username)?;
        roles.iter().try_for_each(|r| check_role(r))?;
        let hash = self.hash(password.to_owned()).await?;
        let detail = format!("{username} roles {roles:?}");
        let audited = Audited { actor, action: "user.add", detail: &detail };
        if !config_db::insert_user(&self.pool, username, &hash, roles, audited).await? {
            return Err(SecurityError::UserExists(username.to_owned()));
        }
        self.reload().await
    }

    pub async fn set_password(
        &self,
        username: &str,
        password: &str,
        actor: &str,
    ) -> Result<(), SecurityError> {
        let hash = self.hash(password.to_owned()).await?;
        let audited = Audited { actor, action: "user.passwd", detail: username };
        if !config_db::set_password_hash(&self.pool, username, &hash, audited).await? {
            return Err(SecurityError::UnknownUser(username.to_owned()));
        }
        self.reload().await
    }

    pub async fn set_roles(
        &self,
        username: &str,
        roles: &[String],
        actor: &str,
    ) -> Result<(), SecurityError> {
        roles.iter().try_for_each(|r| check_role(r))?;
        let detail = format!("{username} roles {roles:?}");
        let audited = Audited { actor, action: "user.roles", detail: &detail };
        if !config_db::set_roles(&self.pool, username, roles, audited).await? {
            return Err(SecurityError::UnknownUser(username.to_owned()));
        }
        self.reload().await
    }

    pub async fn delete_user(&self, username: &str, actor: &str) -> Result<(), SecurityError> {
        let audited = Audited { actor, action: "user.del", detail: username };
        if !config_db::delete_user(&self.pool, username, audited).await? {
            return Err(SecurityError::UnknownUser(username.to_owned()));
        }
        self.reload().await
    }

    pub async fn list_users(&self) -> Result<Vec<UserInfo>, SecurityError> {
        Ok(config_db::list_users(&self.pool).await?)
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
        let mut rules = Vec::new();
        let mut warnings = Vec::new();
        if let Some(imported) = &imported {
            Acl::new(imported.rules.clone(), Vec::new()).map_err(|e| SecurityError::Rule(e.to_string()))?;
            for rule in &imported.rules {
                rules.push(serde_json::to_string(rule).map_err(|e| SecurityError::Rule(e.to_string()))?);
            }
            warnings = imported.warnings.iter().map(|w| format!("line {}: {}", w.line, w.message)).collect();
            let known: std::collections::HashSet<&str> =
                entries.iter().map(|e| e.username.as_str()).collect();
            for user in imported.users.iter().filter(|u| !known.contains(u.as_str()) && !self.knows(u)) {
                warnings.push(format!("the ACL file names user {user:?}, who has no password"));
            }
        }
        for e in &entries {
            check_user_name(&e.username)?;
        }
        let users: Vec<(String, String)> =
            entries.iter().map(|e| (e.username.clone(), e.hash.clone())).collect();
        let summary = ImportSummary { users: users.len(), rules: rules.len(), warnings };
        let detail = format!("{} users, {} rules", summary.users, summary.rules);
        let audited = Audited { actor, action: "import.mosquitto", detail: &detail };
        if let Err(taken) = config_db::import(&self.pool, &users, &rules, audited).await? {
            return Err(SecurityError::UserExists(taken));
        }
        self.reload().await?;
        Ok(summary)
    }

    /// Adds an access rule; returns its id.
    pub async fn add_rule(&self, rule: &Rule, actor: &str) -> Result<i64, SecurityError> {
        Acl::new(vec![rule.clone()], Vec::new()).map_err(|e| SecurityError::Rule(e.to_string()))?;
        let text = serde_json::to_string(rule).map_err(|e| SecurityError::Rule(e.to_string()))?;
        let id = config_db::insert_rule(&self.pool, &text, actor).await?;
        self.reload().await?;
        Ok(id)
    }

    pub async fn delete_rule(&self, id: i64, actor: &str) -> Result<(), SecurityError> {
        let detail = format!("#{id}");
        let audited = Audited { actor, action: "acl.del", detail: &detail };
        if !config_db::delete_rule(&self.pool, id, audited).await? {
            return Err(SecurityError::UnknownRule(id));
        }
        self.reload().await
    }

    pub async fn list_rules(&self) -> Result<Vec<(i64, Rule)>, SecurityError> {
        config_db::list_rules(&self.pool)
            .await?
            .into_iter()
            .map(|(id, text)| {
                serde_json::from_str(&text)
                    .map(|rule| (id, rule))
                    .map_err(|e| SecurityError::Rule(e.to_string()))
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
        match self.check_password(request.peer, username, request.password).await {
            Ok(()) => {
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
            Err(PasswordRefusal::Throttled) => AuthDecision::Deny(
                ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                "too many failed attempts; try again later",
            ),
            Err(PasswordRefusal::Wrong) => {
                self.audit_failure(&request, "wrong user name or password").await;
                AuthDecision::Deny(ReasonCode::BAD_USER_NAME_OR_PASSWORD, "wrong user name or password")
            }
        }
    }

    /// Signs in to the web console: the same users, passwords and throttling as MQTT, and the user must hold the
    /// `admin` or `viewer` role. Audited either way.
    pub async fn console_login(
        &self,
        peer: std::net::IpAddr,
        username: &str,
        password: &str,
    ) -> Result<ConsoleRole, PasswordRefusal> {
        let checked = self.check_password(peer, username, Some(password.as_bytes())).await;
        let role = self.console_role(username);
        let (action, detail) = match (&checked, role) {
            (Ok(()), Some(_)) => ("console.login", format!("user {username:?} from {peer}")),
            (Ok(()), None) => {
                ("console.login.failed", format!("user {username:?} from {peer}: no console role"))
            }
            (Err(_), _) => ("console.login.failed", format!("user {username:?} from {peer}")),
        };
        if let Err(e) = store::audit(&self.pool, "console", action, &detail).await {
            tracing::warn!("audit log: {e}");
        }
        checked?;
        role.ok_or(PasswordRefusal::Wrong)
    }

    /// The console role of a user in the rules in force: `admin` may do everything, `viewer` only reads.
    pub fn console_role(&self, username: &str) -> Option<ConsoleRole> {
        let snapshot = self.snapshot();
        let roles = snapshot.acl.roles(username);
        if !snapshot.users.contains_key(username) {
            None
        } else if roles.iter().any(|r| r == ADMIN_ROLE) {
            Some(ConsoleRole::Admin)
        } else if roles.iter().any(|r| r == VIEWER_ROLE) {
            Some(ConsoleRole::Viewer)
        } else {
            None
        }
    }

    /// Whether any user holds the admin role: until one does, the console leads to its first-run page.
    pub fn has_admin(&self) -> bool {
        let snapshot = self.snapshot();
        snapshot.users.keys().any(|u| snapshot.acl.roles(u).iter().any(|r| r == ADMIN_ROLE))
    }

    /// A password check with throttling per address and user; a verified old-scheme hash is upgraded.
    async fn check_password(
        &self,
        peer: std::net::IpAddr,
        username: &str,
        password: Option<&[u8]>,
    ) -> Result<(), PasswordRefusal> {
        let now = Instant::now();
        let throttled =
            self.throttle.lock().unwrap_or_else(PoisonError::into_inner).check(peer, Some(username), now);
        if let Err(retry) = throttled {
            tracing::warn!(%peer, user = username, retry_after = ?retry.0, "login refused: too many failed attempts");
            return Err(PasswordRefusal::Throttled);
        }
        let stored = self.snapshot().users.get(username).cloned();
        let verified = match (stored, password) {
            (Some(hash), Some(password)) => self.verify(username, &hash, password).await,
            _ => None,
        };
        match verified {
            Some(v) if v.ok => {
                self.throttle.lock().unwrap_or_else(PoisonError::into_inner).record_success(
                    peer,
                    Some(username),
                    now,
                );
                if v.needs_upgrade
                    && let Some(password) = password.and_then(|p| std::str::from_utf8(p).ok())
                {
                    self.upgrade_hash(username, password).await;
                }
                Ok(())
            }
            _ => {
                self.throttle.lock().unwrap_or_else(PoisonError::into_inner).record_failure(
                    peer,
                    Some(username),
                    now,
                );
                Err(PasswordRefusal::Wrong)
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
        let audited = Audited { actor: "system", action: "user.hash_upgraded", detail: username };
        match config_db::set_password_hash(&self.pool, username, &hash, audited).await {
            Ok(_) => {
                let _ = self.reload().await;
            }
            Err(e) => tracing::warn!(user = username, "could not upgrade the password hash: {e}"),
        }
    }
}

/// Access decisions, on the snapshot in force when asked. Anonymous clients exist only on listeners that allow
/// them; unless some rule speaks about anonymous clients they are not restricted by topic. Authenticated users
/// are denied what no rule allows, except holders of the `admin` role.
impl Authorizer for Security {
    fn can_publish(&self, who: &Identity, topic: &str) -> bool {
        let acl = &self.snapshot().acl;
        unrestricted(acl, who) || acl.can_publish(who, topic)
    }

    fn can_subscribe(&self, who: &Identity, filter: &str) -> bool {
        let acl = &self.snapshot().acl;
        unrestricted(acl, who) || acl.can_subscribe(who, filter) != SubscribeDecision::Denied
    }

    fn can_read(&self, who: &Identity, topic: &str) -> bool {
        let acl = &self.snapshot().acl;
        unrestricted(acl, who) || acl.can_read(who, topic)
    }

    fn roles(&self, who: &Identity) -> Vec<String> {
        who.username.as_deref().map(|u| self.roles(u)).unwrap_or_default()
    }
}

fn unrestricted(acl: &Acl, who: &Identity) -> bool {
    who.username.is_none() && !acl.restricts_anonymous()
}

impl Authenticator for Security {
    fn authenticate<'a>(
        &'a self,
        request: AuthRequest<'a>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = AuthDecision> + Send + 'a>> {
        Box::pin(self.decide(request))
    }
}

fn check_role(role: &str) -> Result<(), SecurityError> {
    let ok = (1..=64).contains(&role.len())
        && role.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(()) } else { Err(SecurityError::InvalidRole(role.to_owned())) }
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
        let s = Security::load(pool, dir.path()).await.unwrap();
        (dir, s)
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

    /// Users and rules are one snapshot: a reader never sees the users of one configuration with the rules of
    /// another, however reloads and reads interleave.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn users_and_rules_are_swapped_as_one_snapshot() {
        let (_dir, s) = security().await;
        let s = std::sync::Arc::new(s);
        s.add_user("u", "correct horse battery", &["r".into()], "test").await.unwrap();
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let s = s.clone();
                tokio::task::spawn_blocking(move || {
                    for _ in 0..20_000 {
                        let snapshot = s.snapshot();
                        // User "u" exists exactly when the rules know its role.
                        assert_eq!(snapshot.users.contains_key("u"), !snapshot.acl.roles("u").is_empty());
                    }
                })
            })
            .collect();
        for i in 0..20 {
            if i % 2 == 0 {
                s.delete_user("u", "test").await.unwrap();
            } else {
                s.add_user("u", "correct horse battery", &["r".into()], "test").await.unwrap();
            }
        }
        for reader in readers {
            reader.await.unwrap();
        }
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
        sqlx::query("UPDATE config_version SET version = version + 1").execute(&s.pool).await.unwrap();
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
