//! Backup and restore: download an encrypted backup (streamed from a file made in the data directory), and
//! upload one to be checked and staged for the next start. Administrators only.

use axum::Form;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::session::Signed;
use super::{AppState, Nav, WebError, render};
use crate::ops::backup;

/// The largest backup the console takes as an upload (a configuration backup is far smaller; one with a big
/// journal is restored with `weir restore` on the gateway).
pub(super) const MAX_UPLOAD: usize = 64 << 20;

#[derive(askama::Template)]
#[template(path = "backup.html")]
struct BackupPage {
    nav: Nav,
    notice: Option<String>,
    error: Option<String>,
    staged: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct Notice {
    notice: Option<String>,
    error: Option<String>,
}

pub(super) async fn backup_get(
    signed: Signed,
    State(state): State<AppState>,
    Query(q): Query<Notice>,
) -> Result<Response, WebError> {
    signed.require_admin()?;
    let staged = backup::staged(state.ops().data_dir()).then(|| "restore/".to_owned());
    Ok(render(&BackupPage { nav: Nav::of(&signed, "backup"), notice: q.notice, error: q.error, staged }))
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct Create {
    passphrase: String,
    #[serde(default)]
    with_journal: bool,
}

pub(super) async fn backup_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<Create>,
) -> Result<Response, WebError> {
    signed.require_admin()?;
    let dir = state.ops().data_dir().to_owned();
    let path = dir.join(format!(".download-{}.weirbackup", &super::session::random_token()?[..16]));
    let file = std::fs::File::create(&path).map_err(|e| WebError::Internal(e.to_string()))?;
    let made = backup::create(&dir, &form.passphrase, form.with_journal, std::io::BufWriter::new(file)).await;
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(e.into());
    }
    let what = if form.with_journal { "with the journal" } else { "configuration" };
    let actor = signed.actor();
    if let Err(e) =
        crate::store::audit(state.ops().security().pool(), actor.as_str(), "backup.download", what).await
    {
        tracing::warn!("audit log: {e}");
    }
    // Streamed from the file, which is removed once it is open (the open handle keeps it readable).
    let file = tokio::fs::File::open(&path).await.map_err(|e| WebError::Internal(e.to_string()))?;
    let _ = std::fs::remove_file(&path);
    let stream = futures_util::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut chunk = vec![0u8; 64 * 1024];
        match file.read(&mut chunk).await {
            Ok(0) => None,
            Ok(n) => {
                chunk.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    let name =
        format!("weir-{}.weirbackup", crate::timefmt::format(crate::timefmt::now_ms()).replace(':', ""));
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
        (
            header::CONTENT_DISPOSITION,
            HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
                .map_err(|e| WebError::Internal(e.to_string()))?,
        ),
    ];
    // Fused: a layer (compression) may poll once more after the end.
    Ok((headers, Body::from_stream(futures_util::StreamExt::fuse(stream))).into_response())
}

/// Checks an uploaded backup and stages it; answers in plain text for the page's script.
pub(super) async fn restore_post(
    signed: Signed,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(e) = signed.require_admin() {
        return e.into_response();
    }
    let passphrase = headers
        .get("x-weir-passphrase")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            form_urlencoded::parse(format!("p={v}").as_bytes())
                .map(|(_, v)| v.into_owned())
                .next()
                .unwrap_or_default()
        })
        .unwrap_or_default();
    match backup::stage(state.ops().data_dir(), body.as_ref(), &passphrase).await {
        Ok(manifest) => {
            let detail = format!("CA {}, journal {}", manifest.ca, manifest.has_journal);
            if let Err(e) = crate::store::audit(
                state.ops().security().pool(),
                signed.actor().as_str(),
                "backup.staged",
                &detail,
            )
            .await
            {
                tracing::warn!("audit log: {e}");
            }
            let journal = if manifest.has_journal { " and the journal" } else { "" };
            (
                StatusCode::OK,
                format!(
                    "The backup is good (CA {}{journal}). It is applied when the gateway next starts.",
                    manifest.ca
                ),
            )
                .into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}
