//! The Kafka page's handlers: upstreams, routes and downlinks through the real router on a real configuration
//! database, with every refusal (CSRF, viewer, bad fields), write-only secrets, escaping, and the status as the
//! forwarder reports it. The connection to a real broker is tested in `tests/broker/kafka.rs` and the console's
//! browser journey.

use super::*;
use crate::forward::config::RouteSpec;
use crate::forward::ops as kafka_ops;
use crate::forward::status::{RouteState, RouteStatus, StatusReport};

fn self_signed(name: &str) -> (String, String) {
    let made = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    (made.cert.pem(), made.signing_key.serialize_pem())
}

impl Console {
    fn config_db(&self) -> &sqlx::SqlitePool {
        self.ops().security().pool()
    }

    async fn upstream(&self, name: &str) -> crate::forward::config::Upstream {
        let config = crate::forward::config::load(self.config_db()).await.unwrap();
        config.upstream(name).cloned().unwrap()
    }

    async fn add_upstream(&self, name: &str) {
        let request = kafka_ops::SetUpstream {
            name: name.into(),
            bootstrap: "127.0.0.1:9".into(),
            ..kafka_ops::SetUpstream::default()
        };
        kafka_ops::upstream_set(self.config_db(), request, "test").await.unwrap();
    }

    /// A viewer's session, with its CSRF token.
    async fn viewer(&self) -> (String, String) {
        self.ops()
            .add_user("vic", "correct horse battery", &["viewer".into()], &crate::ops::Actor::new("test"))
            .await
            .unwrap();
        let cookie = self.sign_in("vic", "correct horse battery").await;
        let csrf = self.csrf(&cookie).await;
        (cookie, csrf)
    }
}

fn upstream_form(csrf: &str, pairs: &[(&str, &str)]) -> String {
    let mut all =
        vec![("csrf", csrf), ("name", "main"), ("bootstrap", "127.0.0.1:9"), ("compression", "lz4")];
    for (k, v) in pairs {
        all.retain(|(key, _)| key != k);
        all.push((k, v));
    }
    encode(&all)
}

fn uplink_form(csrf: &str, pairs: &[(&str, &str)]) -> String {
    let mut all = vec![
        ("csrf", csrf),
        ("name", "plant"),
        ("upstream", "main"),
        ("filter", "plant/#"),
        ("topic", "plant.{2}"),
        ("key", "topic"),
        ("format", "raw"),
        ("from", "now"),
        ("lag_alarm", "60"),
    ];
    for (k, v) in pairs {
        all.retain(|(key, _)| key != k);
        all.push((k, v));
    }
    encode(&all)
}

fn downlink_form(csrf: &str, pairs: &[(&str, &str)]) -> String {
    let mut all = vec![
        ("csrf", csrf),
        ("name", "cmd"),
        ("upstream", "main"),
        ("topic", "commands"),
        ("mqtt_topic", "devices/{key}/cmd"),
        ("qos", "1"),
    ];
    for (k, v) in pairs {
        all.retain(|(key, _)| key != k);
        all.push((k, v));
    }
    encode(&all)
}

