//! Kafka: upstream clusters (add, edit, delete, test the connection), uplink and downlink routes (add, edit,
//! pause, resume, delete), and what each route is doing (state, lag in messages and age, rate, last
//! acknowledgement, last error, gaps, dead letters). Every action goes through [`crate::forward::ops`], as
//! `weir kafka ...` does; the status is the forwarder's own report, read through [`ops::status`].
//!
//! The forms are pages of their own: a refused form comes back with what was typed (never a secret) and each
//! reason beside its field. Secrets are write-only: the page says whether a password or a key is set, and an
//! empty field on an edit keeps the stored one.

use axum::Form;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::session::Signed;
use super::{AppState, Nav, WebError, act_then_back, render};
use crate::forward::config::{FieldError, RouteSpec};
use crate::forward::ops::{
    self, AddDownlink, AddRoute, DeadLetter, OpsError, RouteView, SetUpstream, UpstreamView,
};
use crate::forward::status::RouteStatus;
use crate::timefmt;

/// Dead letters listed on the Kafka page (all routes) and on a route's page.
const DEAD_LETTERS_SHOWN: i64 = 20;
const ROUTE_DEAD_LETTERS_SHOWN: i64 = 200;

#[derive(askama::Template)]
#[template(path = "kafka.html")]
struct KafkaPage {
    nav: Nav,
    notice: Option<String>,
    error: Option<String>,
    /// This binary forwards to Kafka (the cargo feature `kafka`).
    built: bool,
    upstreams: Vec<UpstreamRow>,
    routes: Vec<RouteView>,
    status: StatusSection,
}

impl KafkaPage {
    /// The page of a binary without Kafka: it says so, and the rest of the console works as ever.
    fn not_built(nav: Nav, query: KafkaQuery) -> KafkaPage {
        KafkaPage {
            nav,
            notice: query.notice,
            error: query.error,
            built: false,
            upstreams: Vec::new(),
            routes: Vec::new(),
            status: StatusSection::default(),
        }
    }
}

/// An upstream as the page lists it: what is set, never a secret.
struct UpstreamRow {
    name: String,
    bootstrap: String,
    tls: &'static str,
    ca: String,
    client_cert: String,
    sasl: String,
    password: &'static str,
    compression: String,
}

impl From<UpstreamView> for UpstreamRow {
    fn from(u: UpstreamView) -> UpstreamRow {
        let file_or_text = |file: Option<std::path::PathBuf>, text: Option<String>| match (file, text) {
            (Some(file), _) => format!("file {}", file.display()),
            (None, Some(description)) => description,
            (None, None) => "not set".to_owned(),
        };
        UpstreamRow {
            bootstrap: u.bootstrap.join(", "),
            tls: if u.tls { "on" } else { "off" },
            ca: file_or_text(u.ca, u.ca_pem),
            client_cert: match file_or_text(u.client_cert, u.client_cert_pem) {
                set if u.client_key => format!("{set}; key set"),
                set => set,
            },
            sasl: match (&u.sasl_mechanism, &u.sasl_user) {
                (Some(mechanism), Some(user)) => format!("{mechanism}, user {user}"),
                _ => "none".to_owned(),
            },
            password: if u.sasl_mechanism.is_some() { "set" } else { "not set" },
            compression: u.compression,
            name: u.name,
        }
    }
}

/// The status of every route and the newest dead letters: part of the page, and served alone at
/// `/kafka/status`, which the page's script fetches every two seconds.
#[derive(Default)]
struct StatusSection {
    /// How old the forwarder's report is, when it is not fresh (it rewrites it every second).
    stale: Option<String>,
    rows: Vec<StatusRow>,
    dead_letter_count: i64,
    dead_letters: Vec<DeadLetterRow>,
}

#[derive(askama::Template)]
#[template(path = "kafka_status_partial.html")]
struct StatusPartial {
    status: StatusSection,
}

