//! History: a filter and a time range give a keyset-paged table, a chart of numeric values (uPlot), and exports
//! to CSV or JSON lines streamed page by page (constant memory, whatever the size; the browser shows the
//! download's progress).

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::session::Signed;
use super::topics::{payload_view, shown};
use super::{AppState, Nav, WebError, render};
use crate::ops::history::Selection;
use crate::store::export::{self, Format};
use crate::store::history::{self, HistoryQuery, Order};

const PAGE: usize = 100;
/// Points a chart is drawn from at most.
const MAX_POINTS: usize = 20_000;
/// Messages per page of an export: each page is one chunk of the response.
const EXPORT_PAGE: usize = 1_000;

#[derive(Debug, Default, Clone, serde::Deserialize)]
pub(super) struct HistoryParams {
    #[serde(default = "all")]
    filter: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    field: String,
    #[serde(default)]
    view: String,
    after: Option<i64>,
    #[serde(default)]
    format: String,
}

fn all() -> String {
    "#".to_owned()
}

impl HistoryParams {
    /// The query these parameters select (`since` defaults to the last hour).
    fn query(&self) -> Result<HistoryQuery, WebError> {
        let text = |t: &str| (!t.trim().is_empty()).then(|| t.trim().to_owned());
        let since = text(&self.since).or_else(|| Some("1h".to_owned()));
        let selection = Selection { filter: self.filter.clone(), since, until: text(&self.until) };
        let mut query = selection.query().map_err(|e| WebError::BadRequest(e.to_string()))?;
        if !crate::mqtt::codec::topic::valid_topic_filter(&query.filter) {
            return Err(WebError::BadRequest(format!("{:?} is not a valid topic filter.", query.filter)));
        }
        query.after = self.after;
        Ok(query)
    }

    /// These parameters (without the page position) as a query string, for links.
    fn query_string(&self) -> String {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("filter", &self.filter)
            .append_pair("since", &self.since)
            .append_pair("until", &self.until)
            .append_pair("field", &self.field)
            .append_pair("view", &self.view)
            .finish()
    }

    fn pointer(&self) -> Option<&str> {
        Some(self.field.trim()).filter(|f| f.starts_with('/'))
    }
}

#[derive(askama::Template)]
#[template(path = "history.html")]
struct HistoryPage {
    nav: Nav,
    error: Option<String>,
    filter: String,
    since: String,
    until: String,
    field: String,
    view: String,
    query: String,
    has_chart: bool,
    rows: Vec<Row>,
    next: Option<i64>,
}

struct Row {
    time: String,
    topic: String,
    qos: u8,
    client: String,
    payload: String,
}

fn journal(state: &AppState) -> Result<&sqlx::SqlitePool, WebError> {
    match &state.inner.journal {
        Some(journal) => Ok(journal.pool()),
        None => Err(WebError::BadRequest(
            "The journal is off ([journal] durability = \"off\"): there is no history.".into(),
        )),
    }
}

pub(super) async fn history_get(
    signed: Signed,
    State(state): State<AppState>,
    Query(params): Query<HistoryParams>,
) -> Result<Response, WebError> {
    let pool = journal(&state)?;
    let view = payload_view(&params.view);
    let (rows, next, error) = match params.query() {
        Ok(mut query) => {
            query.limit = PAGE;
            let page = history::query(pool, &query).await.map_err(|e| WebError::Internal(e.to_string()))?;
            let rows = page
                .messages
                .iter()
                .map(|m| Row {
                    time: crate::timefmt::format(m.ts),
                    topic: m.topic.clone(),
                    qos: m.qos,
                    client: m.client_id.clone().unwrap_or_default(),
                    payload: shown(m, view),
                })
                .collect();
            (rows, page.next, None)
        }
        Err(WebError::BadRequest(why)) => (Vec::new(), None, Some(why)),
        Err(other) => return Err(other),
    };
    let page = HistoryPage {
        nav: Nav::of(&signed, "history"),
        has_chart: error.is_none(),
        error,
        query: params.query_string(),
        filter: params.filter,
        since: params.since,
        until: params.until,
        field: params.field,
        view: if params.view.is_empty() { "text".to_owned() } else { params.view },
        rows,
        next,
    };
    Ok(render(&page))
}

/// The chart's data: times (unix seconds, as uPlot takes them) and values.
#[derive(Debug, serde::Serialize)]
pub(super) struct Series {
    t: Vec<f64>,
    v: Vec<f64>,
}

pub(super) async fn series_get(
    _signed: Signed,
    State(state): State<AppState>,
    Query(params): Query<HistoryParams>,
) -> Result<Json<Series>, WebError> {
    let pool = journal(&state)?;
    let query = params.query()?;
    let points = history::series(pool, &query, params.pointer(), MAX_POINTS)
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?;
    let (t, v) = points.into_iter().map(|(ts, value)| (ts as f64 / 1000.0, value)).unzip();
    Ok(Json(Series { t, v }))
}

pub(super) async fn export_get(
    _signed: Signed,
    State(state): State<AppState>,
    Query(params): Query<HistoryParams>,
) -> Result<Response, WebError> {
    let pool = journal(&state)?.clone();
    let mut query = params.query()?;
    query.order = Order::OldestFirst;
    query.limit = EXPORT_PAGE;
    let (format, content_type, name) = match params.format.as_str() {
        "jsonl" => (Format::Jsonl, "application/x-ndjson", "weir-history.jsonl"),
        _ => (Format::Csv, "text/csv; charset=utf-8", "weir-history.csv"),
    };
    let view = payload_view(&params.view);
    let first = (format == Format::Csv).then(|| format!("{}\n", export::CSV_HEADER).into_bytes());
    // One page per chunk: (the query for the next page, or None when done).
    let pages = futures_util::stream::unfold(Some(query), move |state| {
        let pool = pool.clone();
        async move {
            let mut query = state?;
            match history::query(&pool, &query).await {
                Ok(page) => {
                    let mut chunk = Vec::new();
                    if let Err(e) = export::write_messages(&mut chunk, &page.messages, format, view) {
                        return Some((Err(std::io::Error::other(e)), None));
                    }
                    let next = page.next.map(|after| {
                        query.after = Some(after);
                        query
                    });
                    Some((Ok(chunk), next))
                }
                Err(e) => {
                    tracing::error!("console export: {e}");
                    Some((Err(std::io::Error::other(e.to_string())), None))
                }
            }
        }
    });
    let stream = futures_util::StreamExt::chain(futures_util::stream::iter(first.map(Ok)), pages);
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_DISPOSITION,
            HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
                .map_err(|e| WebError::Internal(e.to_string()))?,
        ),
    ];
    // Fused: a layer (compression) may poll once more after the end.
    Ok((headers, Body::from_stream(futures_util::StreamExt::fuse(stream))).into_response())
}
