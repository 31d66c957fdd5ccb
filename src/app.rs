//! Wires the parts together: the broker core and its network listeners. The only module that knows them all.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::certs::{CertError, Certificates};
use crate::config::{Config, ListenerConfig};
use crate::mqtt::broker::Broker;
use crate::mqtt::broker::{Authenticator, Authorizer, Durable, Restored};
use crate::mqtt::net::{self, Connections, ListenerContext};
use crate::pki::{ReloadableServerConfig, TlsMaterial};
use crate::security::{Security, SecurityError};
use crate::store::{self, Durability, Journal, StoreError};

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
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsSetupError),
    #[error("TLS: {0}")]
    Pki(#[from] crate::pki::PkiError),
    #[error("certificates: {0}")]
    Certificates(#[from] CertError),
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

/// Binds every configured listener. Kept apart from [`run`] so that tests can bind port 0 and learn the port.
pub async fn bind(config: &Config) -> Result<Vec<BoundListener>, AppError> {
    let mut bound = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        let listener =
            listen(l.bind).map_err(|source| AppError::Bind { name: l.name.clone(), addr: l.bind, source })?;
        bound.push(BoundListener { config: l.clone(), listener });
    }
    Ok(bound)
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
    listeners: Vec<BoundListener>,
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
    /// The TLS listeners' certificates and CRL, when there are TLS listeners.
    tls: Option<Arc<TlsState>>,
    broker: Broker,
    journal: Option<Journal>,
    config_db: sqlx::SqlitePool,
    security: Arc<Security>,
    /// Watches the configuration database for changes made by other processes.
    reload: JoinHandle<()>,
    // --- Kafka forwarding (issue 12): stopped after the listeners and the router, before the journal.
    forwarder: crate::forward::Forwarder,
    router: JoinHandle<()>,
    listeners: Vec<(String, SocketAddr, JoinHandle<()>)>,
    stop: watch::Sender<bool>,
    connections: Arc<Connections>,
    connections_done: mpsc::Receiver<()>,
    shutdown_timeout: Duration,
}

impl Gateway {
    pub async fn start(config: Config, listeners: Vec<BoundListener>) -> Result<Gateway, AppError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| AppError::DataDir { path: config.data_dir.clone(), source })?;
        let (config_db, recovered) = store::open(
            &config.data_dir,
            store::Database::Config,
            sqlx::sqlite::SqliteSynchronous::Full,
            None,
        )
        .await?;
        if recovered {
            let _ = store::audit(&config_db, "system", "database.recovered", store::CONFIG_FILE).await;
        }
        let journal = match config.journal.durability {
            Durability::Off => None,
            _ => Some(Journal::open(&config.data_dir, config.journal.clone()).await?),
        };
        let restored = match &journal {
            Some(j) => Restored {
                retained: j.retained().await?,
                sessions: j.sessions(config.broker.max_queued_messages).await?,
            },
            None => Restored::default(),
        };
        if !restored.retained.is_empty() {
            tracing::info!(count = restored.retained.len(), "retained messages restored from the journal");
        }
        let durable = journal.clone().map(|j| Arc::new(j) as Arc<dyn Durable>);
        let security = Arc::new(Security::load(config_db.clone()).await?);
        let authorizer: Arc<dyn Authorizer> = security.clone();
        let (broker, router) = Broker::start(config.broker.clone(), durable, Some(authorizer), restored);
        let authenticator: Arc<dyn Authenticator> = security.clone();
        let (connections, connections_done) = Connections::new(config.max_connections);
        let (stop, stopped) = watch::channel(false);
        let certificates = Certificates::new(config_db.clone(), &config.data_dir);
        let tls_material = if listeners.iter().any(|b| b.config.protocol.is_tls()) {
            let material =
                crate::tls::server_material(&config.data_dir, &config.listeners, &config.server_names)?;
            let crl = certificates.crl_pem().await?;
            Some((material, crl))
        } else {
            None
        };
        let mut tls_configs = Vec::new();
        let mut tasks = Vec::new();
        for bound in listeners {
            let addr = bound.local_addr().map_err(|source| AppError::Bind {
                name: bound.config.name.clone(),
                addr: bound.config.bind,
                source,
            })?;
            let l = bound.config;
            tracing::info!(
                listener = %l.name, "listening on {} ({}{}), anonymous {}",
                addr,
                match l.protocol {
                    net::Protocol::Tcp => "mqtt",
                    net::Protocol::WebSocket => "mqtt over websocket ",
                    net::Protocol::Tls => "mqtt over tls",
                    net::Protocol::SecureWebSocket => "mqtt over secure websocket ",
                },
                l.ws_path,
                if l.allow_anonymous { "allowed" } else { "refused" },
            );
            let tls = match (&tls_material, l.protocol) {
                (Some((m, crl)), protocol) if protocol.is_tls() => {
                    let material = TlsMaterial {
                        cert_chain_pem: &m.cert_chain_pem,
                        key_pem: &m.key_pem,
                        client_ca_pem: &m.ca_pem,
                        crl_pem: Some(crl),
                    };
                    let config = Arc::new(ReloadableServerConfig::new(&material, l.client_certificates)?);
                    tls_configs.push(config.clone());
                    Some(config)
                }
                _ => None,
            };
            let context = Arc::new(ListenerContext {
                tls,
                identity: l.identity,
                certificate_password: l.certificate_password,
                name: l.name.clone(),
                protocol: l.protocol,
                ws_path: l.ws_path,
                allow_anonymous: l.allow_anonymous,
                authenticator: Some(authenticator.clone()),
                connect_timeout: config.connect_timeout,
                broker: broker.clone(),
                connections: connections.clone(),
            });
            let task = tokio::spawn(net::serve(bound.listener, context, stopped.clone()));
            tasks.push((l.name, addr, task));
        }
        let tls = tls_material.map(|(material, _)| {
            Arc::new(TlsState {
                data_dir: config.data_dir.clone(),
                listeners: config.listeners.clone(),
                names: config.server_names.clone(),
                certificates: certificates.clone(),
                material: std::sync::Mutex::new(material),
                configs: tls_configs,
            })
        });
        let reload = tokio::spawn(watch_configuration(
            broker.clone(),
            Arc::downgrade(&security),
            certificates,
            tls.clone(),
            connections.clone(),
        ));
        // --- Kafka forwarding (issue 12): reads the journal through cursors, publishes downlink via the broker.
        let forwarder = crate::forward::Forwarder::start(
            journal.clone(),
            broker.clone(),
            config_db.clone(),
            config.data_dir.clone(),
        );
        Ok(Gateway {
            forwarder,
            tls,
            broker,
            journal,
            config_db,
            security,
            reload,
            router,
            listeners: tasks,
            stop,
            connections,
            connections_done,
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Renews the server certificate if it is due (or missing, or its names changed) and gives the TLS listeners
    /// the current certificate and CRL, without a restart. Runs hourly on its own; returns whether anything changed.
    pub async fn refresh_tls(&self) -> Result<bool, AppError> {
        match &self.tls {
            Some(tls) => tls.refresh().await,
            None => Ok(false),
        }
    }

    /// Users and their checks at CONNECT.
    pub fn security(&self) -> &Arc<Security> {
        &self.security
    }

    /// The message journal, unless durability is off.
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// The address each listener is bound to, by listener name.
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|(n, _, _)| n == name).map(|(_, addr, _)| *addr)
    }

    /// Stops accepting, tells every client the server is shutting down, and waits (bounded) for them to go.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        let _ = self.stop.send(true);
        for (_, _, task) in self.listeners {
            let _ = task.await;
        }
        self.broker.shutdown().await;
        let Gateway {
            broker,
            router,
            connections,
            mut connections_done,
            shutdown_timeout,
            journal,
            config_db,
            reload,
            forwarder,
            ..
        } = self;
        // --- Kafka forwarding (issue 12): routes commit their cursors; holds a broker handle, so before the router.
        forwarder.shutdown().await;
        reload.abort();
        // It holds a broker handle: wait until it is gone, or the router would wait for it.
        let _ = reload.await;
        // Our own counter holds a tracker sender too; drop it so that only live connections keep the channel open.
        let active = connections.active();
        drop(connections);
        if tokio::time::timeout(shutdown_timeout, connections_done.recv()).await.is_err() {
            tracing::warn!(active, "connections did not close within the shutdown timeout");
        }
        drop(broker);
        if tokio::time::timeout(shutdown_timeout, router).await.is_err() {
            tracing::warn!("the router did not stop within the shutdown timeout");
        }
        if let Some(journal) = journal {
            journal.close().await;
        }
        config_db.close().await;
        tracing::info!("stopped");
    }
}