struct StatusRow {
    name: String,
    kind: String,
    state: String,
    lag_alarm: bool,
    forwarded: String,
    rate: String,
    lag_messages: String,
    lag_age: String,
    /// The time (UTC), and how long ago it was.
    last_ack: String,
    last_ack_ago: String,
    last_error: String,
    last_error_at: String,
    last_error_ago: String,
    gap: String,
    dead_letters: String,
    skipped: String,
}

impl StatusRow {
    fn new(route: &RouteView, status: Option<&RouteStatus>, now: i64) -> StatusRow {
        let dash = || "–".to_owned();
        let Some(s) = status else {
            return StatusRow {
                name: route.name.clone(),
                kind: route.kind.clone(),
                state: if route.paused { "paused" } else { "waiting to start" }.to_owned(),
                lag_alarm: false,
                forwarded: dash(),
                rate: dash(),
                lag_messages: dash(),
                lag_age: dash(),
                last_ack: dash(),
                last_ack_ago: dash(),
                last_error: String::new(),
                last_error_at: String::new(),
                last_error_ago: String::new(),
                gap: dash(),
                dead_letters: dash(),
                skipped: dash(),
            };
        };
        StatusRow {
            name: route.name.clone(),
            kind: route.kind.clone(),
            state: s.state.as_str().to_owned(),
            lag_alarm: s.lag_alarm,
            forwarded: s.forwarded.to_string(),
            rate: format!("{:.1}/s", s.rate),
            // Downlinks read Kafka, not the journal: their backlog is Kafka's consumer lag, not ours to count.
            lag_messages: if s.kind == "uplink" { s.lag_messages.to_string() } else { dash() },
            lag_age: duration(s.lag_ms),
            last_ack: s.last_ack_ms.map_or_else(|| "never".to_owned(), timefmt::format),
            last_ack_ago: s.last_ack_ms.map_or_else(|| "never".to_owned(), |t| ago(t, now)),
            last_error: s.last_error.clone().unwrap_or_default(),
            last_error_at: s.last_error_ms.map(timefmt::format).unwrap_or_default(),
            last_error_ago: s.last_error_ms.map(|t| ago(t, now)).unwrap_or_default(),
            gap: s.gap.to_string(),
            dead_letters: s.dead_letters.to_string(),
            skipped: s.skipped_duplicates.to_string(),
        }
    }
}

struct DeadLetterRow {
    time: String,
    route: String,
    journal_id: String,
    source: String,
    destination: String,
    size: usize,
    reason: String,
}

impl From<DeadLetter> for DeadLetterRow {
    fn from(d: DeadLetter) -> DeadLetterRow {
        DeadLetterRow {
            time: timefmt::format(d.ts),
            route: d.route,
            journal_id: d.journal_id.map_or_else(|| "–".to_owned(), |id| id.to_string()),
            source: d.source,
            destination: d.destination,
            size: d.payload_bytes,
            reason: d.reason,
        }
    }
}

fn ago(ms: i64, now: i64) -> String {
    format!("{} ago", duration(now.saturating_sub(ms)))
}

fn duration(ms: i64) -> String {
    match ms.max(0) {
        ms if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        ms if ms < 3_600_000 => format!("{} min", ms / 60_000),
        ms => format!("{:.1} h", ms as f64 / 3_600_000.0),
    }
}

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct KafkaQuery {
    notice: Option<String>,
    error: Option<String>,
}

pub(super) async fn kafka_get(
    signed: Signed,
    State(state): State<AppState>,
    Query(query): Query<KafkaQuery>,
) -> Result<Response, WebError> {
    let nav = Nav::of(&signed, "kafka");
    if !crate::forward::BUILT {
        return Ok(render(&KafkaPage::not_built(nav, query)));
    }
    let upstreams = ops::upstream_list(pool(&state)).await?.into_iter().map(UpstreamRow::from).collect();
    let routes = ops::route_list(pool(&state)).await?;
    let status = status_section(&state, &routes).await?;
    let page =
        KafkaPage { nav, notice: query.notice, error: query.error, built: true, upstreams, routes, status };
    Ok(render(&page))
}

