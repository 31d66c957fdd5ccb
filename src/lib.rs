//! Weir: an edge gateway. An MQTT 3.1.1/5.0 broker with durable history, Kafka forwarding and a web console,
//! in one binary. See `ARCHITECTURE.md` for how the parts fit together.
//!
//! The binary (`src/main.rs`) only parses the command line; everything else is this library, which tests drive
//! directly through [`app::Gateway`] with listeners bound on `127.0.0.1:0`.

pub mod app;
pub mod auth;
pub mod config;
pub mod files;
pub mod forward;
pub mod interfaces;
pub mod mqtt;
pub mod ops;
pub mod pki;
pub mod security;
pub mod shutdown;
pub mod sparkplug;
pub mod store;
pub mod systemd;
pub mod timefmt;
pub mod web;
