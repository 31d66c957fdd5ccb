//! Topics: the topic tree (from the journal's catalogue, one level at a time, searchable), one topic's retained
//! and last values with its rate, a live view of any filter over server-sent events, publishing, and clearing a
//! retained value.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Form;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use futures_util::Stream;

use super::session::Signed;
use super::{AppState, Nav, WebError, render};
use crate::mqtt::broker::{LinkOptions, Message};
use crate::mqtt::codec::{QoS, topic};
use crate::store::history::{self, HistoryQuery, PayloadView, StoredMessage};
use crate::store::{self, topics};

/// Levels listed at once; beyond it, search.
const LEVEL_LIMIT: usize = 500;
/// Live views open at once: each holds a small queue in the broker.
const MAX_LIVE: usize = 16;
/// Deliveries a live view may fall behind by before the oldest are dropped (a browser is never waited for).
const LIVE_QUEUE: usize = 256;

#[derive(askama::Template)]
#[template(path = "topics.html")]
struct TopicsPage {
    nav: Nav,
    q: String,
    total: i64,
    found: Vec<String>,
    prefix: String,
    live_filter: String,
    crumbs: Vec<(String, String)>,
    children: Vec<topics::Child>,
    more: bool,
}

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct TopicsQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    prefix: String,
}

fn journal(state: &AppState) -> Result<&sqlx::SqlitePool, WebError> {
    match &state.inner.journal {
        Some(journal) => Ok(journal.pool()),
        None => Err(WebError::BadRequest(
            "The journal is off ([journal] durability = \"off\"): there is no topic history.".into(),
        )),
    }
}

pub(super) async fn topics_get(
    signed: Signed,
    State(state): State<AppState>,
    Query(query): Query<TopicsQuery>,
) -> Result<Response, WebError> {
    let pool = journal(&state)?;
    let prefix = query.prefix.trim_end_matches('/').to_owned();
    let q = query.q.trim().to_owned();
    let found =
        if q.is_empty() { Vec::new() } else { topics::search(pool, &q, 500).await.map_err(internal)? };
    let (children, more) = if q.is_empty() {
        topics::children(pool, &prefix, LEVEL_LIMIT).await.map_err(internal)?
    } else {
        (Vec::new(), false)
    };
    let mut crumbs = Vec::new();
    let mut path = String::new();
    for level in prefix.split('/').filter(|_| !prefix.is_empty()) {
        path = if path.is_empty() { level.to_owned() } else { format!("{path}/{level}") };
        crumbs.push((level.to_owned(), path.clone()));
    }
    let page = TopicsPage {
        nav: Nav::of(&signed, "topics"),
        total: topics::count(pool).await.map_err(internal)?,
        q,
        found,
        live_filter: format!("{prefix}/#"),
        prefix,
        crumbs,
        children,
        more,
    };
    Ok(render(&page))
}