/// The status section alone, for the page's refresh.
pub(super) async fn status_get(_signed: Signed, State(state): State<AppState>) -> Result<Response, WebError> {
    let routes = ops::route_list(pool(&state)).await?;
    Ok(render(&StatusPartial { status: status_section(&state, &routes).await? }))
}

async fn status_section(state: &AppState, routes: &[RouteView]) -> Result<StatusSection, WebError> {
    let view = ops::status(state.ops().data_dir());
    let now = timefmt::now_ms();
    let stale = match &view.report {
        Some(report) if !view.running && !routes.is_empty() => {
            Some(duration(now.saturating_sub(report.written_ms)))
        }
        _ => None,
    };
    let reported = view.report.map(|r| r.routes).unwrap_or_default();
    let rows = routes
        .iter()
        .map(|route| StatusRow::new(route, reported.iter().find(|s| s.name == route.name), now))
        .collect();
    let (dead_letter_count, dead_letters) = ops::dead_letters(pool(state), None, DEAD_LETTERS_SHOWN).await?;
    Ok(StatusSection {
        stale,
        rows,
        dead_letter_count,
        dead_letters: dead_letters.into_iter().map(DeadLetterRow::from).collect(),
    })
}

#[derive(askama::Template)]
#[template(path = "kafka_route.html")]
struct RoutePage {
    nav: Nav,
    route: RouteView,
    status: StatusRow,
    dead_letter_count: i64,
    dead_letters: Vec<DeadLetterRow>,
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct NameQuery {
    name: String,
}

/// One route: how it is set up, its status, and its dead letters with their reasons.
pub(super) async fn route_get(
    signed: Signed,
    State(state): State<AppState>,
    Query(query): Query<NameQuery>,
) -> Result<Response, WebError> {
    let details =
        match ops::route_show(pool(&state), state.ops().data_dir(), &query.name, ROUTE_DEAD_LETTERS_SHOWN)
            .await
        {
            Err(OpsError::Config(crate::forward::config::ConfigError::NoRoute(_))) => {
                return Err(WebError::NotFound);
            }
            other => other?,
        };
    let page = RoutePage {
        nav: Nav::of(&signed, "kafka"),
        status: StatusRow::new(&details.route, details.status.as_ref(), timefmt::now_ms()),
        route: details.route,
        dead_letter_count: details.dead_letter_count,
        dead_letters: details.dead_letters.into_iter().map(DeadLetterRow::from).collect(),
    };
    Ok(render(&page))
}

/// The reasons of a refused form: each beside its field, and what belongs to no field of the form at the top.
#[derive(Debug, Default)]
pub(super) struct Errors {
    fields: Vec<FieldError>,
    top: Option<String>,
}

impl Errors {
    /// Why `field` was refused.
    fn of(&self, field: &str) -> Option<&str> {
        self.fields.iter().find(|f| f.field == field).map(|f| f.reason.as_str())
    }

