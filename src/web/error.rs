//! The console's one error type: maps what went wrong to a status and an error page, tells the browser nothing
//! about internals, and logs those on the server.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use crate::ops::OpsError;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The request is not acceptable as it is; the text says why and is shown.
    #[error("{0}")]
    BadRequest(String),
    /// Signed in, but not allowed (a viewer's change), or a failed CSRF or origin check.
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("not found")]
    NotFound,
    /// Something failed on the server: logged, and shown only as "internal error".
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<OpsError> for WebError {
    fn from(e: OpsError) -> WebError {
        match e {
            OpsError::Store(_) | OpsError::File(_) | OpsError::Export(_) => WebError::Internal(e.to_string()),
            other => WebError::BadRequest(other.to_string()),
        }
    }
}

impl From<crate::forward::ops::OpsError> for WebError {
    fn from(e: crate::forward::ops::OpsError) -> WebError {
        use crate::forward::config::ConfigError;
        use crate::forward::ops::OpsError;
        match e {
            OpsError::Database(_)
            | OpsError::Config(ConfigError::Database(_) | ConfigError::Stored { .. }) => {
                WebError::Internal(e.to_string())
            }
            other => WebError::BadRequest(other.to_string()),
        }
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, title, message) = match &self {
            WebError::BadRequest(why) => (StatusCode::BAD_REQUEST, "Not done", why.clone()),
            WebError::Forbidden(why) => (StatusCode::FORBIDDEN, "Not allowed", (*why).to_owned()),
            WebError::NotFound => (StatusCode::NOT_FOUND, "Not found", "There is no such page.".to_owned()),
            WebError::Internal(detail) => {
                tracing::error!("console: {detail}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal error",
                    "The gateway could not do this; its log says why.".to_owned(),
                )
            }
        };
        let page = ErrorPage { nav: super::Nav::default(), title, message };
        let html = askama::Template::render(&page).unwrap_or_else(|_| title.to_owned());
        (status, Html(html)).into_response()
    }
}

#[derive(askama::Template)]
#[template(path = "error.html")]
struct ErrorPage {
    nav: super::Nav,
    title: &'static str,
    message: String,
}

pub(super) async fn not_found() -> WebError {
    WebError::NotFound
}