#[tokio::test]
async fn upstreams_are_added_edited_tested_and_deleted_and_their_secrets_never_shown() {
    let c = Console::new().await;
    let cookie = c.admin().await;
    let csrf = c.csrf(&cookie).await;
    let page = c.get("/kafka", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("No upstream yet") && page.body.contains("aria-current=\"page\">Kafka"));
    assert_eq!(c.get("/kafka/upstreams/add", Some(&cookie)).await.status, StatusCode::OK);

    let (ca, _) = self_signed("kafka-ca");
    let (cert, key) = self_signed("gateway-7");
    let added = c
        .post(
            "/kafka/upstreams/add",
            &upstream_form(
                &csrf,
                &[
                    ("bootstrap", "127.0.0.1:9, 127.0.0.2:9"),
                    ("tls", "true"),
                    ("ca", &ca),
                    ("client_cert", &cert),
                    ("client_key", &key),
                    ("sasl_mechanism", "SCRAM-SHA-512"),
                    ("sasl_user", "gw"),
                    ("sasl_password", "hunter2"),
                    ("compression", "zstd"),
                ],
            ),
            Some(&cookie),
        )
        .await;
    assert_eq!(added.status, StatusCode::SEE_OTHER, "{}", added.body);
    assert!(added.location().starts_with("/kafka?notice=Upstream+main+added"), "{}", added.location());
    let stored = c.upstream("main").await;
    assert_eq!(stored.sasl.as_ref().unwrap().password, "hunter2");
    assert!(stored.ca_pem.is_some() && stored.client_key_pem.is_some());

    // Write-only: the list and the edit form say "set", never the password or the key.
    for path in ["/kafka", "/kafka/upstreams/edit?name=main"] {
        let body = c.get(path, Some(&cookie)).await.body;
        assert!(body.contains("SCRAM-SHA-512"), "{path}");
        let (key_line, ca_line) = (key.lines().nth(1).unwrap(), ca.lines().nth(1).unwrap());
        assert!(!body.contains("hunter2") && !body.contains(key_line), "{path} shows a secret: {body}");
        assert!(!body.contains(ca_line), "{path}: certificates are described, not dumped");
        assert!(body.contains("CN=rcgen"), "{path}: the CA's subject is shown");
    }
    assert!(c.get("/kafka", Some(&cookie)).await.body.contains("<td>set</td>"), "the password is 'set'");

    // An edit with the secret fields empty keeps them.
    let edited = c
        .post(
            "/kafka/upstreams/edit",
            &upstream_form(
                &csrf,
                &[
                    ("bootstrap", "127.0.0.1:9"),
                    ("tls", "true"),
                    ("sasl_mechanism", "SCRAM-SHA-256"),
                    ("sasl_user", "gw2"),
                    ("sasl_password", ""),
                ],
            ),
            Some(&cookie),
        )
        .await;
    assert!(edited.location().starts_with("/kafka?notice=Upstream+main+changed"), "{}", edited.body);
    let stored = c.upstream("main").await;
    let sasl = stored.sasl.as_ref().unwrap();
    assert_eq!((sasl.username.as_str(), sasl.password.as_str()), ("gw2", "hunter2"));
    assert!(stored.ca_pem.is_some() && stored.client_cert_pem.is_some() && stored.client_key_pem.is_some());
    assert_eq!(stored.compression, crate::forward::config::Compression::Lz4);
    // Removing the certificates, SASL and TLS.
    let plain = c
        .post(
            "/kafka/upstreams/edit",
            &upstream_form(
                &csrf,
                &[("remove_ca", "true"), ("remove_client_cert", "true"), ("sasl_user", "gw2")],
            ),
            Some(&cookie),
        )
        .await;
    assert!(plain.location().starts_with("/kafka?notice="), "{}", plain.body);
    let stored = c.upstream("main").await;
    assert!(!stored.uses_tls() && stored.sasl.is_none() && stored.client_key_pem.is_none());

    // The connection test answers within seconds: nothing listens on port 9.
    let started = std::time::Instant::now();
    let tested =
        c.post("/kafka/upstreams/test", &encode(&[("csrf", &csrf), ("name", "main")]), Some(&cookie)).await;
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    assert!(tested.location().starts_with("/kafka?error=Connection+test"), "{}", tested.location());
    let shown = c.get(tested.location(), Some(&cookie)).await.body;
    assert!(shown.contains("upstream main: unreachable"), "{shown}");

    let deleted =
        c.post("/kafka/upstreams/delete", &encode(&[("csrf", &csrf), ("name", "main")]), Some(&cookie)).await;
    assert!(deleted.location().starts_with("/kafka?notice=Upstream+main+deleted"));
    assert!(kafka_ops::upstream_list(c.config_db()).await.unwrap().is_empty());
    let again =
        c.post("/kafka/upstreams/delete", &encode(&[("csrf", &csrf), ("name", "main")]), Some(&cookie)).await;
    assert!(again.location().starts_with("/kafka?error="), "{}", again.location());

    let audit = c.get("/audit?q=kafka.upstream", Some(&cookie)).await.body;
    for action in ["kafka.upstream.add", "kafka.upstream.edit", "kafka.upstream.test", "kafka.upstream.del"] {
        assert!(audit.contains(action), "{action} is audited: {audit}");
    }
    assert!(audit.contains("console:root") && !audit.contains("hunter2"));
}

