//! Configuration: a TOML file parsed strictly into [`FileConfig`], then checked and completed into [`Config`].
//!
//! With no file at all, [`Config::default`] is a safe local setup: MQTT on 127.0.0.1:1883, MQTT over WebSocket
//! on 127.0.0.1:8083 at `/mqtt`, anonymous clients allowed because nothing else can reach a loopback listener.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::mqtt::broker::BrokerConfig;
use crate::mqtt::net::Protocol;
use crate::pki::{ClientAuth, IdentitySource};
use crate::store::{Durability, JournalConfig, Retention};

/// A configuration file that could not be used. The message names the file, and for syntax errors and unknown
/// keys the line and the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The configuration as the gateway uses it.
#[derive(Debug, Clone)]
pub struct Config {
    /// Everything the gateway writes lives under here.
    pub data_dir: PathBuf,
    pub listeners: Vec<ListenerConfig>,
    pub broker: BrokerConfig,
    /// Across all listeners; clients beyond it get CONNACK "quota exceeded" / "server unavailable".
    pub max_connections: usize,
    /// Time a new connection has to send CONNECT (and, for WebSocket, to finish the handshake).
    pub connect_timeout: Duration,
    /// How long shutdown waits for connections to close before it stops anyway.
    pub shutdown_timeout: Duration,
    /// The message journal (history, durability of acknowledged messages).
    pub journal: JournalConfig,
    /// Extra names for the TLS listeners' server certificate.
    pub server_names: ServerNames,
    /// The web console; `None` when turned off.
    pub console: Option<ConsoleConfig>,
    /// The file this came from, and the keys it set (dotted: `mqtt.receive_maximum`), so that the console can
    /// say where each value came from.
    pub source: Option<(PathBuf, std::collections::BTreeSet<String>)>,
}

/// One effective setting, for the console's read-only settings page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub value: String,
    /// Set in the configuration file (else the built-in default).
    pub from_file: bool,
}

/// Where and how the web console is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleConfig {
    pub bind: SocketAddr,
    /// HTTPS with the gateway's server certificate. Always on for an address other than loopback.
    pub https: bool,
    /// A plain-HTTP listener that only redirects to the HTTPS one (port 80, typically).
    pub redirect_from: Option<SocketAddr>,
    /// A console session unused this long is signed out.
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub protocol: Protocol,
    pub bind: SocketAddr,
    pub ws_path: String,
    pub allow_anonymous: bool,
    /// TLS listeners: whether clients present certificates from Weir's CA. A certificate's common name is then
    /// the client's user name (Mosquitto's `use_identity_as_username`).
    pub client_certificates: ClientAuth,
    /// Which part of a client certificate is the user name.
    pub identity: IdentitySource,
    /// A client with a certificate must also give the password of the user the certificate names.
    pub certificate_password: bool,
}

impl ListenerConfig {
    /// The console's HTTPS listener as the server certificate sees it: its address is one of the names.
    pub fn console(bind: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            name: "console".into(),
            protocol: Protocol::Tls,
            bind,
            ws_path: String::new(),
            allow_anonymous: false,
            client_certificates: ClientAuth::None,
            identity: IdentitySource::CommonName,
            certificate_password: false,
        }
    }
}

/// The file as written. Every table rejects unknown keys, so a typo is an error rather than a silent default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<FileListener>,
    #[serde(default)]
    pub mqtt: FileMqtt,
    #[serde(default)]
    pub limits: FileLimits,
    #[serde(default)]
    pub journal: FileJournal,
    #[serde(default)]
    pub tls: FileTls,
    #[serde(default)]
    pub console: FileConsole,
}

/// `[console]`: the web console.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConsole {
    /// Default true.
    pub enabled: Option<bool>,
    /// Default `127.0.0.1:8080`.
    pub bind: Option<String>,
    /// Default: false on loopback, true elsewhere (where false is refused).
    pub https: Option<bool>,
    /// A plain-HTTP address that redirects to the console (e.g. `0.0.0.0:80`).
    pub redirect_http: Option<String>,
    /// Default 30.
    pub idle_timeout_minutes: Option<u64>,
}

