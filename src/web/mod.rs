//! The web console: everything an operator does, from a browser on the LAN, in the gateway's own process.
//!
//! Server-rendered HTML (askama templates, escaped by default) with a little progressive enhancement from one
//! small script of our own; no CDN, no external fonts, no telemetry. Every administrative action goes through
//! [`crate::ops`], exactly as the CLI's do. `app` starts it as a task of the listeners stage; nothing depends on
//! this module.
//!
//! - [`router`]: every route, in one place; one module per page, handlers named for the page and the method.
//! - [`session`]: sign-in sessions (cookies), the CSRF check of every state-changing request, the extractors that
//!   decide who may see and do what.
//! - [`headers`]: the security headers (CSP without inline script, frame-ancestors, nosniff, HSTS on HTTPS).
//! - [`serve`]: HTTP on loopback, HTTPS with the gateway's server certificate elsewhere, and a plain-HTTP
//!   listener that only redirects.

mod assets;
mod audit;
mod backup;
mod certs;
mod clients;
mod error;
mod headers;
mod history;
mod kafka;
mod login;
mod metrics;
mod overview;
mod presence;
mod serve;
mod session;
mod settings;
mod setup;
mod sparkplug;
mod topics;
mod users;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::config::ConsoleConfig;
use crate::mqtt::broker::Broker;
use crate::ops::Ops;
use crate::store::Journal;
pub use error::WebError;
pub use serve::{serve, serve_redirect};
pub use session::Sessions;
pub use setup::{SETUP_CODE_FILE, SetupCode};

/// Largest request body: forms, a pasted CSR or Mosquitto file. Larger uploads are refused (413).
const MAX_BODY: usize = 256 * 1024;

/// How long a request may take to be answered.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    ops: Ops,
    broker: Broker,
    journal: Option<Journal>,
    sessions: Sessions,
    setup: SetupCode,
    /// Served over HTTPS: cookies are `Secure` and `__Host-`, HSTS is sent.
    https: bool,
    /// Served on a loopback address only: `/metrics` needs no sign-in there.
    loopback: bool,
    rates: overview::Rates,
    live: topics::LiveCount,
    /// The configuration in force, for the settings page.
    settings: Vec<crate::config::Setting>,
    config_file: Option<std::path::PathBuf>,
    /// The console's stop: long-lived responses (live views) end with it.
    stop: crate::shutdown::StopToken,
    /// The Sparkplug page's state and actions; `None` in tests that do not start the service.
    sparkplug: Option<crate::sparkplug::Sparkplug>,
}

impl AppState {
    pub fn new(
        ops: Ops,
        broker: Broker,
        journal: Option<Journal>,
        setup: SetupCode,
        config: &ConsoleConfig,
        gateway: &crate::config::Config,
        stop: crate::shutdown::StopToken,
    ) -> AppState {
        let inner = Shared {
            ops,
            broker,
            journal,
            sessions: Sessions::new(config.idle_timeout),
            setup,
            https: config.https,
            loopback: config.bind.ip().is_loopback(),
            rates: overview::Rates::default(),
            live: topics::LiveCount::default(),
            settings: gateway.effective(),
            config_file: gateway.source.as_ref().map(|(path, _)| path.clone()),
            stop,
            sparkplug: None,
        };
        AppState { inner: Arc::new(inner) }
    }

    /// Gives the console the Sparkplug service; called once, right after [`AppState::new`].
    pub fn with_sparkplug(mut self, sparkplug: crate::sparkplug::Sparkplug) -> AppState {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.sparkplug = Some(sparkplug),
            None => tracing::warn!("console state already shared: the Sparkplug page stays empty"),
        }
        self
    }

    fn ops(&self) -> &Ops {
        &self.inner.ops
    }
}