#[tokio::test]
async fn uplinks_and_downlinks_are_added_edited_paused_resumed_shown_and_deleted() {
    let c = Console::new().await;
    let cookie = c.admin().await;
    let csrf = c.csrf(&cookie).await;
    let no_upstream = c.get("/kafka/uplinks/add", Some(&cookie)).await;
    assert!(no_upstream.body.contains("There is no upstream"), "{}", no_upstream.body);
    c.add_upstream("main").await;
    assert!(
        c.get("/kafka/uplinks/add", Some(&cookie)).await.body.contains("<option value=\"main\" selected>")
    );

    let added = c.post("/kafka/uplinks/add", &uplink_form(&csrf, &[]), Some(&cookie)).await;
    assert!(added.location().starts_with("/kafka?notice=Route+plant+added"), "{}", added.body);
    let edit_form = c.get("/kafka/uplinks/edit?name=plant", Some(&cookie)).await.body;
    assert!(edit_form.contains("value=\"plant.{2}\"") && edit_form.contains("value=\"keep\""), "{edit_form}");
    let edited = c
        .post(
            "/kafka/uplinks/edit",
            &uplink_form(
                &csrf,
                &[("topic", "plant"), ("from", "keep"), ("key", "level:2"), ("format", "json")],
            ),
            Some(&cookie),
        )
        .await;
    assert!(edited.location().starts_with("/kafka?notice=Route+plant+changed"), "{}", edited.body);
    let RouteSpec::Uplink(u) = kafka_ops::route_get(c.config_db(), "plant").await.unwrap().spec else {
        panic!("an uplink")
    };
    assert_eq!((u.topic.as_str(), u.key.to_string(), u.format.as_str()), ("plant", "level:2".into(), "json"));

    let paused =
        c.post("/kafka/routes/pause", &encode(&[("csrf", &csrf), ("name", "plant")]), Some(&cookie)).await;
    assert!(paused.location().starts_with("/kafka?notice=Route+plant+paused"));
    let page = c.get("/kafka", Some(&cookie)).await.body;
    assert!(
        page.contains("action=\"/kafka/routes/resume\"") && page.contains("data-state=\"paused\""),
        "{page}"
    );
    let resumed =
        c.post("/kafka/routes/resume", &encode(&[("csrf", &csrf), ("name", "plant")]), Some(&cookie)).await;
    assert!(resumed.location().starts_with("/kafka?notice=Route+plant+resumed"));
    assert!(!kafka_ops::route_get(c.config_db(), "plant").await.unwrap().paused);

    let down = c.post("/kafka/downlinks/add", &downlink_form(&csrf, &[]), Some(&cookie)).await;
    assert!(down.location().starts_with("/kafka?notice=Downlink+cmd+added"), "{}", down.body);
    let changed = c
        .post(
            "/kafka/downlinks/edit",
            &downlink_form(&csrf, &[("qos", "2"), ("retain", "true"), ("as_user", "operator")]),
            Some(&cookie),
        )
        .await;
    assert!(changed.location().starts_with("/kafka?notice=Downlink+cmd+changed"), "{}", changed.body);
    let RouteSpec::Downlink(d) = kafka_ops::route_get(c.config_db(), "cmd").await.unwrap().spec else {
        panic!("a downlink")
    };
    assert_eq!((d.qos, d.retain, d.as_user.as_deref()), (2, true, Some("operator")));
    assert!(c.get("/kafka/downlinks/edit?name=cmd", Some(&cookie)).await.body.contains("value=\"operator\""));
    let paused =
        c.post("/kafka/routes/pause", &encode(&[("csrf", &csrf), ("name", "cmd")]), Some(&cookie)).await;
    assert!(paused.location().starts_with("/kafka?notice="), "downlinks pause too");
    // The wrong form for the kind, and unknown routes.
    assert_eq!(c.get("/kafka/uplinks/edit?name=cmd", Some(&cookie)).await.status, StatusCode::NOT_FOUND);
    assert_eq!(c.get("/kafka/routes/show?name=nope", Some(&cookie)).await.status, StatusCode::NOT_FOUND);
    let wrong = c.post("/kafka/uplinks/edit", &uplink_form(&csrf, &[("name", "cmd")]), Some(&cookie)).await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert!(wrong.body.contains("is downlink, not uplink"), "{}", wrong.body);

    let shown = c.get("/kafka/routes/show?name=plant", Some(&cookie)).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert!(shown.body.contains("plant/#") && shown.body.contains("0 in all"), "{}", shown.body);

    for name in ["plant", "cmd"] {
        let deleted =
            c.post("/kafka/routes/delete", &encode(&[("csrf", &csrf), ("name", name)]), Some(&cookie)).await;
        assert!(deleted.location().starts_with("/kafka?notice="), "{name}");
    }
    assert!(kafka_ops::route_list(c.config_db()).await.unwrap().is_empty());
    let audit = c.get("/audit?q=kafka.", Some(&cookie)).await.body;
    for action in [
        "kafka.route.add",
        "kafka.route.edit",
        "kafka.route.pause",
        "kafka.route.resume",
        "kafka.downlink.add",
        "kafka.downlink.edit",
        "kafka.route.del",
    ] {
        assert!(audit.contains(action), "{action} is audited");
    }
}

