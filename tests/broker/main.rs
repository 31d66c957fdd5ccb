//! Integration tests: the gateway driven through real sockets by independent client implementations (rumqttc,
//! hand-written bytes, mosquitto_pub/sub, paho-mqtt). One test binary, modules per area (see STYLE.md §13).

// Test helpers are `pub` for the sibling modules; the lint is meant for the library.
#![allow(unreachable_pub)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod acl;
mod aliases;
mod cli;
mod clients;
mod console;
mod durability;
mod external;
#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "kafka")]
mod kafka_ops;
#[cfg(feature = "kafka")]
mod kafka_tls;
mod link;
mod ordering;
mod presence;
#[cfg(feature = "kafka")]
mod proxy;
mod raw;
mod raw_v5;
mod security;
mod sparkplug;
mod sparkplug_external;
mod support;
mod tls;
mod v311;
mod v5;
mod websocket;