/// Applies configuration changes made anywhere (this process, `weir user`, `weir acl`, `weir cert`) without a
/// restart: users and rules are reloaded; after a revocation the TLS listeners get the new CRL and connections
/// made with a revoked certificate are closed.
/// What the TLS listeners are configured with, and how to bring it up to date.
#[derive(Debug)]
struct TlsState {
    data_dir: std::path::PathBuf,
    listeners: Vec<ListenerConfig>,
    names: crate::tls::ServerNames,
    certificates: Certificates,
    material: std::sync::Mutex<crate::tls::ServerMaterial>,
    configs: Vec<Arc<ReloadableServerConfig>>,
}

impl TlsState {
    /// Renews the server certificate if due and reloads every TLS listener with it and a fresh CRL.
    async fn refresh(&self) -> Result<bool, AppError> {
        let current = crate::tls::server_material(&self.data_dir, &self.listeners, &self.names)?;
        let renewed = {
            let mut material = self.material.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let renewed = material.cert_chain_pem != current.cert_chain_pem;
            *material = current.clone();
            renewed
        };
        let crl = self.certificates.crl_pem().await?;
        let material = TlsMaterial {
            cert_chain_pem: &current.cert_chain_pem,
            key_pem: &current.key_pem,
            client_ca_pem: &current.ca_pem,
            crl_pem: Some(&crl),
        };
        for config in &self.configs {
            config.reload(&material)?;
        }
        if renewed {
            tracing::info!("TLS listeners now use the renewed server certificate");
        }
        Ok(renewed)
    }
}