#[tokio::test]
async fn bad_fields_come_back_beside_their_fields_and_nothing_is_written() {
    let c = Console::new().await;
    let cookie = c.admin().await;
    let csrf = c.csrf(&cookie).await;
    let bad = c
        .post(
            "/kafka/upstreams/add",
            &upstream_form(
                &csrf,
                &[
                    ("bootstrap", "nohost"),
                    ("tls", "true"),
                    ("ca", "not a certificate"),
                    ("client_key", "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----"),
                    ("sasl_mechanism", "PLAIN"),
                    ("sasl_user", ""),
                    ("sasl_password", "hunter2"),
                    ("compression", "brotli"),
                ],
            ),
            Some(&cookie),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    for field in ["bootstrap", "ca", "client_cert", "client_key", "sasl_user", "compression"] {
        assert!(bad.body.contains(&format!("id=\"{field}-error\"")), "{field} has its reason: {}", bad.body);
        assert!(bad.body.contains(&format!("aria-describedby=\"{field}-error\"")), "{field} is marked");
    }
    assert!(
        bad.body.contains("value=\"nohost\"") && bad.body.contains("not a certificate"),
        "what was typed"
    );
    assert!(!bad.body.contains("hunter2") && !bad.body.contains("not a key"), "secrets are never sent back");
    assert!(kafka_ops::upstream_list(c.config_db()).await.unwrap().is_empty(), "nothing half-applied");

    c.add_upstream("main").await;
    let taken = c.post("/kafka/upstreams/add", &upstream_form(&csrf, &[]), Some(&cookie)).await;
    assert_eq!(taken.status, StatusCode::BAD_REQUEST);
    assert!(taken.body.contains("id=\"name-error\"") && taken.body.contains("already exists"));
    let tls_off = c
        .post("/kafka/upstreams/edit", &upstream_form(&csrf, &[("ca", &self_signed("ca").0)]), Some(&cookie))
        .await;
    assert!(tls_off.body.contains("id=\"tls-error\""), "a CA without TLS: {}", tls_off.body);
    assert!(c.upstream("main").await.ca_pem.is_none());
    let missing =
        c.post("/kafka/upstreams/edit", &upstream_form(&csrf, &[("name", "nope")]), Some(&cookie)).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert!(missing.body.contains("class=\"error\"") && missing.body.contains("no upstream named"));

    let bad_route = c
        .post(
            "/kafka/uplinks/add",
            &uplink_form(
                &csrf,
                &[
                    ("name", "a/b"),
                    ("filter", "a/#/b"),
                    ("topic", "bad topic"),
                    ("key", "level:0"),
                    ("format", "xml"),
                    ("from", "soonish"),
                    ("lag_alarm", "0"),
                ],
            ),
            Some(&cookie),
        )
        .await;
    assert_eq!(bad_route.status, StatusCode::BAD_REQUEST);
    for field in ["name", "filter", "topic", "key", "format", "from", "lag_alarm"] {
        assert!(bad_route.body.contains(&format!("id=\"{field}-error\"")), "{field}: {}", bad_route.body);
    }
    let orphan =
        c.post("/kafka/uplinks/add", &uplink_form(&csrf, &[("upstream", "nope")]), Some(&cookie)).await;
    assert!(orphan.body.contains("id=\"upstream-error\""), "{}", orphan.body);
    let not_a_number =
        c.post("/kafka/uplinks/add", &uplink_form(&csrf, &[("lag_alarm", "soon")]), Some(&cookie)).await;
    assert_eq!(not_a_number.status, StatusCode::BAD_REQUEST);
    assert!(not_a_number.body.contains("id=\"lag_alarm-error\""));
    let bad_down = c
        .post(
            "/kafka/downlinks/add",
            &downlink_form(&csrf, &[("topic", "a b"), ("mqtt_topic", "cmd/#"), ("qos", "7")]),
            Some(&cookie),
        )
        .await;
    for field in ["topic", "mqtt_topic", "qos"] {
        assert!(bad_down.body.contains(&format!("id=\"{field}-error\"")), "{field}: {}", bad_down.body);
    }
    let bad_qos = c.post("/kafka/downlinks/add", &downlink_form(&csrf, &[("qos", "x")]), Some(&cookie)).await;
    assert!(bad_qos.body.contains("id=\"qos-error\""));
    assert!(kafka_ops::route_list(c.config_db()).await.unwrap().is_empty(), "nothing half-applied");
    let unknown =
        c.post("/kafka/routes/pause", &encode(&[("csrf", &csrf), ("name", "nope")]), Some(&cookie)).await;
    assert!(unknown.location().starts_with("/kafka?error="), "{}", unknown.location());
}

#[tokio::test]
async fn every_kafka_change_needs_the_csrf_token_and_an_administrator() {
    let c = Console::new().await;
    let cookie = c.admin().await;
    let csrf = c.csrf(&cookie).await;
    c.add_upstream("main").await;
    c.post("/kafka/uplinks/add", &uplink_form(&csrf, &[]), Some(&cookie)).await;
    let changes = |csrf: &str| {
        vec![
            ("/kafka/upstreams/add", upstream_form(csrf, &[("name", "other")])),
            ("/kafka/upstreams/edit", upstream_form(csrf, &[("bootstrap", "127.0.0.1:10")])),
            ("/kafka/upstreams/delete", encode(&[("csrf", csrf), ("name", "main")])),
            ("/kafka/upstreams/test", encode(&[("csrf", csrf), ("name", "main")])),
            ("/kafka/uplinks/add", uplink_form(csrf, &[("name", "other")])),
            ("/kafka/uplinks/edit", uplink_form(csrf, &[("topic", "changed")])),
            ("/kafka/downlinks/add", downlink_form(csrf, &[])),
            ("/kafka/downlinks/edit", downlink_form(csrf, &[])),
            ("/kafka/routes/pause", encode(&[("csrf", csrf), ("name", "plant")])),
            ("/kafka/routes/resume", encode(&[("csrf", csrf), ("name", "plant")])),
            ("/kafka/routes/delete", encode(&[("csrf", csrf), ("name", "plant")])),
        ]
    };
    // Without the token (an empty one), and from another site.
    for (path, form) in changes("") {
        assert_eq!(c.post(path, &form, Some(&cookie)).await.status, StatusCode::FORBIDDEN, "{path}");
        let foreign = Request::post(path)
            .header(header::HOST, "console.test")
            .header(header::ORIGIN, "http://evil.test")
            .header(header::COOKIE, &cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form.replace("csrf=&", &format!("csrf={csrf}&"))))
            .unwrap();
        assert_eq!(c.send(foreign).await.status, StatusCode::FORBIDDEN, "{path} from another site");
    }
    let (viewer, viewer_csrf) = c.viewer().await;
    for (path, form) in changes(&viewer_csrf) {
        assert_eq!(c.post(path, &form, Some(&viewer)).await.status, StatusCode::FORBIDDEN, "viewer: {path}");
    }
    for path in [
        "/kafka/upstreams/add",
        "/kafka/upstreams/edit?name=main",
        "/kafka/uplinks/add",
        "/kafka/downlinks/add",
    ] {
        assert_eq!(c.get(path, Some(&viewer)).await.status, StatusCode::FORBIDDEN, "viewer: {path}");
    }
    let page = c.get("/kafka", Some(&viewer)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("plant") && page.body.contains("main"), "a viewer sees everything");
    assert!(
        !page.body.contains("Add an upstream") && !page.body.contains("/kafka/routes/pause"),
        "but no change forms"
    );
    assert_eq!(c.get("/kafka/status", Some(&viewer)).await.status, StatusCode::OK);
    // Nothing was done.
    assert_eq!(kafka_ops::upstream_list(c.config_db()).await.unwrap().len(), 1);
    let route = kafka_ops::route_get(c.config_db(), "plant").await.unwrap();
    assert!(!route.paused && matches!(route.spec, RouteSpec::Uplink(u) if u.topic == "plant.{2}"));
    assert_eq!(kafka_ops::route_list(c.config_db()).await.unwrap().len(), 1);
    assert_eq!(c.get("/kafka", None).await.location(), "/login", "signed out: to the sign-in page");
}

