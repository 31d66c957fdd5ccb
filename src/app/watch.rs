//! Applies configuration changes made anywhere (this process, `weir user`, `weir acl`, `weir cert`, the console)
//! without a restart: users and rules (access rules, birth and death rules) are reloaded; a deleted user's connections are closed; after a revocation
//! the TLS listeners get the new CRL and connections made with a revoked certificate are closed. Also renews the
//! server certificate when due (hourly check). Executes the requests the command line leaves for the running
//! gateway (`weir sparkplug rebirth`), each once, and answers them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::mqtt::broker::Broker;
use crate::mqtt::net::Connections;
use crate::ops::Ops;
use crate::security::Security;
use crate::security::server::ServerTls;
use crate::shutdown::StopToken;
use crate::sparkplug::Sparkplug;

/// What the watcher needs to execute the command line's requests.
pub(super) struct Requests {
    pub(super) ops: Ops,
    pub(super) sparkplug: Sparkplug,
}

pub(super) async fn watch_configuration(
    broker: Broker,
    security: Arc<Security>,
    tls: Option<Arc<ServerTls>>,
    connections: Arc<Connections>,
    requests: Requests,
    mut stop: StopToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks: u64 = 0;
    let mut revoked = revoked_serials(&security).await.unwrap_or_default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.stopped() => return,
        }
        ticks += 1;
        if ticks.is_multiple_of(3600)
            && let Some(tls) = &tls
            && let Err(e) = tls.refresh().await
        {
            tracing::error!("checking the server certificate: {e}");
        }
        let changed = match security.reload_if_changed().await {
            Ok(changed) => changed,
            Err(e) => {
                tracing::warn!("reloading the configuration: {e}");
                false
            }
        };
        if let Err(e) = requests.ops.serve_sparkplug_requests(&requests.sparkplug).await {
            tracing::warn!("serving the command line's requests: {e}");
        }
        // Whichever process deleted them (this one reloads at once, without a version change to notice).
        for user in security.take_removed_users() {
            tracing::info!(user, "user deleted: closing its connections");
            let _ = broker.disconnect_user(&user).await;
        }
        if !changed {
            continue;
        }
        apply_presence_rules(&broker, &security).await;
        let Some(now) = revoked_serials(&security).await else { continue };
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

/// Gives the broker the birth and death rules in force (at start-up, and when the configuration changed).
pub(super) async fn apply_presence_rules(broker: &Broker, security: &Security) {
    match crate::ops::presence::load_rules(security.pool()).await {
        Ok(rules) => broker.set_presence_rules(rules),
        Err(e) => tracing::warn!("reading the birth and death rules: {e}"),
    }
}

async fn revoked_serials(security: &Security) -> Option<HashSet<String>> {
    match security.certificates().revoked().await {
        Ok(serials) => Some(serials.into_iter().collect()),
        Err(e) => {
            tracing::warn!("reading revocations: {e}");
            None
        }
    }
}