    fn field(field: &'static str, reason: impl Into<String>) -> Errors {
        Errors { fields: vec![FieldError { field, reason: reason.into() }], top: None }
    }
}

/// Why a form was not saved: refused (the form comes back with the reasons), or failed (the error page).
enum NotSaved {
    Refused(Errors),
    Failed(WebError),
}

impl From<Errors> for NotSaved {
    fn from(errors: Errors) -> NotSaved {
        NotSaved::Refused(errors)
    }
}

impl NotSaved {
    /// Sorts a refusal's reasons between the form's `fields` and the top; a failure that is no refusal (the
    /// database) is the error page's.
    fn of(error: OpsError, fields: &[&str]) -> NotSaved {
        let by_field = error.fields();
        let why = match WebError::from(error) {
            WebError::BadRequest(why) => why,
            other => return NotSaved::Failed(other),
        };
        let (beside, elsewhere): (Vec<_>, Vec<_>) =
            by_field.into_iter().partition(|f| fields.contains(&f.field));
        let top = match (beside.is_empty(), elsewhere.is_empty()) {
            (true, _) => Some(why),
            (false, true) => None,
            (false, false) => Some(elsewhere.into_iter().map(|f| f.reason).collect::<Vec<_>>().join("; ")),
        };
        NotSaved::Refused(Errors { fields: beside, top })
    }
}

/// After a form: back to the Kafka page saying that `what` (`Route plant`) was added or changed, or the form
/// again (400), made by `form`, with the reasons beside its fields.
async fn answer<P: askama::Template>(
    saved: Result<String, NotSaved>,
    edit: bool,
    form: impl AsyncFnOnce(Errors) -> P,
) -> Response {
    match saved {
        Ok(what) => {
            let did = if edit { "changed" } else { "added" };
            done(Ok(format!("{what} {did}; the forwarder applies it within a second.")))
        }
        Err(NotSaved::Failed(e)) => e.into_response(),
        Err(NotSaved::Refused(errors)) => {
            (StatusCode::BAD_REQUEST, render(&form(errors).await)).into_response()
        }
    }
}

/// After a change: back to the Kafka page with a notice, or with the reason it was refused.
fn done(result: Result<String, WebError>) -> Response {
    super::back_to(PAGE, result)
}

/// Where a change goes back to.
const PAGE: &str = "/kafka";

/// Changes need an administrator, and a binary that forwards to Kafka.
fn may_change(signed: &Signed) -> Result<(), WebError> {
    signed.require_admin()?;
    if crate::forward::BUILT {
        Ok(())
    } else {
        Err(WebError::BadRequest("Kafka forwarding is not in this build of Weir.".into()))
    }
}

fn pool(state: &AppState) -> &sqlx::SqlitePool {
    state.ops().security().pool()
}

// --- Upstreams.

const UPSTREAM_FIELDS: &[&str] = &[
    "name",
    "bootstrap",
    "tls",
    "ca",
    "client_cert",
    "client_key",
    "sasl_mechanism",
    "sasl_user",
    "sasl_password",
    "compression",
];

#[derive(askama::Template)]
#[template(path = "kafka_upstream_form.html")]
struct UpstreamFormPage {
    nav: Nav,
    edit: bool,
    form: UpstreamForm,
    /// Editing: what is stored, to say what is set.
    stored: Option<UpstreamRow>,
    errors: Errors,
}

/// The upstream form as posted. Not `Debug`: it holds the password and the client key, which are never shown
/// again, not even on the form that refused them.
#[derive(Default, serde::Deserialize)]
pub(super) struct UpstreamForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    bootstrap: String,
    #[serde(default)]
    tls: bool,
    #[serde(default)]
    ca: String,
    #[serde(default)]
    remove_ca: bool,
    #[serde(default)]
    client_cert: String,
    #[serde(default)]
    client_key: String,
    #[serde(default)]
    remove_client_cert: bool,
    #[serde(default)]
    sasl_mechanism: String,
    #[serde(default)]
    sasl_user: String,
    #[serde(default)]
    sasl_password: String,
    #[serde(default)]
    compression: String,
}

impl UpstreamForm {
    fn of(u: &UpstreamView) -> UpstreamForm {
        UpstreamForm {
            name: u.name.clone(),
            bootstrap: u.bootstrap.join(","),
            tls: u.tls,
            sasl_mechanism: u.sasl_mechanism.clone().unwrap_or_default(),
            sasl_user: u.sasl_user.clone().unwrap_or_default(),
            compression: u.compression.clone(),
            ..UpstreamForm::default()
        }
    }

