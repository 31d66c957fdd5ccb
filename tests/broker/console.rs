//! The web console in a real headless Chromium: journeys through `tests/python/console_journeys.py` (Selenium
//! over Debian's chromedriver) against a gateway on port 0. `WEIR_SCREENSHOTS=DIR` keeps a screenshot of each page.

use std::path::Path;

use tokio::process::Command;

use crate::support::TestGateway;

/// Chromium starts slowly on a loaded machine: a journey gets this long in all.
const JOURNEY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

async fn journey(name: &str, with_admin: bool) {
    let gw = TestGateway::start().await;
    run_journey(&gw, name, with_admin, &[]).await;
    gw.stop().await;
}

/// Runs one journey against `gw`, with `extra` arguments for the script.
async fn run_journey(gw: &TestGateway, name: &str, with_admin: bool, extra: &[&str]) {
    if with_admin {
        gw.gateway()
            .security()
            .add_user("root", "correct horse battery", &["admin".into()], "test")
            .await
            .unwrap();
    }
    let url = format!("http://{}/", gw.gateway().local_addr("console").unwrap());
    let python = std::env::var("WEIR_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/console_journeys.py");
    let shots = std::env::var("WEIR_SCREENSHOTS").ok();
    let mut command = Command::new(&python);
    command.arg(&script).arg(name).arg("--url").arg(&url).arg("--data-dir").arg(gw.data_dir());
    command.arg("--mqtt-port").arg(gw.port().to_string()).args(extra);
    if let Some(dir) = &shots {
        command.arg("--shots").arg(dir);
    }
    command.kill_on_drop(true);
    let out = tokio::time::timeout(JOURNEY_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("journey {name} did not finish within {JOURNEY_TIMEOUT:?}"))
        .unwrap();
    assert!(
        out.status.success(),
        "journey {name} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// First run with the setup code, then sign in and out, and throttling after wrong passwords.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_first_run_sign_in_and_out_and_throttling() {
    journey("first_run", false).await;
}

/// Issue a certificate as PKCS#12, download it and open it with openssl; revoke it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_issue_download_and_revoke_a_certificate() {
    journey("certificates", true).await;
}

/// Add a user and a rule in the console, then see mosquitto_pub and mosquitto_sub allowed and denied accordingly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_users_and_rules_decide_what_mosquitto_clients_may_do() {
    journey("access", true).await;
}

/// Markup in a user name stays text: no script runs, nothing is rendered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_an_xss_payload_stays_inert() {
    journey("xss", true).await;
}

/// A message published by mosquitto_pub appears in the live topic view (an XSS payload stays text), pause holds
/// new ones back, and the topic tree lists it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_the_live_view_shows_what_mosquitto_pub_sends() {
    journey("live_topic", true).await;
}

/// The history chart draws the values mosquitto_pub sent, and the CSV export downloads them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_the_history_chart_draws_and_the_export_downloads() {
    journey("history_chart", true).await;
}

/// A connected mosquitto_sub is listed with its subscription, and disconnected from the console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_clients_are_listed_and_disconnected() {
    journey("clients", true).await;
}

/// Kafka: add an upstream against a real broker (tansu) and test the connection, be refused a bad route with the
/// reason beside its field, add the route, see what mosquitto_pub sends move the route's status, pause it; an
/// independent reader (confluent-kafka) then finds in Kafka exactly what was sent before the pause.
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_kafka_upstream_connection_test_route_status_and_pause() {
    let tansu = crate::kafka::Tansu::start().await;
    tansu.create_topic("plant", 1).await;
    let gw = TestGateway::start().await;
    run_journey(&gw, "kafka", true, &["--kafka-bootstrap", &tansu.bootstrap()]).await;
    let records = crate::kafka::read_all(&tansu.bootstrap(), "plant").await;
    let values: Vec<&str> = records.iter().map(|r| r.value.as_str()).collect();
    assert_eq!(values, ["t=20", "t=21", "t=22", "t=23", "t=24"], "before the pause, and nothing after it");
    assert!(records.iter().all(|r| r.key.as_deref() == Some("plant/press-1/temp")));
    gw.stop().await;
}