#[tokio::test]
async fn the_status_shows_state_lag_rate_acknowledgements_errors_gaps_and_dead_letters_escaped() {
    let c = Console::new().await;
    let cookie = c.admin().await;
    let csrf = c.csrf(&cookie).await;
    c.add_upstream("main").await;
    let xss = "<img src=x onerror=alert(1)>";
    let filter = format!("plant/{xss}/#");
    let added =
        c.post("/kafka/uplinks/add", &uplink_form(&csrf, &[("filter", &filter)]), Some(&cookie)).await;
    assert!(added.location().starts_with("/kafka?notice="), "{}", added.body);
    let named = c.post("/kafka/uplinks/add", &uplink_form(&csrf, &[("name", xss)]), Some(&cookie)).await;
    assert_eq!(named.status, StatusCode::BAD_REQUEST);
    let user = c
        .post(
            "/kafka/upstreams/edit",
            &upstream_form(&csrf, &[("sasl_mechanism", "PLAIN"), ("sasl_user", xss), ("sasl_password", "p")]),
            Some(&cookie),
        )
        .await;
    assert!(user.location().starts_with("/kafka?notice="), "{}", user.body);

    let waiting = c.get("/kafka/status", Some(&cookie)).await.body;
    assert!(waiting.contains("waiting to start"), "no report yet: {waiting}");
    let now = crate::timefmt::now_ms();
    let report = StatusReport {
        written_ms: now,
        gateway: "gw".into(),
        routes: vec![RouteStatus {
            name: "plant".into(),
            kind: "uplink".into(),
            upstream: "main".into(),
            state: RouteState::Stalled,
            forwarded: 4242,
            dead_letters: 1,
            gap: 3,
            position: 10,
            lag_messages: 77,
            lag_ms: 12_500,
            rate: 15.5,
            last_ack_ms: Some(now - 3_000),
            last_error: Some(format!("Kafka client: {xss}")),
            last_error_ms: Some(now - 1_000),
            lag_alarm: true,
            ..RouteStatus::default()
        }],
        ..StatusReport::default()
    };
    crate::forward::status::write_report(&c.dir, &report).unwrap();
    sqlx::query(
        "INSERT INTO kafka_dead_letters (route, ts, journal_id, source, destination, reason, payload) \
         VALUES ('plant', ?, 9, ?, 'plant', ?, x'00')",
    )
    .bind(now)
    .bind(format!("plant/{xss}/t"))
    .bind(format!("Broker: Message size too large {xss}"))
    .execute(c.config_db())
    .await
    .unwrap();
    let status = c.get("/kafka/status", Some(&cookie)).await.body;
    for shown in [
        "data-state=\"stalled\"",
        "lag alarm",
        ">4242<",
        "15.5/s",
        "77, 12.5 s",
        "3.0 s ago",
        "1.0 s ago",
        ">3<",
    ] {
        assert!(status.contains(shown), "{shown} in {status}");
    }
    assert!(status.contains("Message size too large") && status.contains("1 in all"), "{status}");
    for page in
        ["/kafka", "/kafka/status", "/kafka/routes/show?name=plant", "/kafka/upstreams/edit?name=main"]
    {
        let body = c.get(page, Some(&cookie)).await.body;
        assert!(!body.contains("<img"), "{page} renders markup from data: {body}");
        assert!(body.contains("&#60;img") || body.contains("&lt;img"), "{page}: escaped");
    }
    let named = c.post("/kafka/uplinks/add", &uplink_form(&csrf, &[("name", xss)]), Some(&cookie)).await;
    assert!(!named.body.contains("<img") && named.body.contains("id=\"name-error\""));

    // The overview counts the routes by state and raises their alarms.
    let overview = c.get("/", Some(&cookie)).await.body;
    assert!(overview.contains("1 stalled"), "{overview}");
    assert!(
        overview.contains("Kafka route plant: lag alarm")
            && overview.contains("Kafka route plant is stalled")
    );
    assert!(!overview.contains("<img") && overview.contains("&#60;img"), "escaped: {overview}");

    // A report the forwarder stopped rewriting is shown as old.
    let old = StatusReport { written_ms: now - 60_000, ..report };
    crate::forward::status::write_report(&c.dir, &old).unwrap();
    assert!(c.get("/kafka/status", Some(&cookie)).await.body.contains("last report is"));
}
