//! Handler tests: every route through the real router (`tower::ServiceExt::oneshot`), on a real configuration
//! database and a real broker, including each refusal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use tower::ServiceExt;

use super::serve::Peer;
use super::*;
use crate::mqtt::broker::{Authorizer, BrokerConfig, Restored};
use crate::shutdown::Stop;

struct Console {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    state: AppState,
    _stop: Stop,
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
    bytes: Vec<u8>,
}

impl Reply {
    fn location(&self) -> &str {
        self.headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    fn cookie(&self) -> Option<String> {
        let set = self.headers.get(header::SET_COOKIE)?.to_str().ok()?;
        Some(set.split(';').next()?.to_owned())
    }
}

const ORIGIN: &str = "http://console.test";

impl Console {
    async fn new() -> Console {
        Console::with(true).await
    }

    async fn with(loopback: bool) -> Console {
        Console::build(loopback, false).await
    }

    /// With a journal: topics and history.
    async fn journaled() -> Console {
        Console::build(true, true).await
    }

    async fn build(loopback: bool, journaled: bool) -> Console {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let ops = crate::ops::Ops::open(&path).await.unwrap();
        let stop = Stop::new();
        let authorizer: Arc<dyn Authorizer> =
            Arc::new(crate::security::Security::load(ops.security().pool().clone(), &path).await.unwrap());
        let journal = match journaled {
            true => Some(
                crate::store::Journal::open(&path, crate::store::JournalConfig::default()).await.unwrap(),
            ),
            false => None,
        };
        let durable = journal.clone().map(|j| Arc::new(j) as Arc<dyn crate::mqtt::broker::Durable>);
        let (broker, _) = Broker::start(
            BrokerConfig::default(),
            durable,
            Some(authorizer),
            Restored::default(),
            stop.token(),
        );
        let setup = SetupCode::prepare(&path, ops.security().has_admin()).unwrap();
        let mut config = crate::config::ConsoleConfig::default();
        if !loopback {
            config.bind = SocketAddr::from(([192, 0, 2, 1], 443));
        }
        let state = AppState::new(
            ops,
            broker,
            journal,
            setup,
            &config,
            &crate::config::Config::default(),
            stop.token(),
        );
        Console { _dir: dir, dir: path, state, _stop: stop }
    }

    fn ops(&self) -> &crate::ops::Ops {
        self.state.ops()
    }

    async fn admin(&self) -> String {
        self.ops()
            .add_user("root", "correct horse battery", &["admin".into()], &crate::ops::Actor::new("test"))
            .await
            .unwrap();
        self.sign_in("root", "correct horse battery").await
    }