    fn request(&self) -> SetUpstream {
        let text = |t: &str| Some(t.trim().to_owned()).filter(|t| !t.is_empty());
        // "No SASL" leaves the user and password fields out, whatever they still hold.
        let sasl = !self.sasl_mechanism.is_empty();
        SetUpstream {
            name: self.name.trim().to_owned(),
            bootstrap: self.bootstrap.clone(),
            tls: self.tls,
            ca_pem: text(&self.ca),
            client_cert_pem: text(&self.client_cert),
            client_key_pem: text(&self.client_key),
            remove_ca: self.remove_ca,
            remove_client_cert: self.remove_client_cert,
            sasl_mechanism: sasl.then(|| self.sasl_mechanism.clone()),
            sasl_user: sasl.then(|| self.sasl_user.trim().to_owned()),
            sasl_password: Some(self.sasl_password.clone()).filter(|p| sasl && !p.is_empty()),
            compression: text(&self.compression),
            ..SetUpstream::default()
        }
    }

    /// What may be shown again: secrets dropped.
    fn without_secrets(self) -> UpstreamForm {
        UpstreamForm { client_key: String::new(), sasl_password: String::new(), ..self }
    }
}

pub(super) async fn upstream_add_get(signed: Signed) -> Result<Response, WebError> {
    may_change(&signed)?;
    let form = UpstreamForm { tls: false, compression: "lz4".into(), ..UpstreamForm::default() };
    let page = UpstreamFormPage {
        nav: Nav::of(&signed, "kafka"),
        edit: false,
        form,
        stored: None,
        errors: Errors::default(),
    };
    Ok(render(&page))
}

pub(super) async fn upstream_edit_get(
    signed: Signed,
    State(state): State<AppState>,
    Query(query): Query<NameQuery>,
) -> Result<Response, WebError> {
    may_change(&signed)?;
    let stored = ops::upstream_get(pool(&state), &query.name).await.map_err(|_| WebError::NotFound)?;
    let page = UpstreamFormPage {
        nav: Nav::of(&signed, "kafka"),
        edit: true,
        form: UpstreamForm::of(&stored),
        stored: Some(UpstreamRow::from(stored)),
        errors: Errors::default(),
    };
    Ok(render(&page))
}

pub(super) async fn upstream_add_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<UpstreamForm>,
) -> Response {
    upstream_post(signed, state, form, false).await
}

pub(super) async fn upstream_edit_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<UpstreamForm>,
) -> Response {
    upstream_post(signed, state, form, true).await
}

async fn upstream_post(signed: Signed, state: AppState, form: UpstreamForm, edit: bool) -> Response {
    if let Err(e) = may_change(&signed) {
        return done(Err(e));
    }
    let (pool, actor) = (pool(&state), signed.actor());
    let written = match edit {
        true => ops::upstream_edit(pool, form.request(), actor.as_str()).await,
        false => ops::upstream_add(pool, form.request(), actor.as_str()).await,
    };
    let saved =
        written.map(|view| format!("Upstream {}", view.name)).map_err(|e| NotSaved::of(e, UPSTREAM_FIELDS));
    answer(saved, edit, async |errors| {
        let stored = match edit {
            true => ops::upstream_get(pool, form.name.trim()).await.ok().map(UpstreamRow::from),
            false => None,
        };
        UpstreamFormPage {
            nav: Nav::of(&signed, "kafka"),
            edit,
            form: form.without_secrets(),
            stored,
            errors,
        }
    })
    .await
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct NameForm {
    name: String,
}

pub(super) async fn upstream_delete_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<NameForm>,
) -> Response {
    act_then_back(PAGE, may_change(&signed), async || {
        ops::upstream_del(pool(&state), &form.name, signed.actor().as_str()).await?;
        Ok(format!("Upstream {} deleted.", form.name))
    })
    .await
}

/// A metadata request to the upstream, answered or failed within seconds; the result comes back as the notice
/// or the error.
pub(super) async fn upstream_test_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<NameForm>,
) -> Response {
    done(
        async {
            may_change(&signed)?;
            let reached = ops::upstream_test(pool(&state), &form.name, signed.actor().as_str()).await?;
            Ok(format!("Connection test: {reached}."))
        }
        .await
        .map_err(|e| match e {
            WebError::BadRequest(why) => WebError::BadRequest(format!("Connection test: {why}")),
            other => other,
        }),
    )
}

