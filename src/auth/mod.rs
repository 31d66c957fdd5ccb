//! Authentication and authorisation: who a client is, whether its password is right, what it may publish and
//! receive, and how hard it may keep guessing.
//!
//! This module is a library with no I/O and no storage of its own: callers (the `weir user` commands, the
//! Mosquitto importer, the CONNECT/PUBLISH/SUBSCRIBE checks, the web console) load users and rules from the
//! database, hand them in as plain data and get plain data back. Keeping it storage-agnostic lets the same
//! decisions be unit-tested without SQLite and reused by the CLI and the console.
//!
//! - [`password`]: argon2id hashing, verification of Argon2 and Mosquitto (`$6$`, `$7$`) hashes, password
//!   policy.
//! - [`mosquitto`]: parsers for Mosquitto's `password_file` and `acl_file`, mapped onto Weir's rules.
//! - [`acl`]: the rule engine consulted at PUBLISH, SUBSCRIBE and each delivery.
//! - [`throttle`]: back-off after failed logins, per source address and per username.
//!
//! Password hashing and verification are deliberately slow (tens of milliseconds on a Raspberry Pi); the
//! network layer must run them on a blocking thread (`tokio::task::spawn_blocking`), never on the runtime.

pub mod acl;
pub mod mosquitto;
pub mod password;
pub mod throttle;

pub use acl::{Acl, Action, Effect, Rule, Subject, SubscribeDecision, Who};
pub use password::Verified;
pub use throttle::{RetryAfter, Throttle, ThrottleConfig};

/// The role that may do everything. It is granted only explicitly (a user listed with it in the role map given
/// to [`Acl::new`]); no rule, pattern or username grants it implicitly.
pub const ADMIN_ROLE: &str = "admin";

/// Who a connected client is, as far as authorisation is concerned.
///
/// Built once at CONNECT, after the password was verified, and kept by the connection. Build it with
/// [`Acl::identity`] so that `roles` agrees with the rule set in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The authenticated username; `None` for an anonymous client (allowed only on listeners that say so).
    /// A client that sent a username whose password was not verified must not get an `Identity` at all.
    pub username: Option<String>,
    /// The MQTT client identifier (the one assigned by the server when the client sent an empty one): `%c` in
    /// rule filters stands for it.
    pub client_id: String,
    /// The user's roles when the identity was built, for display (console, audit log). Decisions do not trust
    /// this field: [`Acl`] looks the roles up in its own role map, so an identity kept by a long-lived
    /// connection cannot keep a role that an administrator has since removed once a new `Acl` is in force.
    pub roles: Vec<String>,
}

impl Identity {
    /// An anonymous client: no username, no roles.
    pub fn anonymous(client_id: impl Into<String>) -> Self {
        Self { username: None, client_id: client_id.into(), roles: Vec::new() }
    }
}

/// Every error the auth library reports, for callers that handle them in one place (the CLI, the console).
///
/// Each module also has its own error type; this one only gathers them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Hashing failed, a stored hash is malformed or of an unknown scheme, or a new password was refused by the
    /// policy.
    #[error(transparent)]
    Password(#[from] password::PasswordError),
    /// A rule is invalid (bad topic filter).
    #[error(transparent)]
    Acl(#[from] acl::AclError),
    /// A Mosquitto password or ACL file could not be parsed; the error names the line.
    #[error(transparent)]
    Mosquitto(#[from] mosquitto::MosquittoError),
}
