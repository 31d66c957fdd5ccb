//! Clients: online clients and offline persistent sessions, searchable, with their connection, subscriptions and
//! queues; an administrator may disconnect a client or delete an offline session.

use axum::Form;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};

use super::session::Signed;
use super::{AppState, Nav, WebError, render};
use crate::mqtt::codec::ProtocolVersion;

/// Sessions listed at once; beyond it, search.
const LIMIT: usize = 1_000;

#[derive(askama::Template)]
#[template(path = "clients.html")]
struct ClientsPage {
    nav: Nav,
    notice: Option<String>,
    error: Option<String>,
    q: String,
    clients: Vec<Row>,
    online: usize,
    offline: usize,
    truncated: bool,
    limit: usize,
}

struct Row {
    client_id: String,
    user: String,
    online: bool,
    state: &'static str,
    peer: String,
    protocol: &'static str,
    since: String,
    keep_alive: String,
    subscriptions: Vec<String>,
    queued: usize,
    spilled: u64,
    in_flight: usize,
}

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct ClientsQuery {
    #[serde(default)]
    q: String,
    notice: Option<String>,
    error: Option<String>,
}

pub(super) async fn clients_get(
    signed: Signed,
    State(state): State<AppState>,
    Query(query): Query<ClientsQuery>,
) -> Result<Response, WebError> {
    let found = state
        .inner
        .broker
        .clients(query.q.trim(), LIMIT + 1)
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?;
    let truncated = found.len() > LIMIT;
    let clients: Vec<Row> = found
        .into_iter()
        .take(LIMIT)
        .map(|c| Row {
            state: if c.online { "online" } else { "offline" },
            online: c.online,
            user: c.username.unwrap_or_default(),
            peer: c.peer.unwrap_or_default(),
            protocol: match c.protocol {
                Some(ProtocolVersion::V5) => "5.0",
                Some(ProtocolVersion::V3_1_1) => "3.1.1",
                Some(_) => "3.1",
                None => "",
            },
            since: c.since.map(crate::timefmt::format).unwrap_or_default(),
            keep_alive: c.keep_alive.map(|k| format!("{k} s")).unwrap_or_default(),
            subscriptions: c.subscriptions,
            queued: c.queued,
            spilled: c.spilled,
            in_flight: c.in_flight,
            client_id: c.client_id,
        })
        .collect();
    let online = clients.iter().filter(|c| c.online).count();
    let page = ClientsPage {
        nav: Nav::of(&signed, "clients"),
        notice: query.notice,
        error: query.error,
        q: query.q,
        offline: clients.len() - online,
        online,
        clients,
        truncated,
        limit: LIMIT,
    };
    Ok(render(&page))
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct ClientForm {
    client: String,
}

pub(super) async fn disconnect_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<ClientForm>,
) -> Response {
    act(&signed, &state, &form.client, "client.disconnect", async {
        let done = state.inner.broker.kick(&form.client).await.unwrap_or(false);
        if done {
            Ok(format!("{} is disconnected.", form.client))
        } else {
            Err(format!("{} is not connected.", form.client))
        }
    })
    .await
}

pub(super) async fn delete_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<ClientForm>,
) -> Response {
    act(&signed, &state, &form.client, "session.delete", async {
        let done = state.inner.broker.drop_session(&form.client).await.unwrap_or(false);
        if done {
            Ok(format!("The session of {} is deleted.", form.client))
        } else {
            Err(format!("{} has no offline session (disconnect it first if it is connected).", form.client))
        }
    })
    .await
}

/// Runs an administrator's action on a client, audits it, and goes back to the list with its outcome.
async fn act(
    signed: &Signed,
    state: &AppState,
    client: &str,
    action: &str,
    run: impl Future<Output = Result<String, String>>,
) -> Response {
    if let Err(e) = signed.require_admin() {
        return e.into_response();
    }
    let (key, text) = match run.await {
        Ok(notice) => {
            if let Err(e) =
                crate::store::audit(state.ops().security().pool(), signed.actor().as_str(), action, client)
                    .await
            {
                tracing::warn!("audit log: {e}");
            }
            ("notice", notice)
        }
        Err(error) => ("error", error),
    };
    let query = form_urlencoded::Serializer::new(String::new()).append_pair(key, &text).finish();
    Redirect::to(&format!("/clients?{query}")).into_response()
}