#[derive(askama::Template)]
#[template(path = "topic.html")]
struct TopicPage {
    nav: Nav,
    notice: Option<String>,
    topic: String,
    count: i64,
    last_seen: String,
    rate: String,
    retained: Option<String>,
    last: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct TopicQuery {
    topic: String,
    #[serde(default)]
    view: String,
    notice: Option<String>,
}

pub(super) async fn view_get(
    signed: Signed,
    State(state): State<AppState>,
    Query(query): Query<TopicQuery>,
) -> Result<Response, WebError> {
    let pool = journal(&state)?;
    let view = payload_view(&query.view);
    let known = topics::topic(pool, &query.topic).await.map_err(internal)?;
    let last = match known {
        Some((id, _)) => history::message(pool, id).await.map_err(internal)?,
        None => None,
    };
    let retained = history::retained(pool, &query.topic).await.map_err(internal)?;
    let minute = HistoryQuery {
        since: Some(crate::timefmt::now_ms() - 60_000),
        limit: 10_000,
        ..HistoryQuery::new(&query.topic)
    };
    let recent = if topic::valid_topic_name(&query.topic) {
        history::query(pool, &minute).await.map_err(internal)?.messages.len()
    } else {
        0
    };
    let page = TopicPage {
        nav: Nav::of(&signed, "topics"),
        notice: query.notice,
        count: known.map_or(0, |(_, n)| n),
        last_seen: last.as_ref().map_or_else(|| "never".to_owned(), |m| crate::timefmt::format(m.ts)),
        rate: if recent >= 10_000 { "10,000 or more".to_owned() } else { recent.to_string() },
        retained: retained.as_ref().map(|m| shown(m, view)),
        last: last.as_ref().map(|m| shown(m, view)),
        topic: query.topic,
    };
    Ok(render(&page))
}

/// A payload as the operator asked to see it: text, indented JSON or hex.
pub(super) fn shown(m: &StoredMessage, view: PayloadView) -> String {
    match m.payload_as(view) {
        serde_json::Value::String(s) => s,
        other => serde_json::to_string_pretty(&other).unwrap_or_default(),
    }
}

pub(super) fn payload_view(name: &str) -> PayloadView {
    match name {
        "json" => PayloadView::Json,
        "hex" => PayloadView::Hex,
        _ => PayloadView::Text,
    }
}

#[derive(askama::Template)]
#[template(path = "live.html")]
struct LivePage {
    nav: Nav,
    filter: String,
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct LiveQuery {
    filter: String,
}

pub(super) async fn live_get(signed: Signed, Query(query): Query<LiveQuery>) -> Result<Response, WebError> {
    if !topic::valid_topic_filter(&query.filter) {
        return Err(WebError::BadRequest(format!("{:?} is not a valid topic filter.", query.filter)));
    }
    Ok(render(&LivePage { nav: Nav::of(&signed, "topics"), filter: query.filter }))
}

/// Live views open now.
#[derive(Debug, Default)]
pub(super) struct LiveCount(AtomicUsize);

/// Held by an open live view; gives its place back when the stream ends.
struct LivePlace(Arc<super::Shared>);

impl Drop for LivePlace {
    fn drop(&mut self) {
        self.0.live.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The live view's events: every message on the filter, as JSON with a base64 payload, from an in-process link
/// that drops (and counts) what a slow browser cannot take. Ends when the browser goes or the console stops.
pub(super) async fn stream_get(
    _signed: Signed,
    State(state): State<AppState>,
    Query(query): Query<LiveQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, WebError> {
    if !topic::valid_topic_filter(&query.filter) {
        return Err(WebError::BadRequest(format!("{:?} is not a valid topic filter.", query.filter)));
    }
    if state.inner.live.0.fetch_add(1, Ordering::Relaxed) >= MAX_LIVE {
        state.inner.live.0.fetch_sub(1, Ordering::Relaxed);
        return Err(WebError::BadRequest(format!("At most {MAX_LIVE} live views at once; close one.")));
    }
    let place = LivePlace(state.inner.clone());
    let name = format!("console-live-{}", &super::session::random_token()?[..16]);
    let options = LinkOptions { capacity: LIVE_QUEUE, lossless: false };
    let link = state.inner.broker.link(&name, options).await.map_err(internal)?;
    link.subscribe(&query.filter, QoS::AtMostOnce).await.map_err(internal)?;
    let stop = state.inner.stop.clone();
    let stream = futures_util::stream::unfold((link, stop, place), |(link, mut stop, place)| async move {
        let delivery = tokio::select! {
            delivery = link.recv() => delivery?,
            _ = stop.stopped() => return None,
        };
        let m = &delivery.message;
        let data = serde_json::json!({
            "ts": crate::timefmt::now_ms(),
            "topic": &*m.topic,
            "qos": delivery.qos as u8,
            "retain": delivery.retain,
            "payload": <base64ct::Base64 as base64ct::Encoding>::encode_string(&m.payload),
        });
        Some((Ok(Event::default().data(data.to_string())), (link, stop, place)))
    });
    Ok(Sse::new(futures_util::StreamExt::fuse(stream)).keep_alive(KeepAlive::default()))
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct Publish {
    topic: String,
    #[serde(default)]
    payload: String,
    qos: u8,
    #[serde(default)]
    retain: bool,
}

pub(super) async fn publish_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<Publish>,
) -> Response {
    let retain = form.retain;
    let result = publish(&signed, &state, &form.topic, form.payload.into_bytes(), form.qos, retain).await;
    back(&form.topic, result.map(|()| format!("Published to {}.", form.topic)))
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct Clear {
    topic: String,
}

pub(super) async fn clear_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<Clear>,
) -> Response {
    let result = publish(&signed, &state, &form.topic, Vec::new(), 1, true).await;
    back(&form.topic, result.map(|()| format!("The retained value of {} is cleared.", form.topic)))
}

/// Publishes as the console (an in-process link), audited under the operator's name.
async fn publish(
    signed: &Signed,
    state: &AppState,
    topic_name: &str,
    payload: Vec<u8>,
    qos: u8,
    retain: bool,
) -> Result<(), WebError> {
    signed.require_admin()?;
    if !topic::valid_topic_name(topic_name) || topic_name.starts_with('$') {
        return Err(WebError::BadRequest(format!(
            "{topic_name:?} is not a topic the console may publish to."
        )));
    }
    let qos = match qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => return Err(WebError::BadRequest("QoS is 0, 1 or 2.".into())),
    };
    let name = format!("console-publish-{}", &super::session::random_token()?[..16]);
    let link = state.inner.broker.link(&name, LinkOptions::default()).await.map_err(internal)?;
    link.publish(Message::new(topic_name, payload, qos, retain)).await.map_err(internal)?;
    let action = if retain { "topic.publish_retained" } else { "topic.publish" };
    store::audit(state.ops().security().pool(), signed.actor().as_str(), action, topic_name)
        .await
        .map_err(internal)?;
    Ok(())
}

fn back(topic_name: &str, result: Result<String, WebError>) -> Response {
    match result {
        Ok(notice) => {
            let query = form_urlencoded::Serializer::new(String::new())
                .append_pair("topic", topic_name)
                .append_pair("notice", &notice)
                .finish();
            Redirect::to(&format!("/topics/view?{query}")).into_response()
        }
        Err(e) => e.into_response(),
    }
}

fn internal(e: impl std::fmt::Display) -> WebError {
    WebError::Internal(e.to_string())
}
