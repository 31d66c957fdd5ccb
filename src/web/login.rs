//! Signing in and out.

use axum::Form;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::serve::Peer;
use super::{AppState, Nav, render};
use crate::security::PasswordRefusal;

#[derive(askama::Template)]
#[template(path = "login.html")]
struct LoginPage {
    nav: Nav,
    error: Option<String>,
    username: String,
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct LoginForm {
    username: String,
    password: String,
}

pub(super) async fn login_get(State(state): State<AppState>) -> Response {
    if !state.ops().security().has_admin() {
        return Redirect::to("/setup").into_response();
    }
    render(&LoginPage { nav: Nav::default(), error: None, username: String::new() })
}

pub(super) async fn login_post(
    State(state): State<AppState>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    match state.ops().security().console_login(peer.ip(), &form.username, &form.password).await {
        Ok(_) => {
            // A fresh session id at every sign-in; an old one of this browser ends.
            if let Some(old) = state.session_id(&headers) {
                state.inner.sessions.remove(&old);
            }
            match state.inner.sessions.create(&form.username) {
                Ok(id) => {
                    ([(header::SET_COOKIE, state.session_cookie(&id))], Redirect::to("/")).into_response()
                }
                Err(e) => e.into_response(),
            }
        }
        Err(refusal) => {
            let message = match refusal {
                PasswordRefusal::Wrong => {
                    "Wrong user name or password, or no console role (admin or viewer)."
                }
                PasswordRefusal::Throttled => "Too many failed attempts; try again in a minute.",
            };
            let page =
                LoginPage { nav: Nav::default(), error: Some(message.into()), username: form.username };
            (StatusCode::UNAUTHORIZED, render(&page)).into_response()
        }
    }
}

pub(super) async fn logout_post(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = state.session_id(&headers) {
        state.inner.sessions.remove(&id);
    }
    ([(header::SET_COOKIE, state.expired_cookie())], Redirect::to("/login")).into_response()
}
