//! Wires the parts together: the stores, the security service, the broker core, its network listeners and the
//! configuration watcher, under one task lifecycle ([`lifecycle`]). The only module that knows them all.

mod lifecycle;
mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};

use crate::config::{Config, ConsoleConfig, ListenerConfig};
use crate::mqtt::broker::{Authenticator, Authorizer, Broker, Durable, Restored};
use crate::mqtt::net::{self, Connections, ListenerContext};
use crate::ops::Ops;
use crate::security::server::{ServerTls, TlsSetupError};
use crate::security::{CertError, Security, SecurityError};
use crate::sparkplug::Sparkplug;
use crate::store::{self, Durability, Journal, StoreError};
use crate::web;
pub use lifecycle::{Lifecycle, Stage};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    #[error("cannot listen on {addr} ({name}): {source}")]
    Bind { name: String, addr: SocketAddr, source: std::io::Error },
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Security(#[from] SecurityError),
    #[error("cannot secure the data directory: {0}")]
    Files(#[from] crate::files::FileError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsSetupError),
    #[error("certificates: {0}")]
    Certificates(#[from] CertError),
    #[error("console: {0}")]
    Console(#[from] web::WebError),
    #[error("sparkplug: {0}")]
    Sparkplug(#[from] crate::sparkplug::SparkplugError),
}

/// A listening socket and the configuration it was bound for.
#[derive(Debug)]
pub struct BoundListener {
    pub config: ListenerConfig,
    pub listener: TcpListener,
}

impl BoundListener {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Connections the kernel completes and queues until the gateway accepts them. The usual 128 (the standard
/// library's and tokio's) overflows when a line of devices reconnects at once: every connection beyond it loses
/// its SYN and retries a second later (1,000 clients at once on 2 cores: 343 dropped SYNs, the last connected
/// after 1.1 s). Linux caps the value at `net.core.somaxconn` (4096 since 5.4, 128 before).
const LISTEN_BACKLOG: u32 = 1024;

/// Every bound listening socket of the gateway.
#[derive(Debug)]
pub struct Listeners {
    pub mqtt: Vec<BoundListener>,
    pub console: Option<BoundConsole>,
}

/// The web console's sockets.
#[derive(Debug)]
pub struct BoundConsole {
    pub config: ConsoleConfig,
    pub listener: TcpListener,
    /// The plain-HTTP listener that redirects to HTTPS, if configured.
    pub redirect: Option<TcpListener>,
}

impl BoundConsole {
    /// The console's address as a browser opens it.
    pub fn url(&self) -> std::io::Result<String> {
        let addr = self.listener.local_addr()?;
        Ok(format!("{}://{addr}/", if self.config.https { "https" } else { "http" }))
    }
}

/// Binds every configured listener. Kept apart from [`run`] so that tests can bind port 0 and learn the port.
pub async fn bind(config: &Config) -> Result<Listeners, AppError> {
    let bind = |name: &str, addr: SocketAddr| {
        listen(addr).map_err(|source| AppError::Bind { name: name.to_owned(), addr, source })
    };
    let mut mqtt = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        mqtt.push(BoundListener { config: l.clone(), listener: bind(&l.name, l.bind)? });
    }
    let console = match &config.console {
        Some(c) => Some(BoundConsole {
            config: c.clone(),
            listener: bind("console", c.bind)?,
            redirect: c.redirect_from.map(|addr| bind("console redirect", addr)).transpose()?,
        }),
        None => None,
    };
    Ok(Listeners { mqtt, console })
}

/// What `TcpListener::bind` does (address reuse, so that a restart can bind at once), with a longer backlog.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Runs the gateway on already bound listeners until `shutdown` resolves, then shuts down gracefully.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let gateway = Gateway::start(config, listeners).await?;
    shutdown.await;
    gateway.shutdown().await;
    Ok(())
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    broker: Broker,
    journal: Option<Journal>,
    config_db: sqlx::SqlitePool,
    security: Arc<Security>,
    /// The TLS listeners' certificate and CRL, when there are TLS listeners.
    tls: Option<Arc<ServerTls>>,
    /// Where each listener is bound, by name.
    addresses: Vec<(String, SocketAddr)>,
    lifecycle: Lifecycle,
    sparkplug: Sparkplug,
}

/// The databases and what the broker restores from them.
struct Stores {
    config_db: sqlx::SqlitePool,
    journal: Option<Journal>,
    restored: Restored,
}

impl Gateway {
    pub async fn start(config: Config, listeners: Listeners) -> Result<Gateway, AppError> {
        let Listeners { mqtt: listeners, console } = listeners;
        let mut lifecycle = Lifecycle::new(config.shutdown_timeout);
        let Stores { config_db, journal, restored } = open_stores(&config).await?;
        let security = Arc::new(Security::load(config_db.clone(), &config.data_dir).await?);
        let durable = journal.clone().map(|j| Arc::new(j) as Arc<dyn Durable>);
        let authorizer: Arc<dyn Authorizer> = security.clone();
        let (broker, router) = Broker::start(
            config.broker.clone(),
            durable,
            Some(authorizer),
            restored,
            lifecycle.token(Stage::Router),
        );
        lifecycle.adopt(Stage::Router, "router", router);
        watch::apply_presence_rules(&broker, &security).await;
        let (sparkplug, task) =
            Sparkplug::start(&broker, journal.clone(), lifecycle.token(Stage::Forwarders)).await?;
        lifecycle.adopt(Stage::Forwarders, "sparkplug", task);
        let forwarder = crate::forward::run(
            journal.clone(),
            broker.clone(),
            config_db.clone(),
            config.data_dir.clone(),
            lifecycle.token(Stage::Forwarders),
        );
        lifecycle.spawn(Stage::Forwarders, "kafka forwarder", forwarder);
        let (tls, tls_configs, console_tls) =
            start_tls(&config, &listeners, console.as_ref(), security.certificates()).await?;
        let (connections, _) = Connections::new(config.max_connections);
        let mut addresses = Vec::with_capacity(listeners.len());
        for (bound, tls) in listeners.into_iter().zip(tls_configs) {
            let context = ListenerContext {
                tls,
                identity: bound.config.identity,
                certificate_password: bound.config.certificate_password,
                name: bound.config.name.clone(),
                protocol: bound.config.protocol,
                ws_path: bound.config.ws_path.clone(),
                allow_anonymous: bound.config.allow_anonymous,
                authenticator: Some(security.clone() as Arc<dyn Authenticator>),
                connect_timeout: config.connect_timeout,
                broker: broker.clone(),
                connections: connections.clone(),
            };
            addresses.push(start_listener(&mut lifecycle, bound, context)?);
        }
        if let Some(console) = console {
            let state = web::AppState::new(
                Ops::with(&config.data_dir, security.clone()),
                broker.clone(),
                journal.clone(),
                web::SetupCode::prepare(&config.data_dir, security.has_admin())?,
                &console.config,
                &config,
                lifecycle.token(Stage::Listeners),
            )
            .with_sparkplug(sparkplug.clone());
            start_console(&mut lifecycle, console, console_tls, state, &mut addresses)?;
        }
        let watcher = watch::watch_configuration(
            broker.clone(),
            security.clone(),
            tls.clone(),
            connections,
            watch::Requests {
                ops: Ops::with(&config.data_dir, security.clone()),
                sparkplug: sparkplug.clone(),
            },
            lifecycle.token(Stage::Listeners),
        );
        lifecycle.spawn(Stage::Listeners, "configuration watcher", watcher);
        if let Some(journal) = &journal {
            let (journal, mut stop) = (journal.clone(), lifecycle.token(Stage::Journal));
            lifecycle.spawn(Stage::Journal, "journal writer", async move {
                stop.stopped().await;
                journal.close().await;
            });
        }
        Ok(Gateway { broker, journal, config_db, security, tls, addresses, lifecycle, sparkplug })
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The Sparkplug B state and actions (rebirth).
    pub fn sparkplug(&self) -> &Sparkplug {
        &self.sparkplug
    }

    /// Renews the server certificate if it is due (or missing, or its names changed) and gives the TLS listeners
    /// the current certificate and CRL, without a restart. Runs hourly on its own; returns whether anything changed.
    pub async fn refresh_tls(&self) -> Result<bool, AppError> {
        match &self.tls {
            Some(tls) => Ok(tls.refresh().await?),
            None => Ok(false),
        }
    }

    /// Users, rules and certificates.
    pub fn security(&self) -> &Arc<Security> {
        &self.security
    }

    /// The message journal, unless durability is off.
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// The address each listener is bound to, by listener name.
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.addresses.iter().find(|(n, _)| n == name).map(|(_, addr)| *addr)
    }

    /// Stops the gateway, stage by stage (see [`lifecycle`]), then closes the configuration database.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        let Gateway { lifecycle, config_db, .. } = self;
        lifecycle.shutdown().await;
        config_db.close().await;
    }
}

/// Secures the data directory, opens both databases (the journal unless durability is off) and reads what the
/// broker restores.
async fn open_stores(config: &Config) -> Result<Stores, AppError> {
    for path in crate::files::secure_data_dir(&config.data_dir)? {
        tracing::warn!(path = %path.display(), "was readable by other users: now private to the gateway");
    }
    let restored_from = crate::ops::backup::apply_staged(&config.data_dir)?;
    if let Some(aside) = &restored_from {
        tracing::warn!(replaced = %aside.display(), "a staged backup was restored; the files it replaced are kept");
    }
    let (config_db, recovered) =
        store::open(&config.data_dir, store::Database::Config, store::Synchronous::Full, None).await?;
    if recovered {
        let _ = store::audit(&config_db, "system", "database.recovered", store::CONFIG_FILE).await;
    }
    if let Some(aside) = restored_from {
        let _ = store::audit(&config_db, "system", "backup.restored", &aside.display().to_string()).await;
    }
    let journal = match config.journal.durability {
        Durability::Off => None,
        _ => Some(Journal::open(&config.data_dir, config.journal.clone()).await?),
    };
    let restored = match &journal {
        Some(j) => Restored {
            retained: j.retained().await?,
            sessions: j.sessions(config.broker.max_queued_messages).await?,
            presence: j.presence().await?,
        },
        None => Restored::default(),
    };
    if !restored.retained.is_empty() {
        tracing::info!(count = restored.retained.len(), "retained messages restored from the journal");
    }
    Ok(Stores { config_db, journal, restored })
}

/// The server certificate and a rustls configuration per TLS listener (in the order of `listeners`) and for an
/// HTTPS console; `None` when nothing is served over TLS.
async fn start_tls(
    config: &Config,
    listeners: &[BoundListener],
    console: Option<&BoundConsole>,
    certificates: &crate::security::Certificates,
) -> Result<TlsSetup, AppError> {
    let mut configs: Vec<ListenerConfig> = listeners.iter().map(|b| b.config.clone()).collect();
    let https = console.filter(|c| c.config.https);
    if let Some(c) = https {
        configs.push(ListenerConfig::console(c.config.bind));
    }
    if !configs.iter().any(|l| l.protocol.is_tls()) {
        return Ok((None, vec![None; listeners.len()], None));
    }
    let (tls, mut per_listener) =
        ServerTls::new(&config.data_dir, &configs, &config.server_names, certificates).await?;
    let console_tls = if https.is_some() { per_listener.pop().flatten() } else { None };
    Ok((Some(Arc::new(tls)), per_listener, console_tls))
}

type TlsConfig = Arc<crate::pki::ReloadableServerConfig>;
type TlsSetup = (Option<Arc<ServerTls>>, Vec<Option<TlsConfig>>, Option<TlsConfig>);

/// Starts the web console (and its redirect listener), as tasks of the listeners stage.
fn start_console(
    lifecycle: &mut Lifecycle,
    console: BoundConsole,
    tls: Option<TlsConfig>,
    state: web::AppState,
    addresses: &mut Vec<(String, SocketAddr)>,
) -> Result<(), AppError> {
    let bind_error = |name: &str, addr, source| AppError::Bind { name: name.to_owned(), addr, source };
    let addr = console.listener.local_addr().map_err(|e| bind_error("console", console.config.bind, e))?;
    let url = console.url().map_err(|e| bind_error("console", console.config.bind, e))?;
    tracing::info!("console on {url}");
    addresses.push(("console".to_owned(), addr));
    if let Some(redirect) = console.redirect {
        let from = redirect.local_addr().map_err(|e| bind_error("console redirect", addr, e))?;
        tracing::info!("console: plain HTTP on {from} redirects to {url}");
        addresses.push(("console redirect".to_owned(), from));
        let task = web::serve_redirect(redirect, addr.port(), lifecycle.token(Stage::Listeners));
        lifecycle.spawn(Stage::Listeners, "console redirect", task);
    }
    let task = web::serve(console.listener, tls, web::router(state), lifecycle.token(Stage::Listeners));
    lifecycle.spawn(Stage::Listeners, "console", task);
    Ok(())
}

/// Starts accepting on one bound listener, as a task of the listeners stage.
fn start_listener(
    lifecycle: &mut Lifecycle,
    bound: BoundListener,
    context: ListenerContext,
) -> Result<(String, SocketAddr), AppError> {
    let l = &bound.config;
    let addr =
        bound.local_addr().map_err(|source| AppError::Bind { name: l.name.clone(), addr: l.bind, source })?;
    tracing::info!(
        listener = %l.name, "listening on {addr} ({}{}), anonymous {}",
        match l.protocol {
            net::Protocol::Tcp => "mqtt",
            net::Protocol::WebSocket => "mqtt over websocket ",
            net::Protocol::Tls => "mqtt over tls",
            net::Protocol::SecureWebSocket => "mqtt over secure websocket ",
        },
        l.ws_path,
        if l.allow_anonymous { "allowed" } else { "refused" },
    );
    let name = l.name.clone();
    let task = net::serve(bound.listener, Arc::new(context), lifecycle.token(Stage::Listeners));
    lifecycle.spawn(Stage::Listeners, format!("listener {name}"), task);
    Ok((name, addr))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A storm of connections the gateway has not accepted yet all complete at once: none waits for a SYN retry.
    #[tokio::test]
    async fn the_listen_backlog_holds_a_storm_of_unaccepted_connections() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        for i in 0..300 {
            let connect = tokio::net::TcpStream::connect(addr);
            match tokio::time::timeout(Duration::from_millis(500), connect).await {
                Ok(Ok(stream)) => clients.push(stream),
                other => panic!("connection {i} not completed by the kernel: {other:?}"),
            }
        }
    }
}
