//! The audit log, filterable and paged (newest first, keyset-paged on the entry id).

use axum::extract::{Query, State};
use axum::response::Response;

use super::session::Signed;
use super::{AppState, Nav, WebError, render};

const PAGE: i64 = 100;

#[derive(askama::Template)]
#[template(path = "audit.html")]
struct AuditPage {
    nav: Nav,
    q: String,
    entries: Vec<Entry>,
    next: Option<i64>,
}

struct Entry {
    time: String,
    actor: String,
    action: String,
    detail: String,
}

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct AuditQuery {
    #[serde(default)]
    q: String,
    before: Option<i64>,
}

pub(super) async fn audit_get(
    signed: Signed,
    State(state): State<AppState>,
    Query(query): Query<AuditQuery>,
) -> Result<Response, WebError> {
    let filter = Some(query.q.trim()).filter(|q| !q.is_empty());
    let rows = crate::store::config_db::audit_page(state.ops().security().pool(), filter, query.before, PAGE)
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?;
    let next = (rows.len() as i64 == PAGE).then(|| rows.last().map(|(id, _)| *id)).flatten();
    let entries = rows
        .into_iter()
        .map(|(_, e)| Entry {
            time: crate::timefmt::format(e.ts),
            actor: e.actor,
            action: e.action,
            detail: e.detail,
        })
        .collect();
    Ok(render(&AuditPage { nav: Nav::of(&signed, "audit"), q: query.q, entries, next }))
}
