//! Presence: uptime per device, the timeline of connects, disconnects and losses, and the birth and death rules.

use axum::Form;
use axum::extract::{Query, State};
use axum::response::Response;

use super::session::Signed;
use super::{AppState, Nav, WebError, act_then_back, render};
use crate::ops::presence::{self, NewPresenceRule, PresenceRuleEntry, PresenceSelection};

#[derive(askama::Template)]
#[template(path = "presence.html")]
struct PresencePage {
    nav: Nav,
    notice: Option<String>,
    error: Option<String>,
    client: String,
    since: String,
    uptime: Vec<UptimeRow>,
    events: Vec<EventRow>,
    rules: Vec<PresenceRuleEntry>,
}

struct UptimeRow {
    client_id: String,
    percent: String,
    online: String,
    connects: u64,
    losses: u64,
    now: &'static str,
}

struct EventRow {
    time: String,
    client: String,
    user: String,
    peer: String,
    state: String,
    reason: String,
}

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct PresenceQuery {
    #[serde(default)]
    client: String,
    #[serde(default)]
    since: String,
    notice: Option<String>,
    error: Option<String>,
}

pub(super) async fn presence_get(
    signed: Signed,
    State(state): State<AppState>,
    Query(query): Query<PresenceQuery>,
) -> Result<Response, WebError> {
    let rules = state.ops().list_presence_rules().await?;
    let selection = PresenceSelection {
        client: Some(query.client.trim().to_owned()).filter(|c| !c.is_empty()),
        since: Some(query.since.trim().to_owned()).filter(|s| !s.is_empty()).or_else(|| Some("24h".into())),
        until: None,
    };
    let (uptime, events, error) = match &state.inner.journal {
        None => {
            (Vec::new(), Vec::new(), Some("The journal is off: there is no presence history.".to_owned()))
        }
        Some(journal) => {
            let read = async {
                Ok::<_, crate::ops::OpsError>((
                    presence::uptime(journal.pool(), &selection).await?,
                    presence::history(journal.pool(), &selection, 500, false).await?,
                ))
            };
            match read.await {
                Ok((uptime, events)) => (uptime, events, None),
                Err(crate::ops::OpsError::Invalid(why)) => (Vec::new(), Vec::new(), Some(why)),
                Err(e) => return Err(e.into()),
            }
        }
    };
    let uptime = uptime
        .into_iter()
        .map(|u| UptimeRow {
            percent: format!("{:.1} %", u.fraction * 100.0),
            online: format!("{} min", u.online_ms / 60_000),
            connects: u.connects,
            losses: u.losses,
            now: if u.online_now { "online" } else { "offline" },
            client_id: u.client_id,
        })
        .collect();
    let events = events
        .into_iter()
        .map(|e| EventRow {
            time: crate::timefmt::format(e.ts),
            client: e.client_id,
            user: e.username.unwrap_or_default(),
            peer: e.peer.unwrap_or_default(),
            state: e.state,
            reason: e.reason.unwrap_or_default(),
        })
        .collect();
    let page = PresencePage {
        nav: Nav::of(&signed, "presence"),
        notice: query.notice,
        error: query.error.or(error),
        client: query.client,
        since: query.since,
        uptime,
        events,
        rules,
    };
    Ok(render(&page))
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct AddRule {
    matcher: String,
    event: String,
    topic: String,
    #[serde(default)]
    payload: String,
    qos: u8,
    #[serde(default)]
    retain: bool,
}

pub(super) async fn rule_add_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<AddRule>,
) -> Response {
    act_then_back(PAGE, signed.require_admin(), async || {
        let rule = NewPresenceRule {
            matcher: form.matcher.trim().to_owned(),
            event: form.event,
            topic: form.topic.trim().to_owned(),
            payload: form.payload,
            qos: form.qos,
            retain: form.retain,
        };
        let id = state.ops().add_presence_rule(&rule, &signed.actor()).await?;
        Ok(format!("Rule #{id} added; it applies within a second."))
    })
    .await
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct DeleteRule {
    id: i64,
}

pub(super) async fn rule_delete_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<DeleteRule>,
) -> Response {
    act_then_back(PAGE, signed.require_admin(), async || {
        state.ops().delete_presence_rule(form.id, &signed.actor()).await?;
        Ok(format!("Rule #{} deleted.", form.id))
    })
    .await
}

/// Where a change goes back to, with its notice or the error of what was refused.
const PAGE: &str = "/presence";
