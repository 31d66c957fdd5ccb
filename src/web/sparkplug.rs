//! The Sparkplug page: groups, edge nodes (online, bdSeq, sequence gaps), devices and metrics with their
//! values, types, timestamps and staleness, host applications' STATE, malformed payloads; a confirmed rebirth
//! request per node; a metric's series charted from the history.

use axum::Form;
use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};

use super::session::Signed;
use super::{AppState, Nav, WebError, render};
use crate::ops::Actor;
use crate::sparkplug::state::{MetricState, Tracker};
use crate::sparkplug::{SeriesQuery, Sparkplug};

const MAX_POINTS: usize = 5_000;

#[derive(askama::Template)]
#[template(path = "sparkplug.html")]
struct SparkplugPage {
    nav: Nav,
    notice: Option<String>,
    nodes: Vec<NodeRow>,
    hosts: Vec<(String, bool, String)>,
    malformed: u64,
    errors: Vec<(String, String, String)>,
}

struct NodeRow {
    group: String,
    node: String,
    online: bool,
    changed: String,
    bd_seq: String,
    seq: String,
    gaps: u64,
    last_gap: String,
    births: u64,
    deaths: u64,
    stale_deaths: u64,
    unresolved: u64,
    metrics: Vec<MetricRow>,
    devices: Vec<DeviceRow>,
}

struct DeviceRow {
    name: String,
    online: bool,
    metrics: Vec<MetricRow>,
}