async fn watch_configuration(
    broker: Broker,
    security: std::sync::Weak<Security>,
    certificates: Certificates,
    tls: Option<Arc<TlsState>>,
    connections: Arc<Connections>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks: u64 = 0;
    let mut revoked: std::collections::HashSet<String> = match certificates.revoked().await {
        Ok(serials) => serials.into_iter().collect(),
        Err(e) => {
            tracing::warn!("reading revocations: {e}");
            std::collections::HashSet::new()
        }
    };
    loop {
        tick.tick().await;
        ticks += 1;
        if ticks.is_multiple_of(3600)
            && let Some(tls) = &tls
            && let Err(e) = tls.refresh().await
        {
            tracing::error!("checking the server certificate: {e}");
        }
        let Some(security) = security.upgrade() else { return };
        let changed = match security.reload_if_changed().await {
            Ok(changed) => changed,
            Err(e) => {
                tracing::warn!("reloading the configuration: {e}");
                false
            }
        };
        // Whichever process deleted them (this one reloads at once, without a version change to notice).
        for user in security.take_removed_users() {
            tracing::info!(user, "user deleted: closing its connections");
            let _ = broker.disconnect_user(&user).await;
        }
        if !changed {
            continue;
        }
        let now: std::collections::HashSet<String> = match certificates.revoked().await {
            Ok(serials) => serials.into_iter().collect(),
            Err(e) => {
                tracing::warn!("reading revocations: {e}");
                continue;
            }
        };
        let newly: Vec<&String> = now.difference(&revoked).collect();
        if newly.is_empty() {
            continue;
        }
        if let Some(tls) = &tls
            && let Err(e) = tls.refresh().await
        {
            tracing::error!("TLS listeners keep their previous CRL: {e}");
        }
        for serial in &newly {
            let closed = connections.disconnect_certificate(serial);
            tracing::info!(%serial, closed, "certificate revoked: its connections are closed");
        }
        revoked = now;
    }
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