// --- Uplink and downlink routes: one page and one set of handlers over the form of each kind ([`RouteForm`]).

/// What a route form's page says of its kind.
pub(super) struct RouteKind {
    /// `uplink`: the form is posted to `/kafka/uplinks/...`, and is `#uplink-form`.
    name: &'static str,
    /// What the notice and the edit page's title call a route of this kind.
    noun: &'static str,
    heading: &'static str,
    add: &'static str,
    /// What the route does with its upstream.
    upstream_use: &'static str,
    name_placeholder: &'static str,
}

/// The form of an uplink or a downlink route: the handlers below serve both, chosen by the router.
pub(super) trait RouteForm:
    serde::de::DeserializeOwned + Into<RouteFields> + Send + Sync + 'static
{
    const KIND: RouteKind;
    /// The fields of the form, beside which a refusal's reasons are shown.
    const FIELDS: &'static [&'static str];
    /// What `ops` adds or changes.
    type Request: Send;

    /// The form of a new route, with the defaults it starts from.
    fn new(upstream: String) -> Self;
    /// The form of a stored route; `None` for a route of the other kind.
    fn stored(spec: RouteSpec) -> Option<Self>;
    /// The request, or the reasons a field cannot make one (before `ops` sees it).
    fn request(&self) -> Result<Self::Request, Errors>;
    /// Adds the route, or changes the stored one (`edit`).
    fn write(
        pool: &sqlx::SqlitePool,
        request: Self::Request,
        edit: bool,
        actor: &str,
    ) -> impl Future<Output = Result<RouteView, OpsError>> + Send;
}

#[derive(askama::Template)]
#[template(path = "kafka_route_form.html")]
struct RouteFormPage {
    nav: Nav,
    edit: bool,
    kind: &'static RouteKind,
    form: RouteFields,
    upstreams: Vec<String>,
    errors: Errors,
}

impl RouteFormPage {
    fn new<F: RouteForm>(
        signed: &Signed,
        edit: bool,
        form: F,
        upstreams: Vec<String>,
        errors: Errors,
    ) -> Self {
        RouteFormPage {
            nav: Nav::of(signed, "kafka"),
            edit,
            kind: &F::KIND,
            form: form.into(),
            upstreams,
            errors,
        }
    }
}

/// The fields of the route's kind, each kind's in a template of its own.
pub(super) enum RouteFields {
    Uplink(UplinkForm),
    Downlink(DownlinkForm),
}

impl RouteFields {
    fn name(&self) -> &str {
        match self {
            RouteFields::Uplink(form) => &form.name,
            RouteFields::Downlink(form) => &form.name,
        }
    }

    fn upstream(&self) -> &str {
        match self {
            RouteFields::Uplink(form) => &form.upstream,
            RouteFields::Downlink(form) => &form.upstream,
        }
    }
}

async fn upstream_names(state: &AppState) -> Result<Vec<String>, WebError> {
    Ok(ops::upstream_list(pool(state)).await?.into_iter().map(|u| u.name).collect())
}

pub(super) async fn route_add_get<F: RouteForm>(
    signed: Signed,
    State(state): State<AppState>,
) -> Result<Response, WebError> {
    may_change(&signed)?;
    let upstreams = upstream_names(&state).await?;
    let form = F::new(upstreams.first().cloned().unwrap_or_default());
    Ok(render(&RouteFormPage::new(&signed, false, form, upstreams, Errors::default())))
}

/// A stored route's form; a route of the other kind is not found here.
pub(super) async fn route_edit_get<F: RouteForm>(
    signed: Signed,
    State(state): State<AppState>,
    Query(query): Query<NameQuery>,
) -> Result<Response, WebError> {
    may_change(&signed)?;
    let Some(form) = ops::route_get(pool(&state), &query.name).await.ok().and_then(|r| F::stored(r.spec))
    else {
        return Err(WebError::NotFound);
    };
    let upstreams = upstream_names(&state).await?;
    Ok(render(&RouteFormPage::new(&signed, true, form, upstreams, Errors::default())))
}

