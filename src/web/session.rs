//! Console sessions: a random id in a cookie, kept in memory (a restart signs everyone out), an idle timeout,
//! a fresh id at every sign-in, and a CSRF token per session that every state-changing request must carry.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use super::{AppState, WebError};
use crate::security::ConsoleRole;

/// Beyond this many live sessions the oldest are dropped (bounded memory whatever a client does).
const MAX_SESSIONS: usize = 1024;

#[derive(Debug)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    idle: Duration,
}

#[derive(Debug, Clone)]
struct Session {
    user: String,
    csrf: String,
    last_seen: Instant,
}

/// A signed-in user, with the role the rules in force give them now (not at sign-in).
#[derive(Debug, Clone)]
pub(crate) struct Signed {
    pub(crate) user: String,
    pub(crate) role: ConsoleRole,
    pub(crate) csrf: String,
}

impl Signed {
    pub(crate) fn is_admin(&self) -> bool {
        self.role == ConsoleRole::Admin
    }

    /// Refuses a viewer's attempt to change anything.
    pub(crate) fn require_admin(&self) -> Result<(), WebError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(WebError::Forbidden("viewers may look but not change anything"))
        }
    }

    /// How the audit log names this user's actions.
    pub(crate) fn actor(&self) -> crate::ops::Actor {
        crate::ops::Actor::new(format!("console:{}", self.user))
    }
}

impl Sessions {
    pub fn new(idle: Duration) -> Sessions {
        Sessions { map: Mutex::new(HashMap::new()), idle }
    }

    /// A new session for `user`: its id (for the cookie).
    pub(crate) fn create(&self, user: &str) -> Result<String, WebError> {
        let id = random_token()?;
        let session = Session { user: user.to_owned(), csrf: random_token()?, last_seen: Instant::now() };
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let idle = self.idle;
        map.retain(|_, s| s.last_seen.elapsed() < idle);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last_seen).map(|(id, _)| id.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id.clone(), session);
        Ok(id)
    }

    /// The session's user and CSRF token, if it is live; using it resets its idle time.
    pub(super) fn touch(&self, id: &str) -> Option<(String, String)> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let live = map.get(id).is_some_and(|s| s.last_seen.elapsed() < self.idle);
        if !live {
            map.remove(id);
            return None;
        }
        let session = map.get_mut(id)?;
        session.last_seen = Instant::now();
        Some((session.user.clone(), session.csrf.clone()))
    }

    pub(crate) fn remove(&self, id: &str) {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
    }

    /// Signs a user out everywhere (deleted, or lost their console role).
    pub(crate) fn remove_user(&self, user: &str) {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).retain(|_, s| s.user != user);
    }
}

/// 32 random bytes as hex.
pub(crate) fn random_token() -> Result<String, WebError> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| WebError::Internal("the system random number generator failed".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl AppState {
    /// `__Host-` on HTTPS: the browser then insists on Secure, Path=/ and no Domain.
    pub(crate) fn cookie_name(&self) -> &'static str {
        if self.inner.https { "__Host-weir" } else { "weir_session" }
    }

    /// The Set-Cookie value of a new session.
    pub(crate) fn session_cookie(&self, id: &str) -> String {
        let secure = if self.inner.https { "; Secure" } else { "" };
        format!("{}={id}; Path=/; HttpOnly; SameSite=Strict{secure}", self.cookie_name())
    }

    /// The Set-Cookie value that ends the session in the browser.
    pub(crate) fn expired_cookie(&self) -> String {
        let secure = if self.inner.https { "; Secure" } else { "" };
        format!("{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}", self.cookie_name())
    }

    /// The session id the request's cookie carries.
    pub(crate) fn session_id(&self, headers: &HeaderMap) -> Option<String> {
        let name = self.cookie_name();
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name && !v.is_empty()).then(|| v.to_owned())
            })
    }

    /// The signed-in user of a request, if any (for pages that work either way).
    pub(crate) fn signed_in(&self, headers: &HeaderMap) -> Option<Signed> {
        self.signed(headers)
    }

    /// The signed-in user of a request, if any.
    fn signed(&self, headers: &HeaderMap) -> Option<Signed> {
        let id = self.session_id(headers)?;
        let (user, csrf) = self.inner.sessions.touch(&id)?;
        match self.ops().security().console_role(&user) {
            Some(role) => Some(Signed { user, role, csrf }),
            None => {
                // Deleted, or no longer admin or viewer, since signing in.
                self.inner.sessions.remove(&id);
                None
            }
        }
    }
}

/// Pages that need a signed-in user take this: without one, the browser is sent to sign in, or to the first-run
/// page while there is no administrator.
impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Signed, Response> {
        if !state.ops().security().has_admin() {
            return Err(Redirect::to("/setup").into_response());
        }
        state.signed(&parts.headers).ok_or_else(|| Redirect::to("/login").into_response())
    }
}

/// Checks every state-changing request before its handler runs: the `Origin` header, when the browser sends one
/// (every current browser does for a form), must be this console's own; and, except for signing in and first
/// run (no session yet), the session's CSRF token must come with it, as the form field `csrf` or the
/// `X-CSRF-Token` header. Refused with 403 otherwise, before anything is done.
pub(super) async fn csrf_guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(request).await;
    }
    if !same_origin(request.headers(), state.inner.https) {
        return WebError::Forbidden("the request came from another site").into_response();
    }
    let path = request.uri().path();
    if path == "/login" || path == "/setup" {
        return next.run(request).await;
    }
    let Some(signed) = state.signed(request.headers()) else {
        return Redirect::to("/login").into_response();
    };
    let header_token = request.headers().get("x-csrf-token").and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Some(token) = header_token {
        // Scripts send the token as a header; their bodies (an uploaded backup) are not forms to look into.
        if !bool::from(subtle::ConstantTimeEq::ct_eq(token.as_bytes(), signed.csrf.as_bytes())) {
            return WebError::Forbidden("the request did not come from this console; reload the page")
                .into_response();
        }
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, super::MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(_) => return (StatusCode::PAYLOAD_TOO_LARGE, "the request is too large").into_response(),
    };
    let token = form_urlencoded::parse(&bytes).find(|(k, _)| k == "csrf").map(|(_, v)| v.into_owned());
    let valid = token
        .is_some_and(|t| bool::from(subtle::ConstantTimeEq::ct_eq(t.as_bytes(), signed.csrf.as_bytes())));
    if !valid {
        tracing::warn!(user = signed.user, path = %parts.uri.path(), "console: request refused, CSRF token missing or wrong");
        return WebError::Forbidden(
            "the form is out of date or did not come from this console; reload the page",
        )
        .into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// Whether the request's `Origin` (if any) is the host it was sent to.
fn same_origin(headers: &HeaderMap, https: bool) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let scheme = if https { "https" } else { "http" };
    origin.to_str().is_ok_and(|o| !host.is_empty() && o == format!("{scheme}://{host}"))
}