/// Every route of the console.
pub fn router(state: AppState) -> Router {
    use kafka::{DownlinkForm as Downlink, UplinkForm as Uplink};
    Router::new()
        .route("/", get(overview::overview_get))
        .route("/api/overview", get(overview::api_get))
        .route("/setup", get(setup::setup_get).post(setup::setup_post))
        .route("/login", get(login::login_get).post(login::login_post))
        .route("/logout", post(login::logout_post))
        .route("/clients", get(clients::clients_get))
        .route("/clients/disconnect", post(clients::disconnect_post))
        .route("/clients/delete", post(clients::delete_post))
        .route("/topics", get(topics::topics_get))
        .route("/topics/view", get(topics::view_get))
        .route("/topics/live", get(topics::live_get))
        .route("/topics/stream", get(topics::stream_get))
        .route("/topics/publish", post(topics::publish_post))
        .route("/topics/clear", post(topics::clear_post))
        .route("/history", get(history::history_get))
        .route("/history/series", get(history::series_get))
        .route("/history/export", get(history::export_get))
        .route("/presence", get(presence::presence_get))
        .route("/presence/rules/add", post(presence::rule_add_post))
        .route("/presence/rules/delete", post(presence::rule_delete_post))
        .route("/users", get(users::users_get))
        .route("/users/add", post(users::add_post))
        .route("/users/password", post(users::password_post))
        .route("/users/roles", post(users::roles_post))
        .route("/users/delete", post(users::delete_post))
        .route("/users/import", post(users::import_post))
        .route("/tokens/add", post(users::token_add_post))
        .route("/tokens/delete", post(users::token_delete_post))
        .route("/rules/add", post(users::rule_add_post))
        .route("/rules/delete", post(users::rule_delete_post))
        .route("/certs", get(certs::certs_get))
        .route("/certs/issue", post(certs::issue_post))
        .route("/certs/sign", post(certs::sign_post))
        .route("/certs/revoke", post(certs::revoke_post))
        .route("/certs/crl.pem", get(certs::crl_get))
        .route("/ca.crt", get(certs::ca_get))
        .route("/audit", get(audit::audit_get))
        .route("/settings", get(settings::settings_get))
        .route("/backup", get(backup::backup_get).post(backup::backup_post))
        .route("/sparkplug", get(sparkplug::sparkplug_get))
        .route("/sparkplug/metric", get(sparkplug::metric_get))
        .route("/sparkplug/series", get(sparkplug::series_get))
        .route("/sparkplug/rebirth", post(sparkplug::rebirth_post))
        .route("/kafka", get(kafka::kafka_get))
        .route("/kafka/status", get(kafka::status_get))
        .route("/kafka/upstreams/add", get(kafka::upstream_add_get).post(kafka::upstream_add_post))
        .route("/kafka/upstreams/edit", get(kafka::upstream_edit_get).post(kafka::upstream_edit_post))
        .route("/kafka/upstreams/delete", post(kafka::upstream_delete_post))
        .route("/kafka/upstreams/test", post(kafka::upstream_test_post))
        .route(
            "/kafka/uplinks/add",
            get(kafka::route_add_get::<Uplink>).post(kafka::route_add_post::<Uplink>),
        )
        .route(
            "/kafka/uplinks/edit",
            get(kafka::route_edit_get::<Uplink>).post(kafka::route_edit_post::<Uplink>),
        )
        .route(
            "/kafka/downlinks/add",
            get(kafka::route_add_get::<Downlink>).post(kafka::route_add_post::<Downlink>),
        )
        .route(
            "/kafka/downlinks/edit",
            get(kafka::route_edit_get::<Downlink>).post(kafka::route_edit_post::<Downlink>),
        )
        .route("/kafka/routes/show", get(kafka::route_get))
        .route("/kafka/routes/pause", post(kafka::route_pause_post))
        .route("/kafka/routes/resume", post(kafka::route_resume_post))
        .route("/kafka/routes/delete", post(kafka::route_delete_post))
        .route("/metrics", get(metrics::metrics_get))
        .route("/static/{*file}", get(assets::asset_get))
        .fallback(error::not_found)
        .layer(RequestBodyLimitLayer::new(MAX_BODY))
        // The one route that takes more than a form: an uploaded backup.
        .merge(
            Router::new()
                .route("/backup/restore", post(backup::restore_post))
                .layer(axum::extract::DefaultBodyLimit::max(backup::MAX_UPLOAD))
                .layer(RequestBodyLimitLayer::new(backup::MAX_UPLOAD)),
        )
        .layer(axum::middleware::from_fn_with_state(state.clone(), session::csrf_guard))
        .layer(axum::middleware::from_fn_with_state(state.clone(), headers::security_headers))
        // gzip for pages, scripts and JSON (not for the live view's event stream: the default predicate
        // leaves `text/event-stream` alone, so events are not held back to fill a compression block).
        .layer(CompressionLayer::new())
        // A request must be answered within this; a streamed body (an export, the live view) then goes on.
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// What the page layout needs: who is signed in, the CSRF token for its forms, the current page.
#[derive(Debug, Clone, Default)]
pub(crate) struct Nav {
    pub(crate) user: Option<String>,
    pub(crate) admin: bool,
    pub(crate) csrf: String,
    pub(crate) page: &'static str,
}

impl Nav {
    fn of(signed: &session::Signed, page: &'static str) -> Nav {
        Nav { user: Some(signed.user.clone()), admin: signed.is_admin(), csrf: signed.csrf.clone(), page }
    }
}

/// After a form: back to `page` with a notice saying what was done, or with the reason it was refused (a bad
/// request); other errors get the error page.
fn back_to(page: &str, result: Result<String, WebError>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (key, text) = match result {
        Ok(notice) => ("notice", notice),
        Err(WebError::BadRequest(why)) => ("error", why),
        Err(other) => return other.into_response(),
    };
    let query = form_urlencoded::Serializer::new(String::new()).append_pair(key, &text).finish();
    let separator = if page.contains('?') { '&' } else { '?' };
    axum::response::Redirect::to(&format!("{page}{separator}{query}")).into_response()
}

/// A change from a form: `act` if `allowed` (the user's right to it, checked first), then back to `page` with the
/// notice `act` answers, or with the reason it was refused ([`back_to`]).
async fn act_then_back(
    page: &str,
    allowed: Result<(), WebError>,
    act: impl AsyncFnOnce() -> Result<String, WebError>,
) -> axum::response::Response {
    let result = match allowed {
        Ok(()) => act().await,
        Err(refused) => Err(refused),
    };
    back_to(page, result)
}

/// Renders a template into a page, or the error page if it cannot be rendered.
fn render(template: &impl askama::Template) -> axum::response::Response {
    use axum::response::IntoResponse;
    match template.render() {
        Ok(html) => axum::response::Html(html).into_response(),
        Err(e) => WebError::Internal(format!("template: {e}")).into_response(),
    }
}

#[cfg(test)]
mod tests;