    async fn sign_in(&self, user: &str, password: &str) -> String {
        let reply = self
            .post("/login", &format!("username={user}&password={}", password.replace(' ', "+")), None)
            .await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
        reply.cookie().unwrap()
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let mut request = request;
        request.extensions_mut().insert(ConnectInfo(Peer(SocketAddr::from(([192, 0, 2, 7], 50000)))));
        let response = router(self.state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 10 << 20).await.unwrap().to_vec();
        Reply { status, headers, body: String::from_utf8_lossy(&bytes).into_owned(), bytes }
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> Reply {
        let mut request = Request::get(path).header(header::HOST, "console.test");
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }

    async fn post(&self, path: &str, form: &str, cookie: Option<&str>) -> Reply {
        let mut request = Request::post(path)
            .header(header::HOST, "console.test")
            .header(header::ORIGIN, ORIGIN)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        self.send(request.body(Body::from(form.to_owned())).unwrap()).await
    }

    /// The CSRF token of the session, as the pages embed it.
    async fn csrf(&self, cookie: &str) -> String {
        let page = self.get("/users", Some(cookie)).await.body;
        let at = page.find("name=\"csrf\" value=\"").unwrap() + 19;
        page[at..at + 64].to_owned()
    }
}

fn encode(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

#[tokio::test]
async fn the_first_run_needs_the_setup_code_and_creates_the_first_administrator() {
    let c = Console::new().await;
    for path in ["/", "/users", "/login"] {
        let reply = c.get(path, None).await;
        assert_eq!((reply.status, reply.location()), (StatusCode::SEE_OTHER, "/setup"), "{path}");
    }
    let code = std::fs::read_to_string(c.dir.join(SETUP_CODE_FILE)).unwrap().trim().to_owned();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(c.dir.join(SETUP_CODE_FILE)).unwrap().permissions().mode() & 0o777, 0o600);
    let form = |code: &str, again: &str| {
        encode(&[
            ("code", code),
            ("username", "root"),
            ("password", "correct horse battery"),
            ("again", again),
        ])
    };
    let wrong = c.post("/setup", &form("not-the-code", "correct horse battery"), None).await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert!(wrong.body.contains("not the setup code"), "{}", wrong.body);
    let differ = c.post("/setup", &form(&code, "another horse battery"), None).await;
    assert!(differ.body.contains("passwords differ"));
    assert!(c.ops().list_users().await.unwrap().is_empty(), "nothing created by refused attempts");
    let done = c.post("/setup", &form(&code, "correct horse battery"), None).await;
    assert_eq!((done.status, done.location()), (StatusCode::SEE_OTHER, "/"));
    let cookie = done.cookie().expect("signed in at once");
    assert!(!c.dir.join(SETUP_CODE_FILE).exists(), "the code is consumed");
    assert_eq!(c.get("/", Some(&cookie)).await.status, StatusCode::OK);
    assert_eq!(c.get("/setup", None).await.location(), "/login", "no second first run");
    let again = c.post("/setup", &form(&code, "correct horse battery"), None).await;
    assert_eq!(again.location(), "/login");
    assert_eq!(c.ops().list_users().await.unwrap().len(), 1);
}

#[tokio::test]
async fn sign_in_gives_a_fresh_session_and_sign_out_ends_it() {
    let c = Console::new().await;
    let first = c.admin().await;
    let second = c.sign_in("root", "correct horse battery").await;
    assert_ne!(first, second, "a fresh session id at each sign-in");
    let refused = c.post("/login", "username=root&password=wrong", None).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused.cookie().is_none());
    let csrf = c.csrf(&second).await;
    let out = c.post("/logout", &encode(&[("csrf", &csrf)]), Some(&second)).await;
    assert_eq!(out.location(), "/login");
    assert!(out.headers.get(header::SET_COOKIE).unwrap().to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(c.get("/", Some(&second)).await.location(), "/login", "the session is gone");
    assert_eq!(c.get("/", Some("weir_session=forged")).await.location(), "/login");
    // A user without a console role cannot sign in.
    c.ops().add_user("plc", "correct horse battery", &[], &crate::ops::Actor::new("test")).await.unwrap();
    assert_eq!(
        c.post("/login", "username=plc&password=correct+horse+battery", None).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn repeated_wrong_passwords_are_throttled() {
    let c = Console::new().await;
    c.admin().await;
    for _ in 0..6 {
        c.post("/login", "username=root&password=guess", None).await;
    }
    let reply = c.post("/login", "username=root&password=correct+horse+battery", None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.body.contains("Too many failed attempts"), "{}", reply.body);
}

#[tokio::test]
async fn a_change_needs_the_session_csrf_token_and_this_origin() {
    let c = Console::new().await;
    let cookie = c.admin().await;
    let csrf = c.csrf(&cookie).await;
    let add = |token: &str| {
        encode(&[("csrf", token), ("username", "alice"), ("password", "correct horse battery")])
    };
    assert_eq!(
        c.post(
            "/users/add",
            &encode(&[("username", "alice"), ("password", "correct horse battery")]),
            Some(&cookie)
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        c.post("/users/add", &add(&"0".repeat(64)), Some(&cookie)).await.status,
        StatusCode::FORBIDDEN
    );
    let foreign = Request::post("/users/add")
        .header(header::HOST, "console.test")
        .header(header::ORIGIN, "http://evil.test")
        .header(header::COOKIE, &cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(add(&csrf)))
        .unwrap();
    assert_eq!(c.send(foreign).await.status, StatusCode::FORBIDDEN);
    assert!(c.ops().list_users().await.unwrap().iter().all(|u| u.username != "alice"), "nothing done");
    let ok = c.post("/users/add", &add(&csrf), Some(&cookie)).await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER);
    assert!(ok.location().starts_with("/users?notice="), "{}", ok.location());
    assert!(c.ops().list_users().await.unwrap().iter().any(|u| u.username == "alice"));
}

#[tokio::test]
async fn a_viewer_reads_but_cannot_change_anything() {
    let c = Console::new().await;
    c.admin().await;
    c.ops()
        .add_user("vic", "correct horse battery", &["viewer".into()], &crate::ops::Actor::new("test"))
        .await
        .unwrap();
    let cookie = c.sign_in("vic", "correct horse battery").await;
    for page in ["/", "/users", "/certs", "/audit"] {
        let reply = c.get(page, Some(&cookie)).await;
        assert_eq!(reply.status, StatusCode::OK, "{page}");
        assert!(
            !reply.body.contains("Add user") && !reply.body.contains("Revoke</button>"),
            "{page}: no change forms"
        );
    }
    let csrf = c.csrf(&cookie).await;
    for (path, form) in [
        ("/users/add", encode(&[("csrf", &csrf), ("username", "x"), ("password", "correct horse battery")])),
        ("/users/delete", encode(&[("csrf", &csrf), ("username", "root")])),
        (
            "/rules/add",
            encode(&[
                ("csrf", &csrf),
                ("subject", "anyone"),
                ("effect", "allow"),
                ("action", "both"),
                ("filter", "#"),
            ]),
        ),
        (
            "/certs/issue",
            encode(&[("csrf", &csrf), ("name", "d"), ("days", "1"), ("key_type", "p256"), ("format", "pem")]),
        ),
    ] {
        assert_eq!(c.post(path, &form, Some(&cookie)).await.status, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(c.ops().list_users().await.unwrap().len(), 2);
    assert!(c.ops().list_rules().await.unwrap().is_empty());
}

#[tokio::test]
async fn bad_form_fields_are_refused_with_the_reason_and_nothing_half_applied() {
    let c = Console::new().await;
    let cookie = c.admin().await;
    let csrf = c.csrf(&cookie).await;
    let cases = [
        (
            "/rules/add",
            encode(&[
                ("csrf", &csrf),
                ("subject", "anyone"),
                ("effect", "allow"),
                ("action", "both"),
                ("filter", "a/#/b"),
            ]),
        ),
        (
            "/rules/add",
            encode(&[
                ("csrf", &csrf),
                ("subject", "group:x"),
                ("effect", "allow"),
                ("action", "both"),
                ("filter", "a"),
            ]),
        ),
        (
            "/users/add",
            encode(&[("csrf", &csrf), ("username", "a/b"), ("password", "correct horse battery")]),
        ),
        ("/users/add", encode(&[("csrf", &csrf), ("username", "bob"), ("password", "short")])),
        ("/users/delete", encode(&[("csrf", &csrf), ("username", "root")])),
    ];
    for (path, form) in cases {
        let reply = c.post(path, &form, Some(&cookie)).await;
        assert!(reply.location().starts_with("/users?error="), "{path} {form}: {}", reply.location());
        let shown = c.get(reply.location(), Some(&cookie)).await;
        assert!(shown.body.contains("class=\"error\""), "the reason is shown");
    }
    assert!(c.ops().list_rules().await.unwrap().is_empty());
    assert_eq!(c.ops().list_users().await.unwrap().len(), 1);
    let certs = [
        encode(&[("csrf", &csrf), ("name", "d1"), ("days", "30"), ("key_type", "rsa"), ("format", "pem")]),
        encode(&[
            ("csrf", &csrf),
            ("name", "d1"),
            ("days", "30"),
            ("key_type", "p256"),
            ("format", "p12"),
            ("p12_password", "short"),
        ]),
        encode(&[("csrf", &csrf), ("name", ""), ("days", "30"), ("key_type", "p256"), ("format", "pem")]),
    ];
    for form in certs {
        let reply = c.post("/certs/issue", &form, Some(&cookie)).await;
        assert!(
            reply.location().starts_with("/certs?error="),
            "{form}: {} {}",
            reply.status,
            reply.location()
        );
    }
    assert!(c.ops().list_certs().await.unwrap().is_empty());
    let bad_csr = c
        .post("/certs/sign", &encode(&[("csrf", &csrf), ("csr", "not a csr"), ("days", "30")]), Some(&cookie))
        .await;
    assert!(bad_csr.location().starts_with("/certs?error="));
}

#[tokio::test]
async fn certificates_are_issued_as_downloads_listed_and_revoked() {
    let c = Console::new().await;
    let cookie = c.admin().await;
    let csrf = c.csrf(&cookie).await;
    let pem = c
        .post(
            "/certs/issue",
            &encode(&[
                ("csrf", &csrf),
                ("name", "press-7"),
                ("sans", "DNS:press-7.plant"),
                ("days", "30"),
                ("key_type", "p256"),
                ("format", "pem"),
            ]),
            Some(&cookie),
        )
        .await;
    assert_eq!(pem.status, StatusCode::OK);
    assert!(pem.headers[header::CONTENT_DISPOSITION].to_str().unwrap().contains("press-7-bundle.pem"));
    assert_eq!(pem.body.matches("BEGIN CERTIFICATE").count(), 2, "certificate and CA");
    assert!(pem.body.contains("PRIVATE KEY"));
    let p12 = c
        .post(
            "/certs/issue",
            &encode(&[
                ("csrf", &csrf),
                ("name", "press-8"),
                ("days", "30"),
                ("key_type", "p384"),
                ("format", "p12"),
                ("p12_password", "p12 passphrase"),
            ]),
            Some(&cookie),
        )
        .await;
    assert_eq!(p12.headers[header::CONTENT_TYPE], "application/x-pkcs12");
    assert!(p12.bytes.len() > 500 && p12.bytes.first() == Some(&0x30), "a DER PKCS#12 file");
    let page = c.get("/certs", Some(&cookie)).await;
    assert!(page.body.contains("press-7") && page.body.contains("press-8"));
    let serial = c.ops().find_cert("press-7").await.unwrap().serial;
    assert!(page.body.contains(r#"<option value="key-compromise">"#), "the revoke form offers the reasons");
    let unknown = encode(&[("csrf", &csrf), ("serial", &serial), ("reason", "because")]);
    let refused = c.post("/certs/revoke", &unknown, Some(&cookie)).await;
    assert!(refused.location().starts_with("/certs?error="), "an unknown reason is refused");
    assert!(c.ops().find_cert("press-7").await.unwrap().revoked_at.is_none(), "and nothing is revoked");
    let revoke = encode(&[("csrf", &csrf), ("serial", &serial), ("reason", "key-compromise")]);
    let revoked = c.post("/certs/revoke", &revoke, Some(&cookie)).await;
    assert!(revoked.location().starts_with("/certs?notice="));
    let record = c.ops().find_cert("press-7").await.unwrap();
    assert!(record.revoked_at.is_some());
    assert_eq!(record.revocation_reason.as_deref(), Some("key-compromise"));
    assert!(c.get("/certs", Some(&cookie)).await.body.contains("revoked: key-compromise"));
    let crl = c.get("/certs/crl.pem", Some(&cookie)).await;
    assert!(crl.body.contains("BEGIN X509 CRL"));
    // The CRL gives the reason (RFC 5280 reasonCode 1, keyCompromise) for that serial.
    let (_, pem) = x509_parser::pem::parse_x509_pem(crl.body.as_bytes()).unwrap();
    let (_, list) = x509_parser::parse_x509_crl(&pem.contents).unwrap();
    let entry = list
        .iter_revoked_certificates()
        .find(|e| e.raw_serial_as_string().replace(':', "").eq_ignore_ascii_case(&serial))
        .expect("the revoked serial is listed");
    assert_eq!(entry.reason_code().map(|(_, code)| code.0), Some(1));
    let ca = c.get("/ca.crt", None).await;
    assert_eq!(ca.status, StatusCode::OK, "the CA certificate is public (offered on the sign-in page)");
    assert!(ca.body.contains("BEGIN CERTIFICATE"));
}

#[tokio::test]
async fn untrusted_names_are_rendered_escaped() {
    let c = Console::new().await;
    let cookie = c.admin().await;
    let xss = "<img src=x onerror=alert(1)>";
    c.ops().add_user(xss, "correct horse battery", &[], &crate::ops::Actor::new("test")).await.unwrap();
    let rule = crate::ops::rules::parse_rule(&format!("user:{xss}"), "allow", "both", "a/<b>/#").unwrap();
    c.ops().add_rule(&rule, &crate::ops::Actor::new("test")).await.unwrap();
    for page in ["/users", "/audit", &format!("/users?test_user={}&test_topic=a/%3Cb%3E/c", "%3Cimg%3E")] {
        let body = c.get(page, Some(&cookie)).await.body;
        assert!(!body.contains("<img") && !body.contains("<b>"), "{page} renders markup from data: {body}");
        assert!(body.contains("&#60;img") || body.contains("&lt;img"), "{page}: escaped");
    }
}

#[tokio::test]
async fn pages_assets_metrics_and_limits() {
    let c = Console::new().await;
    let cookie = c.admin().await;
    for page in ["/", "/users", "/certs", "/audit", "/audit?q=user", "/settings", "/clients"] {
        let reply = c.get(page, Some(&cookie)).await;
        assert_eq!(reply.status, StatusCode::OK, "{page}");
        let csp = reply.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
        assert_eq!(reply.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(!reply.body.contains("<script>"), "no inline script");
    }
    let settings = c.get("/settings", Some(&cookie)).await;
    assert!(settings.body.contains("mqtt.receive_maximum") && settings.body.contains("built-in defaults"));
    let gzip = Request::get("/")
        .header(header::COOKIE, &cookie)
        .header(header::ACCEPT_ENCODING, "gzip")
        .body(Body::empty())
        .unwrap();
    assert_eq!(c.send(gzip).await.headers[header::CONTENT_ENCODING], "gzip", "pages are compressed");
    let api = c.get("/api/overview", Some(&cookie)).await;
    let json: serde_json::Value = serde_json::from_str(&api.body).unwrap();
    assert_eq!(json["clients"], 0);
    let css = c.get("/static/weir.css", None).await;
    assert_eq!(css.status, StatusCode::OK);
    let etag = css.headers[header::ETAG].to_str().unwrap().to_owned();
    assert!(css.headers[header::CACHE_CONTROL].to_str().unwrap().contains("max-age"));
    let cached =
        Request::get("/static/weir.css").header(header::IF_NONE_MATCH, &etag).body(Body::empty()).unwrap();
    assert_eq!(c.send(cached).await.status, StatusCode::NOT_MODIFIED);
    assert_eq!(c.get("/static/nope.js", None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(c.get("/no/such/page", Some(&cookie)).await.status, StatusCode::NOT_FOUND);
    let metrics = c.get("/metrics", None).await;
    assert_eq!(metrics.status, StatusCode::OK, "open on loopback");
    assert!(metrics.body.contains("weir_clients_connected 0"));
    let csrf = c.csrf(&cookie).await;
    let huge = format!("csrf={csrf}&passwd={}", "x".repeat(MAX_BODY + 1));
    assert_eq!(c.post("/users/import", &huge, Some(&cookie)).await.status, StatusCode::PAYLOAD_TOO_LARGE);
}

/// Every family is its HELP, TYPE and sample lines, in this order; the journal's only with a journal.
#[tokio::test]
async fn metrics_are_one_help_type_and_sample_per_family() {
    let broker_families = [
        ("messages_received_total", "counter"),
        ("messages_sent_total", "counter"),
        ("bytes_received_total", "counter"),
        ("bytes_sent_total", "counter"),
        ("messages_dropped_total", "counter"),
        ("messages_spilled_total", "counter"),
        ("connections_refused_total", "counter"),
        ("protocol_errors_total", "counter"),
        ("clients_connected", "gauge"),
        ("sessions", "gauge"),
        ("subscriptions", "gauge"),
        ("retained_messages", "gauge"),
        ("uptime_seconds", "gauge"),
    ];
    let journal_families = [
        ("journal_appended_total", "counter"),
        ("journal_refused_total", "counter"),
        ("journal_dropped_qos0_total", "counter"),
        ("journal_pruned_total", "counter"),
    ];
    for (c, journaled) in [(Console::new().await, false), (Console::journaled().await, true)] {
        let body = c.get("/metrics", None).await.body;
        assert!(body.ends_with('\n'), "{body}");
        let lines: Vec<&str> = body.lines().collect();
        let expected: Vec<_> = broker_families
            .iter()
            .chain(journaled.then_some(&journal_families).into_iter().flatten())
            .collect();
        assert_eq!(lines.len(), 3 * expected.len(), "{body}");
        for (family, (name, kind)) in lines.chunks(3).zip(expected) {
            assert!(
                family[0].starts_with(&format!("# HELP weir_{name} ")) && family[0].ends_with('.'),
                "{body}"
            );
            assert_eq!(family[1], format!("# TYPE weir_{name} {kind}"));
            let value = family[2].strip_prefix(&format!("weir_{name} ")).unwrap();
            assert!(value.parse::<u64>().is_ok(), "{}", family[2]);
        }
    }
}

#[tokio::test]
async fn metrics_elsewhere_need_a_session() {
    let c = Console::with(false).await;
    let cookie = c.admin().await;
    assert_eq!(c.get("/metrics", None).await.status, StatusCode::FORBIDDEN);
    assert_eq!(c.get("/metrics", Some(&cookie)).await.status, StatusCode::OK);
    let csrf = c.csrf(&cookie).await;
    let made =
        c.post("/tokens/add", &encode(&[("csrf", &csrf), ("name", "prometheus")]), Some(&cookie)).await;
    assert_eq!(made.status, StatusCode::OK, "shown on the page, not through a redirect");
    let at = made.body.find("<code>weir_").unwrap() + 6;
    let token = made.body[at..at + 69].to_owned();
    let scrape = |bearer: String| {
        Request::get("/metrics").header(header::AUTHORIZATION, bearer).body(Body::empty()).unwrap()
    };
    assert_eq!(c.send(scrape(format!("Bearer {token}"))).await.status, StatusCode::OK);
    assert_eq!(c.send(scrape("Bearer weir_guess".into())).await.status, StatusCode::FORBIDDEN);
    c.ops().delete_token("prometheus", &crate::ops::Actor::new("test")).await.unwrap();
    assert_eq!(
        c.send(scrape(format!("Bearer {token}"))).await.status,
        StatusCode::FORBIDDEN,
        "deleted: refused at once"
    );
}

#[test]
fn an_idle_session_expires() {
    let sessions = Sessions::new(Duration::from_millis(1));
    let id = sessions.create("root").unwrap();
    std::thread::sleep(Duration::from_millis(5));
    assert!(sessions.touch(&id).is_none());
    let sessions = Sessions::new(Duration::from_secs(60));
    let id = sessions.create("root").unwrap();
    assert!(sessions.touch(&id).is_some());
    sessions.remove_user("root");
    assert!(sessions.touch(&id).is_none());
}

impl Console {
    /// Publishes through an in-process link and waits until the journal has indexed it.
    async fn publish(&self, topic: &str, payload: &str, retain: bool) {
        let link = self
            .state
            .inner
            .broker
            .link("test-publisher", crate::mqtt::broker::LinkOptions::default())
            .await
            .unwrap();
        link.publish(crate::mqtt::broker::Message::new(
            topic,
            payload.to_owned(),
            crate::mqtt::codec::QoS::AtLeastOnce,
            retain,
        ))
        .await
        .unwrap();
        drop(link);
        let journal = self.state.inner.journal.as_ref().unwrap();
        // The router has the message once `stats` (queued behind it) answers; then the writer has it once flushed.
        self.state.inner.broker.stats().await.unwrap();
        journal.flush().await;
        journal.index_now().await;
    }
}

#[tokio::test]
async fn the_topic_tree_search_values_publish_and_clear() {
    let c = Console::journaled().await;
    let cookie = c.admin().await;
    c.publish("plant/press-1/temp", "21.5", false).await;
    c.publish("plant/press-1/temp", "{\"t\":22}", false).await;
    c.publish("plant/press-2/state", "running", true).await;
    c.publish("office/door", "open", false).await;
    let root = c.get("/topics", Some(&cookie)).await.body;
    assert!(root.contains("3 topics in the journal"), "{root}");
    assert!(root.contains("office/") && root.contains("plant/"));
    let plant = c.get("/topics?prefix=plant", Some(&cookie)).await.body;
    assert!(plant.contains("press-1/") && plant.contains("press-2/") && !plant.contains("office"));
    let found = c.get("/topics?q=temp", Some(&cookie)).await.body;
    assert!(found.contains("plant/press-1/temp") && !found.contains("press-2/state"));
    let view = c.get("/topics/view?topic=plant/press-1/temp&view=json", Some(&cookie)).await.body;
    assert!(view.contains("&#34;t&#34;: 22") || view.contains("&quot;t&quot;: 22"), "indented JSON: {view}");
    assert!(view.contains("2 messages in the last minute") || view.contains(">2<"), "{view}");
    let retained = c.get("/topics/view?topic=plant/press-2/state", Some(&cookie)).await.body;
    assert!(retained.contains("Clear the retained value"));
    let csrf = c.csrf(&cookie).await;
    let published = c
        .post(
            "/topics/publish",
            &encode(&[
                ("csrf", &csrf),
                ("topic", "plant/cmd"),
                ("payload", "go"),
                ("qos", "1"),
                ("retain", "true"),
            ]),
            Some(&cookie),
        )
        .await;
    assert!(
        published.location().starts_with("/topics/view?topic=plant%2Fcmd&notice="),
        "{}",
        published.location()
    );
    c.publish("sync/marker", "x", false).await;
    let cmd = c.get("/topics/view?topic=plant/cmd", Some(&cookie)).await.body;
    assert!(cmd.contains("<pre class=\"payload\">go</pre>"), "{cmd}");
    let cleared =
        c.post("/topics/clear", &encode(&[("csrf", &csrf), ("topic", "plant/cmd")]), Some(&cookie)).await;
    assert!(cleared.location().contains("notice="));
    c.publish("sync/marker", "y", false).await;
    assert!(
        !c.get("/topics/view?topic=plant/cmd", Some(&cookie)).await.body.contains("Clear the retained value")
    );
    for bad in ["a/#", "$SYS/x", ""] {
        let reply = c
            .post(
                "/topics/publish",
                &encode(&[("csrf", &csrf), ("topic", bad), ("payload", "x"), ("qos", "0")]),
                Some(&cookie),
            )
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad:?}");
    }
    let qos = c
        .post(
            "/topics/publish",
            &encode(&[("csrf", &csrf), ("topic", "a"), ("payload", "x"), ("qos", "3")]),
            Some(&cookie),
        )
        .await;
    assert_eq!(qos.status, StatusCode::BAD_REQUEST);
    let audit = c.get("/audit?q=topic.publish", Some(&cookie)).await.body;
    assert!(audit.contains("plant/cmd"), "publishing is audited");
}

#[tokio::test]
async fn the_live_view_streams_messages_as_server_sent_events() {
    let c = Console::journaled().await;
    let cookie = c.admin().await;
    let page = c.get("/topics/live?filter=plant/%23", Some(&cookie)).await;
    assert!(page.body.contains("data-stream=\"/topics/stream?filter=plant/%23\""), "{}", page.body);
    assert_eq!(c.get("/topics/live?filter=a/%23/b", Some(&cookie)).await.status, StatusCode::BAD_REQUEST);
    let mut request = Request::get("/topics/stream?filter=plant/%23")
        .header(header::COOKIE, &cookie)
        .body(Body::empty())
        .unwrap();
    request.extensions_mut().insert(ConnectInfo(Peer(SocketAddr::from(([127, 0, 0, 1], 1)))));
    let response = router(c.state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = response.into_body().into_data_stream();
    // The subscription is in force once the response exists: what is published now arrives.
    c.publish("plant/x", "<b>hi</b>", false).await;
    c.publish("office/y", "not for this view", false).await;
    let mut seen = String::new();
    while !seen.contains("plant/x") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), futures_util::StreamExt::next(&mut body))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("PGI+aGk8L2I+"), "the payload, base64: {seen}");
    assert!(!seen.contains("office/y"));
}

#[tokio::test]
async fn history_pages_charts_and_streamed_exports() {
    let c = Console::journaled().await;
    let cookie = c.admin().await;
    for i in 0..5 {
        c.publish("sensor/temp", &format!("{{\"t\": {}}}", 20 + i), false).await;
    }
    c.publish("sensor/text", "<script>alert(1)</script>", false).await;
    let page = c.get("/history?filter=sensor/%23", Some(&cookie)).await.body;
    assert_eq!(page.matches("<tr><td>").count(), 6, "{page}");
    assert!(
        !page.contains("<script>alert") && page.contains("&#60;script&#62;")
            || page.contains("&lt;script&gt;"),
        "escaped"
    );
    assert!(page.contains("id=\"chart\""));
    let series = c.get("/history/series?filter=sensor/temp&field=/t", Some(&cookie)).await;
    let json: serde_json::Value = serde_json::from_str(&series.body).unwrap();
    assert_eq!(json["v"], serde_json::json!([20.0, 21.0, 22.0, 23.0, 24.0]));
    let csv = c.get("/history/export?filter=sensor/%23&format=csv", Some(&cookie)).await;
    assert!(csv.headers[header::CONTENT_DISPOSITION].to_str().unwrap().contains("weir-history.csv"));
    let lines: Vec<&str> = csv.body.lines().collect();
    assert_eq!(lines.len(), 7, "{}", csv.body);
    assert_eq!(lines[0], crate::store::export::CSV_HEADER);
    // As a browser asks for it, compressed: the stream ends once, however the layers poll it.
    let gzip = Request::get("/history/export?filter=sensor/%23&format=csv")
        .header(header::COOKIE, &cookie)
        .header(header::ACCEPT_ENCODING, "gzip")
        .body(Body::empty())
        .unwrap();
    let compressed = c.send(gzip).await;
    assert_eq!(compressed.headers[header::CONTENT_ENCODING], "gzip");
    assert!(compressed.bytes.len() > 20);
    let jsonl = c.get("/history/export?filter=sensor/temp&format=jsonl", Some(&cookie)).await;
    assert_eq!(jsonl.body.lines().count(), 5);
    let bad = c.get("/history?filter=a/%23/b", Some(&cookie)).await;
    assert!(bad.body.contains("not a valid topic filter"));
    assert_eq!(c.get("/history/series?filter=a/%23/b", Some(&cookie)).await.status, StatusCode::BAD_REQUEST);
    let bad_time = c.get("/history?filter=%23&since=yesterdayish", Some(&cookie)).await;
    assert!(bad_time.body.contains("class=\"error\""));
}

#[tokio::test]
async fn without_a_journal_topics_and_history_say_so() {
    let c = Console::new().await;
    let cookie = c.admin().await;
    for page in ["/topics", "/history", "/topics/view?topic=a"] {
        let reply = c.get(page, Some(&cookie)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{page}");
        assert!(reply.body.contains("journal is off"));
    }
}

#[tokio::test]
async fn clients_are_listed_and_actions_on_unknown_ones_are_refused() {
    let c = Console::new().await;
    let cookie = c.admin().await;
    assert_eq!(c.get("/clients", Some(&cookie)).await.status, StatusCode::OK);
    let csrf = c.csrf(&cookie).await;
    let kick =
        c.post("/clients/disconnect", &encode(&[("csrf", &csrf), ("client", "nobody")]), Some(&cookie)).await;
    assert!(kick.location().starts_with("/clients?error="));
    let delete =
        c.post("/clients/delete", &encode(&[("csrf", &csrf), ("client", "nobody")]), Some(&cookie)).await;
    assert!(delete.location().starts_with("/clients?error="));
    c.ops()
        .add_user("vic", "correct horse battery", &["viewer".into()], &crate::ops::Actor::new("test"))
        .await
        .unwrap();
    let viewer = c.sign_in("vic", "correct horse battery").await;
    let csrf = c.csrf(&viewer).await;
    let refused =
        c.post("/clients/disconnect", &encode(&[("csrf", &csrf), ("client", "x")]), Some(&viewer)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_backup_downloads_and_an_uploaded_one_is_checked_and_staged() {
    let c = Console::new().await;
    let cookie = c.admin().await;
    let csrf = c.csrf(&cookie).await;
    assert_eq!(c.get("/backup", Some(&cookie)).await.status, StatusCode::OK);
    let short = c.post("/backup", &encode(&[("csrf", &csrf), ("passphrase", "short")]), Some(&cookie)).await;
    assert_eq!(short.status, StatusCode::BAD_REQUEST);
    let made = c
        .post("/backup", &encode(&[("csrf", &csrf), ("passphrase", "a long passphrase")]), Some(&cookie))
        .await;
    assert_eq!(made.status, StatusCode::OK);
    assert!(made.bytes.starts_with(b"WEIRBACKUP\x01"));
    assert!(
        !std::fs::read_dir(&c.dir).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".download")),
        "no copy left behind"
    );
    let upload = |passphrase: &str, token: Option<&str>| {
        let mut request = Request::post("/backup/restore")
            .header(header::HOST, "console.test")
            .header(header::ORIGIN, ORIGIN)
            .header(header::COOKIE, &cookie)
            .header("x-weir-passphrase", passphrase);
        if let Some(token) = token {
            request = request.header("x-csrf-token", token);
        }
        request.body(Body::from(made.bytes.clone())).unwrap()
    };
    assert_eq!(
        c.send(upload("a%20long%20passphrase", None)).await.status,
        StatusCode::FORBIDDEN,
        "no token, no restore"
    );
    let wrong = c.send(upload("another%20passphrase", Some(&csrf))).await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert!(wrong.body.contains("wrong passphrase"), "{}", wrong.body);
    assert!(!c.dir.join("restore").exists());
    let ok = c.send(upload("a%20long%20passphrase", Some(&csrf))).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert!(c.dir.join("restore/READY").exists());
    assert!(c.get("/backup", Some(&cookie)).await.body.contains("A restore is staged"));
}

#[tokio::test]
async fn presence_rules_are_added_with_checks_and_the_page_renders() {
    let c = Console::journaled().await;
    let cookie = c.admin().await;
    assert_eq!(c.get("/presence", Some(&cookie)).await.status, StatusCode::OK);
    let csrf = c.csrf(&cookie).await;
    let rule = |topic: &str| {
        encode(&[
            ("csrf", &csrf),
            ("matcher", "client:press-*"),
            ("event", "birth"),
            ("topic", topic),
            ("payload", "up %t"),
            ("qos", "1"),
            ("retain", "true"),
        ])
    };
    let bad = c.post("/presence/rules/add", &rule("plant/#"), Some(&cookie)).await;
    assert!(bad.location().starts_with("/presence?error="), "{}", bad.location());
    let ok = c.post("/presence/rules/add", &rule("plant/%c/state"), Some(&cookie)).await;
    assert!(ok.location().starts_with("/presence?notice="), "{}", ok.location());
    let page = c.get("/presence", Some(&cookie)).await.body;
    assert!(page.contains("plant/%c/state") && page.contains("client:press-*"));
    assert_eq!(c.ops().list_presence_rules().await.unwrap().len(), 1);
    assert!(c.get("/presence?since=notatime", Some(&cookie)).await.body.contains("class=\"error\""));
}

#[tokio::test]
async fn the_sparkplug_page_shows_nodes_metrics_and_gaps_charts_a_metric_and_asks_for_a_confirmed_rebirth() {
    use prost::Message as _;

    use crate::sparkplug::proto::{DataType, Metric, MetricValue, Payload};

    let mut c = Console::journaled().await;
    let (service, _task) = crate::sparkplug::Sparkplug::start(
        &c.state.inner.broker,
        c.state.inner.journal.clone(),
        c._stop.token(),
    )
    .await
    .unwrap();
    let state = c.state;
    c.state = state.with_sparkplug(service);
    let cookie = c.admin().await;
    let csrf = c.csrf(&cookie).await;
    let link = c.state.inner.broker.link("edge", crate::mqtt::broker::LinkOptions::default()).await.unwrap();
    let payload = |seq: u64, value: f64, name: Option<&str>| {
        Payload {
            timestamp: Some(1_700_000_000_000 + seq),
            seq: Some(seq),
            metrics: vec![Metric {
                name: name.map(str::to_owned),
                alias: Some(1),
                datatype: name.map(|_| DataType::Double.code()),
                value: Some(MetricValue::DoubleValue(value)),
                ..Metric::default()
            }],
            ..Payload::default()
        }
        .encode_to_vec()
    };
    let publish = |topic: &str, bytes: Vec<u8>| {
        crate::mqtt::broker::Message::new(topic, bytes, crate::mqtt::codec::QoS::AtLeastOnce, false)
    };
    link.publish(publish("spBv1.0/Plant/NBIRTH/<b>Edge1", payload(0, 20.0, Some("Temperature"))))
        .await
        .unwrap();
    link.publish(publish("spBv1.0/Plant/NDATA/<b>Edge1", payload(1, 21.0, None))).await.unwrap();
    link.publish(publish("spBv1.0/Plant/NDATA/<b>Edge1", payload(5, 22.0, None))).await.unwrap();
    link.publish(publish("spBv1.0/Plant/NDATA/<b>Edge1", vec![0xFF])).await.unwrap();
    let mut body = String::new();
    for _ in 0..200 {
        body = c.get("/sparkplug", Some(&cookie)).await.body;
        if body.contains("22") && body.contains("Malformed payloads: 1") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(body.contains("Plant / &#60;b&#62;Edge1") || body.contains("Plant / &lt;b&gt;Edge1"), "{body}");
    assert!(!body.contains("<b>Edge1"), "escaped");
    assert!(body.contains("Temperature") && body.contains("sequence gaps: 1"), "{body}");
    assert!(body.contains("expected 2, got 5"), "{body}");
    assert!(body.contains("Malformed payloads: 1"), "{body}");

    // The chart of a metric reads its series from the history, aliases resolved.
    let chart =
        c.get("/sparkplug/metric?group=Plant&node=%3Cb%3EEdge1&metric=Temperature", Some(&cookie)).await;
    assert!(chart.body.contains("data-series=\"/sparkplug/series?"), "{}", chart.body);
    let series_url = "/sparkplug/series?group=Plant&node=%3Cb%3EEdge1&metric=Temperature";
    let mut series = serde_json::Value::Null;
    for _ in 0..200 {
        series = serde_json::from_str(&c.get(series_url, Some(&cookie)).await.body).unwrap();
        if series["v"].as_array().is_some_and(|v| v.len() == 3) {
            break;
        }
        c.state.inner.journal.as_ref().unwrap().flush().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(series["v"], serde_json::json!([20.0, 21.0, 22.0]));

    // A rebirth needs the confirmation, is sent once, and the rate limit refuses a second one at once.
    let form = |confirm: bool| {
        let mut pairs = vec![("csrf", csrf.as_str()), ("group", "Plant"), ("node", "<b>Edge1")];
        if confirm {
            pairs.push(("confirm", "yes"));
        }
        encode(&pairs)
    };
    assert_eq!(
        c.post("/sparkplug/rebirth", &form(false), Some(&cookie)).await.status,
        StatusCode::BAD_REQUEST
    );
    let sent = c.post("/sparkplug/rebirth", &form(true), Some(&cookie)).await;
    assert_eq!(sent.status, StatusCode::SEE_OTHER, "{}", sent.body);
    let again = c.post("/sparkplug/rebirth", &form(true), Some(&cookie)).await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    let audit = c.get("/audit?q=sparkplug.rebirth", Some(&cookie)).await.body;
    assert!(audit.contains("console:root"), "{audit}");
}

/// The Kafka page (built with the `kafka` feature, the default).
#[cfg(feature = "kafka")]
mod kafka;

/// Without the `kafka` feature the Kafka page says so, changes are refused, and the navigation stays.
#[cfg(not(feature = "kafka"))]
#[tokio::test]
async fn without_kafka_the_kafka_page_says_so_and_refuses_changes() {
    let c = Console::new().await;
    let cookie = c.admin().await;
    let page = c.get("/kafka", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("not in this build") && page.body.contains("href=\"/topics\""),
        "{}",
        page.body
    );
    let csrf = c.csrf(&cookie).await;
    let form = encode(&[("csrf", &csrf), ("name", "main"), ("bootstrap", "127.0.0.1:9")]);
    let refused = c.post("/kafka/upstreams/add", &form, Some(&cookie)).await;
    assert!(refused.location().starts_with("/kafka?error="), "{}", refused.location());
    assert_eq!(c.get("/kafka/upstreams/add", Some(&cookie)).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(c.get("/", Some(&cookie)).await.status, StatusCode::OK);
}
