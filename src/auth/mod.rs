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

pub use acl::{Acl, Action, Effect, Rule, Subject, SubscribeDecision};
pub use password::Verified;
pub use throttle::{RetryAfter, Throttle, ThrottleConfig};

/// The role that may do everything. It is granted only explicitly (a user listed with it in the role map given
/// to [`Acl::new`]); no rule, pattern or username grants it implicitly.
pub const ADMIN_ROLE: &str = "admin";

/// Who a client is: the one identity type of the gateway. Built once at CONNECT (after the password or the client
/// certificate was verified), shared by the connection and its session's subscriptions, and what every access
/// decision is about. In-process parts (a Kafka downlink, the console's publish) act as an `Identity` too.
///
/// What a client certificate says is [`crate::pki::PeerIdentity`]; it becomes the `username` here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The authenticated username; `None` for an anonymous client (allowed only on listeners that say so).
    /// A client that sent a username whose password was not verified must not get an `Identity` at all.
    pub username: Option<String>,
    /// The MQTT client identifier (the one assigned by the server when the client sent an empty one): `%c` in
    /// rule filters stands for it.
    pub client_id: String,
}

impl Identity {
    /// An anonymous client.
    pub fn anonymous(client_id: impl Into<String>) -> Self {
        Self { username: None, client_id: client_id.into() }
    }

    /// An authenticated user.
    pub fn user(username: impl Into<String>, client_id: impl Into<String>) -> Self {
        Self { username: Some(username.into()), client_id: client_id.into() }
    }
}
