//! The console's static files, embedded in the binary, with cache headers.

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::WebError;

/// (name, content type, bytes)
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("weir.css", "text/css; charset=utf-8", include_bytes!("../../static/weir.css")),
    ("weir.js", "text/javascript; charset=utf-8", include_bytes!("../../static/weir.js")),
    (
        "vendor/uplot-1.6.32.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/vendor/uplot-1.6.32.min.js"),
    ),
    (
        "vendor/uplot-1.6.32.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../static/vendor/uplot-1.6.32.min.css"),
    ),
];

pub(super) async fn asset_get(Path(file): Path<String>, headers: HeaderMap) -> Result<Response, WebError> {
    let (_, content_type, bytes) =
        ASSETS.iter().find(|(name, _, _)| *name == file).ok_or(WebError::NotFound)?;
    let etag = format!("\"{}\"", digest(bytes));
    let cache = [
        (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600")),
        (header::ETAG, HeaderValue::from_str(&etag).map_err(|e| WebError::Internal(e.to_string()))?),
    ];
    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == etag.as_bytes()) {
        return Ok((StatusCode::NOT_MODIFIED, cache).into_response());
    }
    Ok((cache, [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], *bytes).into_response())
}

/// The first 16 hex digits of the SHA-256 of `bytes`: the asset's version, for `ETag`.
fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().take(8).map(|b| format!("{b:02x}")).collect()
}
