//! Settings: the effective configuration and where each value came from (the file or the default). Read-only.

use axum::extract::State;
use axum::response::Response;

use super::session::Signed;
use super::{AppState, Nav, render};
use crate::config::Setting;

#[derive(askama::Template)]
#[template(path = "settings.html")]
struct SettingsPage<'a> {
    nav: Nav,
    file: Option<String>,
    settings: &'a [Setting],
}

pub(super) async fn settings_get(signed: Signed, State(state): State<AppState>) -> Response {
    let file = state.inner.config_file.as_ref().map(|p| p.display().to_string());
    render(&SettingsPage { nav: Nav::of(&signed, "settings"), file, settings: &state.inner.settings })
}