/// What the server certificate is issued for, beyond the host name and the listeners' addresses.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub hostname: Option<String>,
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Also name the host's interface addresses when a TLS listener binds `0.0.0.0` or `::` (default true).
    pub interface_addresses: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileJournal {
    /// `synced` (default), `batched` or `off`.
    pub durability: Option<FileDurability>,
    /// `batched` only: the longest a commit waits for its sync.
    pub batch_window_ms: Option<u64>,
    /// Topic filters recorded; default everything.
    pub include: Option<Vec<String>>,
    /// Topic filters not recorded; default `$SYS/#`.
    pub exclude: Option<Vec<String>>,
    pub max_age_days: Option<u64>,
    pub max_mb: Option<u64>,
    pub hard_cap_mb: Option<u64>,
    pub max_batch: Option<usize>,
    /// Shortest time between two commits while several publishers are appending (0: commit as soon as the last
    /// one is done).
    pub commit_interval_ms: Option<u64>,
    /// SQLite page limit for the journal (4 KiB pages): it reports itself full beyond it.
    pub max_pages: Option<u32>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileDurability {
    Synced,
    Batched,
    Off,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListener {
    pub name: Option<String>,
    /// `tcp` or `ws`.
    pub protocol: FileProtocol,
    pub bind: String,
    /// WebSocket only; default `/mqtt`.
    pub path: Option<String>,
    /// Defaults to true on loopback addresses and false elsewhere.
    pub allow_anonymous: Option<bool>,
    /// `tls` only: `none` (default), `optional` or `required`.
    pub client_certificates: Option<FileClientAuth>,
    /// `cn` (default), `dns`, `email` or `uri`: the part of a client certificate that is the user name.
    pub identity: Option<FileIdentity>,
    /// Require the user's password as well as a certificate (default false).
    pub certificate_password: Option<bool>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileIdentity {
    Cn,
    Dns,
    Email,
    Uri,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileClientAuth {
    None,
    Optional,
    Required,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileProtocol {
    Tcp,
    Ws,
    /// MQTT over TLS, with Weir's own CA and server certificate.
    Tls,
    /// MQTT over WebSocket over TLS.
    Wss,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMqtt {
    pub max_packet_size: Option<u32>,
    pub receive_maximum: Option<u16>,
    /// QoS 1/2 in flight towards a 3.1.1 client.
    pub max_inflight: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    /// Topic aliases assigned on deliveries to a v5 client, up to its own maximum; 0: none.
    pub server_topic_aliases: Option<u16>,
    pub server_keep_alive: Option<u16>,
    pub max_session_expiry_secs: Option<u32>,
    pub max_queued_messages: Option<usize>,
    pub max_queued_qos0: Option<usize>,
    /// 0 turns `$SYS` off.
    pub sys_interval_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub max_connections: Option<usize>,
    pub connect_timeout_secs: Option<u64>,
    pub shutdown_timeout_secs: Option<u64>,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut config = Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.to_owned(), message },
            other => other,
        })?;
        let mut keys = std::collections::BTreeSet::new();
        if let Ok(table) = toml::from_str::<toml::Table>(&text) {
            collect_keys("", &toml::Value::Table(table), &mut keys);
        }
        config.source = Some((path.to_owned(), keys));
        Ok(config)
    }

    /// Every setting in force, with its value as the file would write it and where it came from.
    pub fn effective(&self) -> Vec<Setting> {
        let keys = self.source.as_ref().map(|(_, keys)| keys);
        let mut out = Vec::new();
        let mut add = |key: &str, value: String| {
            let from_file = keys
                .is_some_and(|k| k.contains(key) || key.starts_with("listener.") && k.contains("listener"));
            out.push(Setting { key: key.to_owned(), value, from_file });
        };
        let opt = |v: Option<String>| v.unwrap_or_else(|| "(none)".to_owned());
        add("data_dir", self.data_dir.display().to_string());
        for l in &self.listeners {
            let name = &l.name;
            add(&format!("listener.{name}.protocol"), format!("{:?}", l.protocol).to_lowercase());
            add(&format!("listener.{name}.bind"), l.bind.to_string());
            if matches!(l.protocol, Protocol::WebSocket | Protocol::SecureWebSocket) {
                add(&format!("listener.{name}.path"), l.ws_path.clone());
            }
            add(&format!("listener.{name}.allow_anonymous"), l.allow_anonymous.to_string());
            if l.protocol.is_tls() {
                add(
                    &format!("listener.{name}.client_certificates"),
                    format!("{:?}", l.client_certificates).to_lowercase(),
                );
                add(&format!("listener.{name}.identity"), format!("{:?}", l.identity));
                add(&format!("listener.{name}.certificate_password"), l.certificate_password.to_string());
            }
        }
        let b = &self.broker;
        add("mqtt.max_packet_size", b.max_packet_size.to_string());
        add("mqtt.receive_maximum", b.receive_maximum.to_string());
        add("mqtt.max_inflight", b.max_inflight.to_string());
        add("mqtt.topic_alias_maximum", b.topic_alias_maximum.to_string());
        add("mqtt.server_topic_aliases", b.server_topic_aliases.to_string());
        add("mqtt.server_keep_alive", opt(b.server_keep_alive.map(|k| k.to_string())));
        add("mqtt.max_session_expiry_secs", opt(b.max_session_expiry.map(|k| k.to_string())));
        add("mqtt.max_queued_messages", b.max_queued_messages.to_string());
        add("mqtt.max_queued_qos0", b.max_queued_qos0.to_string());
        add("mqtt.sys_interval_secs", b.sys_interval.map_or(0, |d| d.as_secs()).to_string());
        add("limits.max_connections", self.max_connections.to_string());
        add("limits.connect_timeout_secs", self.connect_timeout.as_secs().to_string());
        add("limits.shutdown_timeout_secs", self.shutdown_timeout.as_secs().to_string());
        let j = &self.journal;
        add(
            "journal.durability",
            match j.durability {
                Durability::Synced => "synced".to_owned(),
                Durability::Off => "off".to_owned(),
                Durability::Batched { window } => format!("batched ({} ms)", window.as_millis()),
            },
        );
        add("journal.include", format!("{:?}", j.include));
        add("journal.exclude", format!("{:?}", j.exclude));
        add("journal.max_age_days", opt(j.retention.max_age.map(|a| (a.as_secs() / 86_400).to_string())));
        add("journal.max_mb", opt(j.retention.max_bytes.map(|b| (b >> 20).to_string())));
        add("journal.hard_cap_mb", opt(j.retention.hard_cap_bytes.map(|b| (b >> 20).to_string())));
        add("journal.max_batch", j.max_batch.to_string());
        add("journal.commit_interval_ms", j.commit_interval.as_millis().to_string());
        add("journal.max_pages", opt(j.max_pages.map(|p| p.to_string())));
        add("tls.hostname", opt(self.server_names.hostname.clone()));
        add("tls.names", format!("{:?}", self.server_names.dns));
        add("tls.addresses", format!("{:?}", self.server_names.addresses));
        add("tls.interface_addresses", self.server_names.interface_addresses.to_string());
        match &self.console {
            None => add("console.enabled", "false".to_owned()),
            Some(c) => {
                add("console.enabled", "true".to_owned());
                add("console.bind", c.bind.to_string());
                add("console.https", c.https.to_string());
                add("console.redirect_http", opt(c.redirect_from.map(|a| a.to_string())));
                add("console.idle_timeout_minutes", (c.idle_timeout.as_secs() / 60).to_string());
            }
        }
        out
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: PathBuf::from("<config>"), message: e.to_string() })?;
        Config::from_file(file)
    }

    pub fn from_file(file: FileConfig) -> Result<Config, ConfigError> {
        let defaults = BrokerConfig::default();
        let m = file.mqtt;
        let broker = BrokerConfig {
            max_packet_size: m.max_packet_size.unwrap_or(defaults.max_packet_size),
            receive_maximum: m.receive_maximum.unwrap_or(defaults.receive_maximum),
            max_inflight: m.max_inflight.unwrap_or(defaults.max_inflight).max(1),
            topic_alias_maximum: m.topic_alias_maximum.unwrap_or(defaults.topic_alias_maximum),
            server_topic_aliases: m.server_topic_aliases.unwrap_or(defaults.server_topic_aliases),
            server_keep_alive: m.server_keep_alive,
            max_session_expiry: m.max_session_expiry_secs,
            max_queued_messages: m.max_queued_messages.unwrap_or(defaults.max_queued_messages),
            max_queued_qos0: m.max_queued_qos0.unwrap_or(defaults.max_queued_qos0),
            sys_interval: match m.sys_interval_secs {
                Some(0) => None,
                Some(secs) => Some(Duration::from_secs(secs)),
                None => defaults.sys_interval,
            },
        };
        if broker.max_packet_size < 64 {
            return Err(ConfigError::Invalid("mqtt.max_packet_size must be at least 64 bytes".into()));
        }
        if broker.receive_maximum == 0 {
            return Err(ConfigError::Invalid("mqtt.receive_maximum must be at least 1".into()));
        }
        let journal = journal(file.journal)?;
        let addresses = file
            .tls
            .addresses
            .iter()
            .map(|a| {
                a.parse()
                    .map_err(|_| ConfigError::Invalid(format!("tls.addresses: {a:?} is not an IP address")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let server_names = ServerNames {
            hostname: file.tls.hostname,
            dns: file.tls.names,
            addresses,
            interface_addresses: file.tls.interface_addresses.unwrap_or(true),
        };
        let listeners = if file.listeners.is_empty() {
            default_listeners()
        } else {
            file.listeners.into_iter().enumerate().map(|(i, l)| listener(i, l)).collect::<Result<_, _>>()?
        };
        let mut names = std::collections::HashSet::new();
        for l in &listeners {
            if !names.insert(l.name.as_str()) {
                return Err(ConfigError::Invalid(format!("two listeners are named {:?}", l.name)));
            }
        }
        let console = console(file.console)?;
        Ok(Config {
            console,
            source: None,
            data_dir: file.data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            listeners,
            broker,
            max_connections: file.limits.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            connect_timeout: Duration::from_secs(
                file.limits.connect_timeout_secs.unwrap_or(DEFAULT_CONNECT_TIMEOUT_SECS).max(1),
            ),
            shutdown_timeout: Duration::from_secs(
                file.limits.shutdown_timeout_secs.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_SECS),
            ),
            journal,
            server_names,
        })
    }

    /// A configuration for tests: listeners on 127.0.0.1 port 0 (the caller binds them), data in `data_dir`.
    pub fn for_test(data_dir: &Path) -> Config {
        let mut config = Config { data_dir: data_dir.to_owned(), ..Config::default() };
        for l in &mut config.listeners {
            l.bind.set_port(0);
        }
        if let Some(console) = &mut config.console {
            console.bind.set_port(0);
        }
        config.connect_timeout = Duration::from_secs(5);
        config
    }
}

impl Default for Config {
    /// The embedded defaults: what `weir serve` runs on without a file.
    fn default() -> Config {
        Config {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            listeners: default_listeners(),
            broker: BrokerConfig::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            connect_timeout: Duration::from_secs(DEFAULT_CONNECT_TIMEOUT_SECS),
            shutdown_timeout: Duration::from_secs(DEFAULT_SHUTDOWN_TIMEOUT_SECS),
            journal: JournalConfig::default(),
            server_names: ServerNames::default(),
            console: Some(ConsoleConfig::default()),
            source: None,
        }
    }
}

/// The dotted keys a TOML table sets (`mqtt.receive_maximum`); arrays of tables count as their key (`listener`).
fn collect_keys(prefix: &str, value: &toml::Value, keys: &mut std::collections::BTreeSet<String>) {
    match value {
        toml::Value::Table(table) => {
            for (k, v) in table {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                collect_keys(&key, v, keys);
            }
        }
        _ => {
            keys.insert(prefix.to_owned());
        }
    }
}

impl Default for ConsoleConfig {
    /// Loopback only, so plain HTTP is acceptable.
    fn default() -> ConsoleConfig {
        ConsoleConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            https: false,
            redirect_from: None,
            idle_timeout: Duration::from_secs(30 * 60),
        }
    }
}

fn console(c: FileConsole) -> Result<Option<ConsoleConfig>, ConfigError> {
    if c.enabled == Some(false) {
        return Ok(None);
    }
    let defaults = ConsoleConfig::default();
    let address = |key: &str, text: &str| {
        text.parse::<SocketAddr>()
            .map_err(|_| ConfigError::Invalid(format!("console.{key}: {text:?} is not an address:port")))
    };
    let bind = c.bind.as_deref().map(|b| address("bind", b)).transpose()?.unwrap_or(defaults.bind);
    let loopback = bind.ip().is_loopback();
    let https = c.https.unwrap_or(!loopback);
    if !https && !loopback {
        return Err(ConfigError::Invalid(format!(
            "console.bind {bind} is not a loopback address: the console is served there over HTTPS only"
        )));
    }
    let redirect_from = c.redirect_http.as_deref().map(|r| address("redirect_http", r)).transpose()?;
    if redirect_from.is_some() && !https {
        return Err(ConfigError::Invalid("console.redirect_http needs the console on HTTPS".into()));
    }
    let minutes = c.idle_timeout_minutes.unwrap_or(30).max(1);
    Ok(Some(ConsoleConfig { bind, https, redirect_from, idle_timeout: Duration::from_secs(minutes * 60) }))
}

const DEFAULT_DATA_DIR: &str = "data";
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;
const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 5;

fn journal(j: FileJournal) -> Result<JournalConfig, ConfigError> {
    let defaults = JournalConfig::default();
    let durability = match j.durability.unwrap_or(FileDurability::Synced) {
        FileDurability::Synced => Durability::Synced,
        FileDurability::Off => Durability::Off,
        FileDurability::Batched => {
            Durability::Batched { window: Duration::from_millis(j.batch_window_ms.unwrap_or(100).max(1)) }
        }
    };
    let include = j.include.unwrap_or(defaults.include);
    let exclude = j.exclude.unwrap_or(defaults.exclude);
    if let Some(bad) =
        include.iter().chain(&exclude).find(|f| !crate::mqtt::codec::topic::valid_topic_filter(f))
    {
        return Err(ConfigError::Invalid(format!("journal: {bad:?} is not a valid topic filter")));
    }
    const MB: u64 = 1024 * 1024;
    let retention = Retention {
        max_age: j.max_age_days.map(|d| Duration::from_secs(d * 24 * 3600)).or(defaults.retention.max_age),
        max_bytes: j.max_mb.map(|m| m * MB).or(defaults.retention.max_bytes),
        hard_cap_bytes: j.hard_cap_mb.map(|m| m * MB).or(defaults.retention.hard_cap_bytes),
        prune_interval: defaults.retention.prune_interval,
    };
    if let (Some(soft), Some(hard)) = (retention.max_bytes, retention.hard_cap_bytes)
        && hard < soft
    {
        return Err(ConfigError::Invalid("journal.hard_cap_mb must not be below journal.max_mb".into()));
    }
    Ok(JournalConfig {
        durability,
        include,
        exclude,
        max_batch: j.max_batch.unwrap_or(defaults.max_batch).max(1),
        queue: defaults.queue,
        retention,
        max_pages: j.max_pages,
        index_interval: defaults.index_interval,
        commit_interval: j.commit_interval_ms.map(Duration::from_millis).unwrap_or(defaults.commit_interval),
        ..defaults
    })
}

fn default_listeners() -> Vec<ListenerConfig> {
    let loopback = std::net::Ipv4Addr::LOCALHOST.into();
    vec![
        ListenerConfig {
            name: "mqtt".into(),
            protocol: Protocol::Tcp,
            bind: SocketAddr::new(loopback, 1883),
            ws_path: String::new(),
            allow_anonymous: true,
            client_certificates: ClientAuth::None,
            identity: IdentitySource::CommonName,
            certificate_password: false,
        },
        ListenerConfig {
            name: "ws".into(),
            protocol: Protocol::WebSocket,
            bind: SocketAddr::new(loopback, 8083),
            ws_path: "/mqtt".into(),
            allow_anonymous: true,
            client_certificates: ClientAuth::None,
            identity: IdentitySource::CommonName,
            certificate_password: false,
        },
    ]
}

fn listener(index: usize, l: FileListener) -> Result<ListenerConfig, ConfigError> {
    let name = l.name.unwrap_or_else(|| format!("listener{}", index + 1));
    let bind: SocketAddr = l.bind.parse().map_err(|_| {
        ConfigError::Invalid(format!("listener {name:?}: bind = {:?} is not an address:port", l.bind))
    })?;
    let (protocol, ws_path) = match l.protocol {
        FileProtocol::Tcp => {
            if l.path.is_some() {
                return Err(ConfigError::Invalid(format!(
                    "listener {name:?}: path is only for ws listeners"
                )));
            }
            (Protocol::Tcp, String::new())
        }
        FileProtocol::Ws => {
            let path = l.path.unwrap_or_else(|| "/mqtt".into());
            if !path.starts_with('/') {
                return Err(ConfigError::Invalid(format!("listener {name:?}: path must start with /")));
            }
            (Protocol::WebSocket, path)
        }
        FileProtocol::Tls => {
            if l.path.is_some() {
                return Err(ConfigError::Invalid(format!(
                    "listener {name:?}: path is only for ws listeners"
                )));
            }
            (Protocol::Tls, String::new())
        }
        FileProtocol::Wss => {
            let path = l.path.unwrap_or_else(|| "/mqtt".into());
            if !path.starts_with('/') {
                return Err(ConfigError::Invalid(format!("listener {name:?}: path must start with /")));
            }
            (Protocol::SecureWebSocket, path)
        }
    };
    let client_certificates = match (protocol, l.client_certificates) {
        (_, None | Some(FileClientAuth::None)) => ClientAuth::None,
        (p, Some(FileClientAuth::Optional)) if p.is_tls() => ClientAuth::Optional,
        (p, Some(FileClientAuth::Required)) if p.is_tls() => ClientAuth::Required,
        _ => {
            return Err(ConfigError::Invalid(format!(
                "listener {name:?}: client_certificates is only for tls and wss listeners"
            )));
        }
    };
    Ok(ListenerConfig {
        name,
        protocol,
        bind,
        ws_path,
        allow_anonymous: l.allow_anonymous.unwrap_or(bind.ip().is_loopback()),
        client_certificates,
        identity: match l.identity {
            None | Some(FileIdentity::Cn) => IdentitySource::CommonName,
            Some(FileIdentity::Dns) => IdentitySource::DnsSan,
            Some(FileIdentity::Email) => IdentitySource::EmailSan,
            Some(FileIdentity::Uri) => IdentitySource::UriSan,
        },
        certificate_password: l.certificate_password.unwrap_or(false),
    })
}

/// The names the server certificate carries beyond the defaults (the host name, `<host>.local`, `localhost`,
/// the listeners' bind addresses and 127.0.0.1): what devices type to reach the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerNames {
    /// Instead of the system host name.
    pub hostname: Option<String>,
    pub dns: Vec<String>,
    pub addresses: Vec<IpAddr>,
    /// When a TLS listener binds `0.0.0.0` or `::`, also the host's interface addresses (default): devices
    /// on the plant network reach the gateway by its LAN address, which DHCP may change.
    pub interface_addresses: bool,
}

impl Default for ServerNames {
    fn default() -> ServerNames {
        ServerNames { hostname: None, dns: Vec::new(), addresses: Vec::new(), interface_addresses: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_means_the_embedded_defaults() {
        let parsed = Config::parse("").unwrap();
        let default = Config::default();
        assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
    }

    #[test]
    fn defaults_are_loopback_and_anonymous() {
        let config = Config::default();
        assert_eq!(config.listeners.len(), 2);
        assert!(config.listeners.iter().all(|l| l.bind.ip().is_loopback() && l.allow_anonymous));
        assert_eq!(config.listeners[0].bind.port(), 1883);
        assert_eq!(config.listeners[1].bind.port(), 8083);
        assert_eq!(config.listeners[1].ws_path, "/mqtt");
        assert_eq!(config.data_dir, PathBuf::from("data"));
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = "data_dir = \"/var/lib/weir\"\n\n[mqtt]\nmax_packet_sise = 10\n";
        let err = Config::parse(text).unwrap_err().to_string();
        assert!(err.contains("max_packet_sise"), "{err}");
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn non_loopback_listener_is_not_anonymous_by_default() {
        let text = "[[listener]]\nprotocol = \"tcp\"\nbind = \"0.0.0.0:1883\"\n\n[[listener]]\nprotocol = \"ws\"\nbind = \"[::1]:8083\"\n";
        let config = Config::parse(text).unwrap();
        assert!(!config.listeners[0].allow_anonymous);
        assert!(config.listeners[1].allow_anonymous);
        assert_eq!(config.listeners[1].ws_path, "/mqtt");
    }

    #[test]
    fn tls_names_and_interface_addresses() {
        let config = Config::parse("[tls]\nhostname = \"gw-3\"\naddresses = [\"192.168.10.5\"]\n").unwrap();
        assert!(config.server_names.interface_addresses, "on by default");
        assert_eq!(config.server_names.addresses, ["192.168.10.5".parse::<std::net::IpAddr>().unwrap()]);
        let off = Config::parse("[tls]\ninterface_addresses = false\n").unwrap();
        assert!(!off.server_names.interface_addresses);
        let err = Config::parse("[tls]\ninterface_address = false\n").unwrap_err().to_string();
        assert!(err.contains("interface_address"), "{err}");
        let err = Config::parse("[tls]\ninterface_addresses = \"yes\"\n").unwrap_err().to_string();
        assert!(err.contains("interface_addresses"), "{err}");
    }

    #[test]
    fn invalid_values_are_refused_with_a_reason() {
        for (text, needle) in [
            ("[tls]\naddresses = [\"gateway\"]\n", "not an IP address"),
            (
                "[[listener]]\nprotocol = \"tcp\"\nbind = \"127.0.0.1:1\"\nclient_certificates = \"required\"\n",
                "only for tls",
            ),
            ("[[listener]]\nprotocol = \"tcp\"\nbind = \"localhost\"\n", "not an address:port"),
            ("[[listener]]\nprotocol = \"udp\"\nbind = \"127.0.0.1:1\"\n", "udp"),
            ("[mqtt]\nreceive_maximum = 0\n", "receive_maximum"),
            ("[[listener]]\nprotocol = \"ws\"\nbind = \"127.0.0.1:1\"\npath = \"mqtt\"\n", "path must start"),
            (
                "[[listener]]\nname = \"a\"\nprotocol = \"tcp\"\nbind = \"127.0.0.1:1\"\n[[listener]]\nname = \"a\"\nprotocol = \"tcp\"\nbind = \"127.0.0.1:2\"\n",
                "two listeners",
            ),
        ] {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?} gave {err}");
        }
    }

    #[test]
    fn the_effective_settings_say_where_each_value_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, "[mqtt]\nreceive_maximum = 10\n[console]\nenabled = false\n").unwrap();
        let config = Config::load(&path).unwrap();
        let settings = config.effective();
        let find =
            |key: &str| settings.iter().find(|s| s.key == key).unwrap_or_else(|| panic!("{key}")).clone();
        assert_eq!(
            (find("mqtt.receive_maximum").value, find("mqtt.receive_maximum").from_file),
            ("10".into(), true)
        );
        assert!(!find("mqtt.max_packet_size").from_file);
        assert_eq!(find("console.enabled").value, "false");
        assert!(!find("listener.mqtt.bind").from_file, "the default listeners");
        assert!(Config::default().effective().iter().all(|s| !s.from_file));
    }
}