pub(super) async fn route_add_post<F: RouteForm>(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<F>,
) -> Response {
    route_post(signed, state, form, false).await
}

pub(super) async fn route_edit_post<F: RouteForm>(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<F>,
) -> Response {
    route_post(signed, state, form, true).await
}

async fn route_post<F: RouteForm>(signed: Signed, state: AppState, form: F, edit: bool) -> Response {
    if let Err(e) = may_change(&signed) {
        return done(Err(e));
    }
    let saved = async {
        let (request, actor) = (form.request()?, signed.actor());
        let written = F::write(pool(&state), request, edit, actor.as_str()).await;
        let view = written.map_err(|e| NotSaved::of(e, F::FIELDS))?;
        Ok(format!("{} {}", F::KIND.noun, view.name))
    }
    .await;
    answer(saved, edit, async |errors| {
        let upstreams = upstream_names(&state).await.unwrap_or_default();
        RouteFormPage::new(&signed, edit, form, upstreams, errors)
    })
    .await
}

// --- Uplink routes.

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct UplinkForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    upstream: String,
    #[serde(default)]
    filter: String,
    #[serde(default)]
    topic: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    format: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    lag_alarm: String,
}

impl RouteForm for UplinkForm {
    const KIND: RouteKind = RouteKind {
        name: "uplink",
        noun: "Route",
        heading: "Uplink route",
        add: "Add an uplink route",
        upstream_use: "forward to",
        name_placeholder: "plant",
    };
    const FIELDS: &'static [&'static str] =
        &["name", "upstream", "filter", "topic", "key", "format", "from", "lag_alarm"];
    type Request = AddRoute;

    fn new(upstream: String) -> UplinkForm {
        UplinkForm {
            upstream,
            key: "topic".into(),
            format: "raw".into(),
            from: "now".into(),
            lag_alarm: "60".into(),
            ..UplinkForm::default()
        }
    }

    fn stored(spec: RouteSpec) -> Option<UplinkForm> {
        let RouteSpec::Uplink(u) = spec else { return None };
        Some(UplinkForm {
            name: u.name,
            upstream: u.upstream,
            filter: u.filter,
            topic: u.topic,
            key: u.key.to_string(),
            format: u.format.as_str().to_owned(),
            from: "keep".into(),
            lag_alarm: u.lag_alarm_secs.to_string(),
        })
    }

    fn request(&self) -> Result<AddRoute, Errors> {
        let lag_alarm_secs = match self.lag_alarm.trim() {
            "" => None,
            secs => Some(secs.parse::<u64>().map_err(|_| {
                Errors::field("lag_alarm", format!("lag alarm {secs:?}: a number of seconds"))
            })?),
        };
        Ok(AddRoute {
            name: self.name.trim().to_owned(),
            upstream: self.upstream.clone(),
            filter: self.filter.trim().to_owned(),
            topic: self.topic.trim().to_owned(),
            key: self.key.trim().to_owned(),
            format: self.format.clone(),
            from: self.from.trim().to_owned(),
            lag_alarm_secs,
        })
    }

    async fn write(
        pool: &sqlx::SqlitePool,
        request: AddRoute,
        edit: bool,
        actor: &str,
    ) -> Result<RouteView, OpsError> {
        match edit {
            true => ops::route_edit(pool, request, actor).await,
            false => ops::route_add(pool, request, actor).await,
        }
    }
}

impl From<UplinkForm> for RouteFields {
    fn from(form: UplinkForm) -> RouteFields {
        RouteFields::Uplink(form)
    }
}

// --- Downlink routes.

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct DownlinkForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    upstream: String,
    #[serde(default)]
    topic: String,
    #[serde(default)]
    mqtt_topic: String,
    #[serde(default)]
    qos: String,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    as_user: String,
    #[serde(default)]
    group: String,
}

