//! First run: while no administrator exists, every page leads here. A one-time setup code, printed in the log at
//! start and written to `<data_dir>/setup-code` (0600), proves that whoever creates the first administrator can
//! read the gateway's log or its data directory. It is consumed, and the file removed, when the administrator is
//! created. There are no default credentials.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use axum::Form;
use axum::extract::{ConnectInfo, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};

use super::serve::Peer;
use super::{AppState, Nav, WebError, render};
use crate::files::{self, PRIVATE_FILE};
use crate::ops::Actor;

pub const SETUP_CODE_FILE: &str = "setup-code";

/// The current setup code, if the gateway still has no administrator.
#[derive(Debug)]
pub struct SetupCode {
    code: Mutex<Option<String>>,
    file: PathBuf,
}

impl SetupCode {
    /// Makes a new code (and its file) if there is no administrator; otherwise removes a leftover file.
    pub fn prepare(data_dir: &Path, has_admin: bool) -> Result<SetupCode, WebError> {
        let file = data_dir.join(SETUP_CODE_FILE);
        if has_admin {
            let _ = std::fs::remove_file(&file);
            return Ok(SetupCode { code: Mutex::new(None), file });
        }
        // 12 characters from an alphabet without look-alikes: typed from a screen or a log.
        const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
        let random = super::session::random_token()?;
        let code: String = random
            .as_bytes()
            .chunks(2)
            .take(12)
            .map(|pair| {
                let byte = u8::from_str_radix(std::str::from_utf8(pair).unwrap_or("0"), 16).unwrap_or(0);
                char::from(ALPHABET.get(usize::from(byte) % ALPHABET.len()).copied().unwrap_or(b'a'))
            })
            .collect();
        files::write_atomic(&file, format!("{code}\n").as_bytes(), PRIVATE_FILE)
            .map_err(|e| WebError::Internal(e.to_string()))?;
        tracing::warn!(file = %file.display(), "no console administrator yet: open the console and enter the setup code {code}");
        Ok(SetupCode { code: Mutex::new(Some(code)), file })
    }

    /// The code while one is in force.
    pub fn current(&self) -> Option<String> {
        self.code.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn matches(&self, given: &str) -> bool {
        let code = self.code.lock().unwrap_or_else(PoisonError::into_inner);
        code.as_deref()
            .is_some_and(|c| bool::from(subtle::ConstantTimeEq::ct_eq(c.as_bytes(), given.trim().as_bytes())))
    }

    fn consume(&self) {
        *self.code.lock().unwrap_or_else(PoisonError::into_inner) = None;
        if let Err(e) = std::fs::remove_file(&self.file) {
            tracing::warn!(file = %self.file.display(), "could not remove the used setup code: {e}");
        }
    }
}

#[derive(askama::Template)]
#[template(path = "setup.html")]
struct SetupPage {
    nav: Nav,
    error: Option<String>,
    username: String,
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct SetupForm {
    code: String,
    username: String,
    password: String,
    again: String,
}

pub(super) async fn setup_get(State(state): State<AppState>) -> Response {
    if state.ops().security().has_admin() {
        return Redirect::to("/login").into_response();
    }
    render(&SetupPage { nav: Nav::default(), error: None, username: String::new() })
}

pub(super) async fn setup_post(
    State(state): State<AppState>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    Form(form): Form<SetupForm>,
) -> Response {
    if state.ops().security().has_admin() {
        return Redirect::to("/login").into_response();
    }
    let page = |error: String| {
        let page = SetupPage { nav: Nav::default(), error: Some(error), username: form.username.clone() };
        (axum::http::StatusCode::BAD_REQUEST, render(&page)).into_response()
    };
    if !state.inner.setup.matches(&form.code) {
        tracing::warn!(%peer, "console first run: wrong setup code");
        return page(
            "That is not the setup code. It is in the gateway's log and in its data directory.".into(),
        );
    }
    if form.password != form.again {
        return page("The two passwords differ.".into());
    }
    let actor = Actor::new(format!("console:setup from {}", peer.ip()));
    if let Err(e) = state.ops().add_user(&form.username, &form.password, &["admin".to_owned()], &actor).await
    {
        return page(e.to_string());
    }
    state.inner.setup.consume();
    tracing::info!(user = form.username, %peer, "console: first administrator created");
    match state.inner.sessions.create(&form.username) {
        Ok(id) => ([(header::SET_COOKIE, state.session_cookie(&id))], Redirect::to("/")).into_response(),
        Err(e) => e.into_response(),
    }
}
