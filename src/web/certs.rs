//! Certificates: the CA (download, fingerprint, expiry), issuing a device certificate (downloadable once, as a
//! PEM bundle or PKCS#12), signing a CSR, the list with expiry and status, revocation, the CRL, and the server
//! certificate's names.

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::session::Signed;
use super::{AppState, Nav, WebError, render};
use crate::ops::certs::{IssueRequest, OutputFile, parse_key_type, parse_reason};
use crate::pki::{CertInfo, RevocationReason};
use crate::security::server::SERVER_CERT_FILE;
use crate::timefmt;

#[derive(askama::Template)]
#[template(path = "certs.html")]
struct CertsPage {
    nav: Nav,
    notice: Option<String>,
    error: Option<String>,
    ca: CertSummary,
    server: Option<ServerSummary>,
    certs: Vec<CertRow>,
    /// Revocation reasons, by name, for the revoke forms.
    reasons: Vec<&'static str>,
}

struct CertSummary {
    subject: String,
    fingerprint: String,
    not_after: String,
}

struct ServerSummary {
    names: String,
    not_after: String,
}

struct CertRow {
    name: String,
    serial: String,
    not_after: String,
    status: String,
    live: bool,
}

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct Notice {
    notice: Option<String>,
    error: Option<String>,
}

pub(super) async fn certs_get(
    signed: Signed,
    State(state): State<AppState>,
    Query(notice): Query<Notice>,
) -> Result<Response, WebError> {
    let ca = CertInfo::from_pem(&state.ops().ca_pem()?).map_err(|e| WebError::Internal(e.to_string()))?;
    let ca = CertSummary {
        subject: ca.subject,
        fingerprint: ca.fingerprint_sha256,
        not_after: timefmt::format(timefmt::unix_millis(ca.not_after)),
    };
    let server = std::fs::read_to_string(state.ops().data_dir().join("pki").join(SERVER_CERT_FILE))
        .ok()
        .and_then(|pem| CertInfo::from_pem(&pem).ok())
        .map(|info| ServerSummary {
            names: info.sans.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            not_after: timefmt::format(timefmt::unix_millis(info.not_after)),
        });
    let now = timefmt::now_ms();
    let certs = state
        .ops()
        .list_certs()
        .await?
        .into_iter()
        .rev()
        .map(|c| {
            let (status, live) = match (c.revoked_at, c.revocation_reason) {
                (Some(_), Some(reason)) => (format!("revoked: {reason}"), false),
                (Some(_), None) => ("revoked".to_owned(), false),
                (None, _) if c.not_after < now => ("expired".to_owned(), false),
                (None, _) => ("valid".to_owned(), true),
            };
            CertRow {
                name: c.common_name,
                serial: c.serial,
                not_after: timefmt::format(c.not_after),
                status,
                live,
            }
        })
        .collect();
    let page = CertsPage {
        nav: Nav::of(&signed, "certs"),
        notice: notice.notice,
        error: notice.error,
        ca,
        server,
        certs,
        reasons: RevocationReason::ALL.iter().map(|r| r.as_str()).collect(),
    };
    Ok(render(&page))
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct Issue {
    name: String,
    #[serde(default)]
    sans: String,
    days: u64,
    key_type: String,
    format: String,
    #[serde(default)]
    p12_password: String,
}

/// Issues and hands out the key once, as a download: PEM bundle (certificate, CA chain, key) or PKCS#12.
pub(super) async fn issue_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<Issue>,
) -> Response {
    let result = async {
        signed.require_admin()?;
        let p12 = form.format == "p12";
        if p12 && form.p12_password.len() < 8 {
            return Err(WebError::BadRequest(
                "A PKCS#12 file needs a password of at least 8 characters.".into(),
            ));
        }
        let request = IssueRequest {
            name: form.name.trim().to_owned(),
            sans: form.sans.split_whitespace().map(str::to_owned).collect(),
            days: form.days,
            key_type: parse_key_type(&form.key_type)?,
            p12_password: p12.then(|| form.p12_password.clone()),
        };
        let issued = state.ops().issue_cert(&request, &signed.actor()).await?;
        let wanted = if p12 { format!("{}.p12", issued.name) } else { format!("{}-bundle.pem", issued.name) };
        let file = issued.files.into_iter().find(|f| f.name == wanted);
        file.ok_or_else(|| WebError::Internal(format!("no {wanted} among the issued files")))
    }
    .await;
    match result {
        Ok(file) => download(file),
        Err(e) => back(e),
    }
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct Sign {
    csr: String,
    days: u64,
}

pub(super) async fn sign_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<Sign>,
) -> Response {
    let result = async {
        signed.require_admin()?;
        let issued = state.ops().sign_csr(&form.csr, form.days, &signed.actor()).await?;
        issued.files.into_iter().next().ok_or_else(|| WebError::Internal("no certificate signed".into()))
    }
    .await;
    match result {
        Ok(file) => download(file),
        Err(e) => back(e),
    }
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct Revoke {
    serial: String,
    reason: String,
}

pub(super) async fn revoke_post(
    signed: Signed,
    State(state): State<AppState>,
    Form(form): Form<Revoke>,
) -> Response {
    let result = async {
        signed.require_admin()?;
        let reason = parse_reason(&form.reason)?;
        let record = state.ops().revoke_cert(&form.serial, reason, &signed.actor()).await?;
        Ok::<_, WebError>(record)
    }
    .await;
    match result {
        Ok(record) => {
            let text = format!(
                "Revoked {} (serial {}); its connections are closed.",
                record.common_name, record.serial
            );
            let query = form_urlencoded::Serializer::new(String::new()).append_pair("notice", &text).finish();
            Redirect::to(&format!("/certs?{query}")).into_response()
        }
        Err(e) => back(e),
    }
}

/// The CA certificate: public, linked from the sign-in page so that a browser can be made to trust the gateway.
pub(super) async fn ca_get(State(state): State<AppState>) -> Result<Response, WebError> {
    let pem = state.ops().ca_pem()?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/x-pem-file"))], pem).into_response())
}

pub(super) async fn crl_get(_signed: Signed, State(state): State<AppState>) -> Result<Response, WebError> {
    let crl = state
        .ops()
        .security()
        .certificates()
        .crl_pem()
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/pkix-crl"))], crl).into_response())
}

fn download(file: OutputFile) -> Response {
    let content_type =
        if file.name.ends_with(".p12") { "application/x-pkcs12" } else { "application/x-pem-file" };
    // File names are certificate names, which `CommonName` restricts; quotes and controls cannot occur.
    let disposition = format!("attachment; filename=\"{}\"", file.name.replace(['"', '\\'], "_"));
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_DISPOSITION,
            HeaderValue::from_str(&disposition).unwrap_or(HeaderValue::from_static("attachment")),
        ),
    ];
    (headers, file.contents).into_response()
}

fn back(error: WebError) -> Response {
    super::back_to("/certs", Err(error))
}