impl RouteForm for DownlinkForm {
    const KIND: RouteKind = RouteKind {
        name: "downlink",
        noun: "Downlink",
        heading: "Downlink route",
        add: "Add a downlink route",
        upstream_use: "read from",
        name_placeholder: "commands",
    };
    const FIELDS: &'static [&'static str] =
        &["name", "upstream", "topic", "mqtt_topic", "qos", "as_user", "group"];
    type Request = AddDownlink;

    fn new(upstream: String) -> DownlinkForm {
        DownlinkForm { upstream, qos: "1".into(), ..DownlinkForm::default() }
    }

    fn stored(spec: RouteSpec) -> Option<DownlinkForm> {
        let RouteSpec::Downlink(d) = spec else { return None };
        Some(DownlinkForm {
            name: d.name,
            upstream: d.upstream,
            topic: d.topic,
            mqtt_topic: d.mqtt_topic,
            qos: d.qos.to_string(),
            retain: d.retain,
            as_user: d.as_user.unwrap_or_default(),
            group: d.group.unwrap_or_default(),
        })
    }

    fn request(&self) -> Result<AddDownlink, Errors> {
        let qos = self.qos.trim().parse::<u8>().map_err(|_| Errors::field("qos", "QoS: use 0, 1 or 2"))?;
        let text = |t: &str| Some(t.trim().to_owned()).filter(|t| !t.is_empty());
        Ok(AddDownlink {
            name: self.name.trim().to_owned(),
            upstream: self.upstream.clone(),
            topic: self.topic.trim().to_owned(),
            mqtt_topic: self.mqtt_topic.trim().to_owned(),
            qos,
            retain: self.retain,
            as_user: text(&self.as_user),
            group: text(&self.group),
        })
    }

    async fn write(
        pool: &sqlx::SqlitePool,
        request: AddDownlink,
        edit: bool,
        actor: &str,
    ) -> Result<RouteView, OpsError> {
        match edit {
            true => ops::downlink_edit(pool, request, actor).await,
            false => ops::downlink_add(pool, request, actor).await,
        }
    }
}

impl From<DownlinkForm> for RouteFields {
    fn from(form: DownlinkForm) -> RouteFields {
        RouteFields::Downlink(form)
    }
}

// --- Pause, resume, delete (uplinks and downlinks alike).

pub(super) async fn route_pause_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<NameForm>,
) -> Response {
    act_then_back(PAGE, may_change(&signed), async || {
        ops::route_pause(pool(&state), &form.name, signed.actor().as_str()).await?;
        Ok(format!("Route {} paused: it sends nothing more; its backlog waits in the journal.", form.name))
    })
    .await
}

pub(super) async fn route_resume_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<NameForm>,
) -> Response {
    act_then_back(PAGE, may_change(&signed), async || {
        ops::route_resume(pool(&state), &form.name, signed.actor().as_str()).await?;
        Ok(format!("Route {} resumed.", form.name))
    })
    .await
}

pub(super) async fn route_delete_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<NameForm>,
) -> Response {
    act_then_back(PAGE, may_change(&signed), async || {
        ops::route_del(pool(&state), &form.name, signed.actor().as_str()).await?;
        Ok(format!("Route {} deleted; its journal cursor is released.", form.name))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_kafka_the_page_says_so_and_the_navigation_stays() {
        let nav = Nav { user: Some("root".into()), admin: true, csrf: "t".into(), page: "kafka" };
        let html = askama::Template::render(&KafkaPage::not_built(nav, KafkaQuery::default())).unwrap();
        assert!(html.contains(r#"id="not-built""#) && html.contains("not in this build"), "{html}");
        assert!(html.contains(r#"href="/topics""#) && html.contains(r#"aria-current="page">Kafka"#));
        assert!(!html.contains("Add an upstream") && !html.contains(r#"id="kafka-status""#));
    }
}