struct MetricRow {
    name: String,
    alias: String,
    datatype: &'static str,
    value: String,
    time: String,
    stale: bool,
    historical: bool,
    chart: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct PageQuery {
    notice: Option<String>,
}

pub(super) async fn sparkplug_get(
    signed: Signed,
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> Result<Response, WebError> {
    let tracker = service(&state).map(Sparkplug::snapshot).unwrap_or_default();
    Ok(render(&page(Nav::of(&signed, "sparkplug"), q.notice, &tracker)))
}

fn page(nav: Nav, notice: Option<String>, t: &Tracker) -> SparkplugPage {
    let mut nodes = Vec::new();
    for (group, group_nodes) in &t.groups {
        for (name, n) in group_nodes {
            let link = |device: Option<&str>, metric: &str| {
                let mut s = form_urlencoded::Serializer::new(String::new());
                s.append_pair("group", group).append_pair("node", name).append_pair("metric", metric);
                if let Some(d) = device {
                    s.append_pair("device", d);
                }
                s.finish()
            };
            nodes.push(NodeRow {
                group: group.clone(),
                node: name.clone(),
                online: n.online,
                changed: crate::timefmt::format(n.changed_at),
                bd_seq: n.bd_seq.map_or("-".into(), |b| b.to_string()),
                seq: n.last_seq.map_or("-".into(), |s| s.to_string()),
                gaps: n.gaps,
                last_gap: n.last_gap.map_or(String::new(), |g| {
                    format!("expected {}, got {} at {}", g.expected, g.got, crate::timefmt::format(g.at))
                }),
                births: n.births,
                deaths: n.deaths,
                stale_deaths: n.stale_deaths,
                unresolved: n.unresolved,
                metrics: n.metrics.iter().map(|(m, s)| metric_row(m, s, link(None, m))).collect(),
                devices: n
                    .devices
                    .iter()
                    .map(|(d, dev)| DeviceRow {
                        name: d.clone(),
                        online: dev.online,
                        metrics: dev
                            .metrics
                            .iter()
                            .map(|(m, s)| metric_row(m, s, link(Some(d), m)))
                            .collect(),
                    })
                    .collect(),
            });
        }
    }
    let hosts = t
        .hosts
        .iter()
        .map(|(h, s)| (h.clone(), s.online, s.timestamp.map_or(String::new(), |ts| ts.to_string())))
        .collect();
    let errors = t
        .errors
        .iter()
        .rev()
        .map(|e| (crate::timefmt::format(e.at), e.topic.clone(), e.error.clone()))
        .collect();
    SparkplugPage { nav, notice, nodes, hosts, malformed: t.malformed, errors }
}

fn metric_row(name: &str, m: &MetricState, query: String) -> MetricRow {
    MetricRow {
        name: name.to_owned(),
        alias: m.alias.map_or(String::new(), |a| a.to_string()),
        datatype: m.datatype.name(),
        value: m.value.display(),
        time: m.timestamp.and_then(|t| i64::try_from(t).ok()).map_or(String::new(), crate::timefmt::format),
        stale: m.stale,
        historical: m.is_historical,
        chart: m.value.number().map(|_| query),
    }
}

#[derive(askama::Template)]
#[template(path = "sparkplug_metric.html")]
struct MetricPage {
    nav: Nav,
    title: String,
    query: String,
}

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct MetricParams {
    group: String,
    node: String,
    device: Option<String>,
    metric: String,
    /// Unix ms.
    since: Option<i64>,
    until: Option<i64>,
}

impl MetricParams {
    fn query(&self) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        s.append_pair("group", &self.group)
            .append_pair("node", &self.node)
            .append_pair("metric", &self.metric);
        if let Some(d) = &self.device {
            s.append_pair("device", d);
        }
        for (key, value) in [("since", self.since), ("until", self.until)] {
            if let Some(v) = value {
                s.append_pair(key, &v.to_string());
            }
        }
        s.finish()
    }
}

/// A metric's chart (the history page's chart script draws `/sparkplug/series`).
pub(super) async fn metric_get(signed: Signed, Query(p): Query<MetricParams>) -> Result<Response, WebError> {
    let mut title = format!("{} / {}", p.group, p.node);
    if let Some(d) = &p.device {
        title = format!("{title} / {d}");
    }
    title = format!("{title}: {}", p.metric);
    Ok(render(&MetricPage { nav: Nav::of(&signed, "sparkplug"), title, query: p.query() }))
}

#[derive(serde::Serialize)]
pub(super) struct Series {
    t: Vec<f64>,
    v: Vec<f64>,
}

pub(super) async fn series_get(
    _signed: Signed,
    State(state): State<AppState>,
    Query(p): Query<MetricParams>,
) -> Result<Json<Series>, WebError> {
    let Some(service) = service(&state) else { return Ok(Json(Series { t: Vec::new(), v: Vec::new() })) };
    let q = SeriesQuery {
        group: p.group,
        node: p.node,
        device: p.device.filter(|d| !d.is_empty()),
        metric: p.metric,
        since: p.since,
        until: p.until,
        max_points: MAX_POINTS,
    };
    let points = service.series(&q).await.map_err(|e| WebError::Internal(e.to_string()))?;
    let (t, v) = points.into_iter().map(|(ts, value)| (ts as f64 / 1000.0, value)).unzip();
    Ok(Json(Series { t, v }))
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct Rebirth {
    group: String,
    node: String,
    /// The confirmation checkbox: a rebirth makes the node republish everything, so it is never one click.
    confirm: Option<String>,
}

pub(super) async fn rebirth_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<Rebirth>,
) -> Result<Response, WebError> {
    signed.require_admin()?;
    if form.confirm.as_deref() != Some("yes") {
        return Err(WebError::BadRequest("Tick the confirmation to send a rebirth request.".into()));
    }
    let service = service(&state).ok_or(WebError::NotFound)?;
    let actor = Actor::new(format!("console:{}", signed.user));
    state.ops().sparkplug_rebirth(service, &form.group, &form.node, &actor).await?;
    let notice = format!("Rebirth requested from {}/{}.", form.group, form.node);
    let query = form_urlencoded::Serializer::new(String::new()).append_pair("notice", &notice).finish();
    Ok(Redirect::to(&format!("/sparkplug?{query}")).into_response())
}

fn service(state: &AppState) -> Option<&Sparkplug> {
    state.inner.sparkplug.as_ref()
}
