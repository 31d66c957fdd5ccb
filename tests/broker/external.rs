//! The gateway driven by client implementations that share no code with it or with rumqttc: paho-mqtt
//! (Python, through `tests/python/paho_scenarios.py`) and `mosquitto_pub` / `mosquitto_sub` (Debian's
//! mosquitto-clients), for MQTT 3.1.1 and 5.0, over TCP and WebSocket.
//!
//! The paho scenarios do the protocol work and print what they observed as JSON; the assertions are here. A
//! missing tool fails the test with a pointer to `.ci/setup`, which installs all of them.

use std::path::Path;
use std::process::{Output, Stdio};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::support::{TestGateway, WAIT};

#[derive(Clone, Copy, Debug)]
enum Mqtt {
    V311,
    V5,
}

impl Mqtt {
    /// The name paho_scenarios.py's `--mqtt` takes.
    fn paho(self) -> &'static str {
        match self {
            Mqtt::V311 => "3.1.1",
            Mqtt::V5 => "5",
        }
    }

    /// The name mosquitto's `-V` takes.
    fn mosquitto(self) -> &'static str {
        match self {
            Mqtt::V311 => "mqttv311",
            Mqtt::V5 => "mqttv5",
        }
    }

    /// A tag for client ids and topics, so that the two versions' runs never meet.
    fn tag(self) -> &'static str {
        match self {
            Mqtt::V311 => "311",
            Mqtt::V5 => "5",
        }
    }
}

/// Starts `command`, failing the test with the setup hint if the program is not there.
fn spawn(command: &mut Command, what: &str) -> Child {
    command.stdin(Stdio::null()).kill_on_drop(true).spawn().unwrap_or_else(|e| {
        panic!("cannot start {what}: {e}. Run .ci/setup to install the test dependencies.")
    })
}

/// Runs `command` to completion within [`WAIT`]; a command still running then is killed and fails the test.
async fn run(command: &mut Command, what: &str) -> Output {
    let child = spawn(command.stdout(Stdio::piped()).stderr(Stdio::piped()), what);
    match tokio::time::timeout(WAIT, child.wait_with_output()).await {
        Ok(output) => output.unwrap(),
        Err(_) => panic!("{what} did not finish within {WAIT:?}"),
    }
}

/// Runs one scenario of paho_scenarios.py against `gw` and returns the JSON it printed.
async fn paho(gw: &TestGateway, mqtt: Mqtt, scenario: &str) -> Value {
    let python = std::env::var("WEIR_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/paho_scenarios.py");
    let (port, ws_port) = (gw.tcp.port().to_string(), gw.ws.port().to_string());
    let what =
        format!("{python} {} (paho-mqtt, MQTT {}, scenario {scenario})", script.display(), mqtt.paho());
    let output = run(
        Command::new(&python).arg(&script).args([
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--ws-port",
            &ws_port,
            "--mqtt",
            mqtt.paho(),
            "--scenario",
            scenario,
        ]),
        &what,
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{what} failed ({}):\n{stderr}", output.status);
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{what} printed no JSON result ({e}):\n{stdout}\n{stderr}"))
}

const MOSQUITTO_PUB: &str = "mosquitto_pub (Debian package mosquitto-clients)";
const MOSQUITTO_SUB: &str = "mosquitto_sub (Debian package mosquitto-clients)";

/// A mosquitto_pub or mosquitto_sub command aimed at `port` on the gateway, speaking `mqtt`.
fn mosquitto(program: &str, port: u16, mqtt: Mqtt) -> Command {
    let mut command = Command::new(program);
    command.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", mqtt.mosquitto()]);
    command
}

/// Publishes with mosquitto_pub, which exits once the publication is acknowledged (QoS 1, 2) or sent (QoS 0).
async fn mosquitto_pub(gw: &TestGateway, mqtt: Mqtt, args: &[&str]) {
    let output = run(mosquitto("mosquitto_pub", gw.tcp.port(), mqtt).args(args), MOSQUITTO_PUB).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "mosquitto_pub {args:?} failed ({}): {stderr}", output.status);
}

/// Runs mosquitto_sub to completion (it is given `-C` and `-W`) and returns its output lines.
async fn mosquitto_sub(gw: &TestGateway, mqtt: Mqtt, args: &[&str]) -> Vec<String> {
    let output = run(mosquitto("mosquitto_sub", gw.tcp.port(), mqtt).args(args), MOSQUITTO_SUB).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "mosquitto_sub {args:?} failed ({}): {stderr}", output.status);
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect()
}

/// A mosquitto_sub running in the background that is known to be subscribed, printing each message as JSON.
///
/// mosquitto_sub does not say when its subscription is in place (its `-d` output is not flushed to a pipe),
/// so it also subscribes to `<topic>/ready`, where a retained message was published first. That message
/// arriving proves the SUBSCRIBE was handled; whatever is published afterwards reaches this subscriber.
struct Subscriber {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    what: String,
}

impl Subscriber {
    /// Subscribes `client_id` to `topic` at `qos`; mosquitto_sub exits after `count` further messages.
    async fn start(
        gw: &TestGateway,
        mqtt: Mqtt,
        client_id: &str,
        topic: &str,
        qos: u8,
        count: usize,
    ) -> Subscriber {
        let ready = format!("{topic}/ready");
        mosquitto_pub(gw, mqtt, &["-t", &ready, "-m", "ready", "-r", "-q", "1"]).await;
        let what = format!("{MOSQUITTO_SUB} as {client_id}");
        let (qos, count) = (qos.to_string(), (count + 1).to_string());
        let mut command = mosquitto("mosquitto_sub", gw.tcp.port(), mqtt);
        command.args([
            "-i", client_id, "-q", &qos, "-t", topic, "-t", &ready, "-C", &count, "-W", "5", "-F", "%j",
        ]);
        let mut child = spawn(command.stdout(Stdio::piped()).stderr(Stdio::piped()), &what);
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut subscriber = Subscriber { child, lines, what };
        let first = subscriber
            .next()
            .await
            .unwrap_or_else(|| panic!("{} exited before subscribing", subscriber.what));
        assert_eq!(
            first["topic"],
            ready.as_str(),
            "{}: the retained readiness message comes first",
            subscriber.what
        );
        subscriber
    }

    async fn next(&mut self) -> Option<Value> {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{}: nothing printed within {WAIT:?}", self.what))
            .unwrap()?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", self.what)))
    }

    /// Every message after the readiness one, once mosquitto_sub has exited after its count.
    async fn messages(mut self) -> Vec<Value> {
        let mut messages = Vec::new();
        while let Some(message) = self.next().await {
            messages.push(message);
        }
        let output = tokio::time::timeout(WAIT, self.child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {WAIT:?}", self.what))
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{} failed ({}): {stderr}", self.what, output.status);
        messages
    }
}

/// (payload, QoS) of each message, sorted: MQTT guarantees order only among messages of one QoS.
fn payloads_and_qos(messages: &[Value]) -> Vec<(String, u64)> {
    let mut summary: Vec<(String, u64)> = messages
        .iter()
        .map(|m| (m["payload"].as_str().unwrap().to_owned(), m["qos"].as_u64().unwrap()))
        .collect();
    summary.sort();
    summary
}

/// The deliveries expected when `pub0`, `pub1`, `pub2` (published at QoS 0, 1, 2) meet a subscription at
/// QoS `sub_qos`: each at the lower of the two.
fn lower_qos(sub_qos: u64) -> Vec<(String, u64)> {
    (0..=2).map(|pub_qos| (format!("pub{pub_qos}"), pub_qos.min(sub_qos))).collect()
}

async fn paho_qos_round_trip(mqtt: Mqtt) {
    let gw = TestGateway::start().await;
    let result = paho(&gw, mqtt, "qos").await;
    assert_eq!(result["granted"], json!([0, 1, 2]), "{result}");
    let received = result["received"].as_array().unwrap();
    for sub_qos in 0..=2 {
        let topic = format!("paho{}/qos/sub{sub_qos}", mqtt.tag());
        let on_topic: Vec<Value> =
            received.iter().filter(|m| m["topic"] == topic.as_str()).cloned().collect();
        assert_eq!(payloads_and_qos(&on_topic), lower_qos(sub_qos), "{topic}: {result}");
    }
    assert_eq!(received.len(), 9, "{result}");
    gw.stop().await;
}

#[tokio::test]
async fn paho_v311_qos_round_trip_delivers_the_lower_qos() {
    paho_qos_round_trip(Mqtt::V311).await;
}

#[tokio::test]
async fn paho_v5_qos_round_trip_delivers_the_lower_qos() {
    paho_qos_round_trip(Mqtt::V5).await;
}

/// Wills published, as (topic, payload, QoS, retain), and the presence state each departure left.
fn wills_and_presence(result: &Value) -> (Vec<(String, String, u64, bool)>, &Value) {
    let mut wills: Vec<_> = result["wills"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let field = |name: &str| w[name].as_str().unwrap().to_owned();
            (field("topic"), field("payload"), w["qos"].as_u64().unwrap(), w["retain"].as_bool().unwrap())
        })
        .collect();
    wills.sort();
    (wills, &result["presence"])
}

#[tokio::test]
async fn paho_v311_will_is_published_on_abnormal_loss_only() {
    let gw = TestGateway::start().await;
    let result = paho(&gw, Mqtt::V311, "will").await;
    let (wills, presence) = wills_and_presence(&result);
    let will = |name: &str, payload: &str| (format!("paho311/will/{name}"), payload.to_owned(), 1, false);
    // "polite" sent DISCONNECT: no will. "closed" closed its socket; "killed" was SIGKILLed.
    assert_eq!(
        wills,
        [will("closed", "closed gone"), will("killed", "paho311-will-killed gone")],
        "{result}"
    );
    assert_eq!(presence, &json!({"polite": "offline", "closed": "lost", "killed": "lost"}));
    gw.stop().await;
}

#[tokio::test]
async fn paho_v5_will_is_published_on_abnormal_loss_and_on_disconnect_0x04() {
    let gw = TestGateway::start().await;
    let result = paho(&gw, Mqtt::V5, "will").await;
    let (wills, presence) = wills_and_presence(&result);
    let will = |name: &str, payload: &str| (format!("paho5/will/{name}"), payload.to_owned(), 1, false);
    assert_eq!(
        wills,
        [
            will("closed", "closed gone"),
            will("killed", "paho5-will-killed gone"),
            will("with-will", "with-will gone"),
        ],
        "{result}"
    );
    assert_eq!(
        presence,
        &json!({"polite": "offline", "closed": "lost", "killed": "lost", "with-will": "offline"})
    );
    // The will's own properties travel with it.
    for w in result["wills"].as_array().unwrap().iter().filter(|w| w["topic"] != "paho5/will/killed") {
        assert_eq!(
            w["properties"],
            json!({"ContentType": "text/plain", "UserProperty": [["cause", "test"]]}),
            "{w}"
        );
    }
    gw.stop().await;
}

async fn paho_persistent_session(mqtt: Mqtt) {
    let gw = TestGateway::start().await;
    let result = paho(&gw, mqtt, "persistent-session").await;
    assert_eq!(result["first_session_present"], false, "{result}");
    assert_eq!(result["resumed_session_present"], true, "{result}");
    // The QoS 1 messages queued while offline, in order; the QoS 0 one is not queued for an offline session.
    let expected: Vec<Value> =
        ["m0", "m1", "m2", "m3", "m4", "after"].iter().map(|p| json!({"payload": p, "qos": 1})).collect();
    assert_eq!(result["received"], json!(expected), "{result}");
    assert_eq!(result["clean_session_present"], false, "a clean start discards the session: {result}");
    gw.stop().await;
}

#[tokio::test]
async fn paho_v311_persistent_session_gets_what_was_queued_while_offline() {
    paho_persistent_session(Mqtt::V311).await;
}

#[tokio::test]
async fn paho_v5_persistent_session_gets_what_was_queued_while_offline() {
    paho_persistent_session(Mqtt::V5).await;
}

/// A paho WebSocket client and a paho TCP client exchange messages both ways.
async fn assert_websocket_exchange(gw: &TestGateway, mqtt: Mqtt) {
    let result = paho(gw, mqtt, "websocket").await;
    let base = format!("paho{}/ws", mqtt.tag());
    assert_eq!(result["to_ws"], json!({"topic": format!("{base}/to-ws"), "payload": "hello ws", "qos": 1}));
    assert_eq!(
        result["to_tcp"],
        json!({"topic": format!("{base}/to-tcp"), "payload": "hello tcp", "qos": 2})
    );
    assert_eq!(result["big_intact"], true, "a 200 kB publication from the WebSocket client arrives whole");
}

#[tokio::test]
async fn paho_v311_over_websocket_talks_to_a_tcp_client() {
    let gw = TestGateway::start().await;
    assert_websocket_exchange(&gw, Mqtt::V311).await;
    gw.stop().await;
}

#[tokio::test]
async fn paho_v5_over_websocket_talks_to_a_tcp_client() {
    let gw = TestGateway::start().await;
    assert_websocket_exchange(&gw, Mqtt::V5).await;
    gw.stop().await;
}

#[tokio::test]
async fn paho_v5_publication_properties_reach_the_subscriber_and_the_response_comes_back() {
    let gw = TestGateway::start().await;
    let result = paho(&gw, Mqtt::V5, "properties").await;
    let request = &result["request"];
    assert_eq!(request["payload"], r#"{"op":"read"}"#);
    let mut properties = request["properties"].clone();
    let expiry = properties.as_object_mut().unwrap().remove("MessageExpiryInterval").unwrap();
    let expiry = expiry.as_u64().unwrap();
    assert!((590..=600).contains(&expiry), "the expiry interval is counted down, not reset: {expiry}");
    assert_eq!(
        properties,
        json!({
            "PayloadFormatIndicator": 1,
            "ContentType": "application/json",
            "ResponseTopic": "paho5/props/reply",
            "CorrelationData": "00636f72722d3432ff",
            // In order, the repeated name included (MQTT 5.0 §3.3.2.3.7).
            "UserProperty": [["trace", "a"], ["site", "plant-1"], ["trace", "b"]],
        }),
        "{result}"
    );
    let reply = &result["reply"];
    assert_eq!(reply["topic"], "paho5/props/reply");
    assert_eq!(reply["payload"], "21.5");
    assert_eq!(reply["properties"], json!({"CorrelationData": "00636f72722d3432ff"}));
    gw.stop().await;
}

#[tokio::test]
async fn paho_v5_delivery_carries_the_identifiers_of_all_matching_subscriptions() {
    let gw = TestGateway::start().await;
    let result = paho(&gw, Mqtt::V5, "subscription-ids").await;
    // Subscriptions: sid/a (id 7), sid/# (id 300, two bytes as a variable byte integer), sid/b (no id).
    // One delivery per message however many subscriptions match.
    assert_eq!(
        result["received"],
        json!([
            {"topic": "paho5/sid/a", "ids": [7, 300]},
            {"topic": "paho5/sid/b", "ids": [300]},
            {"topic": "paho5/sid/c", "ids": [300]},
            {"topic": "paho5/sid/marker", "ids": [300]},
        ])
    );
    gw.stop().await;
}

#[tokio::test]
async fn paho_v5_no_local_subscriber_does_not_get_its_own_publications() {
    let gw = TestGateway::start().await;
    let result = paho(&gw, Mqtt::V5, "no-local").await;
    assert_eq!(result, json!({"no_local": ["from-b"], "ordinary": ["from-a", "from-b"]}));
    gw.stop().await;
}

#[tokio::test]
async fn paho_v5_retain_as_published_and_retain_handling() {
    let gw = TestGateway::start().await;
    let result = paho(&gw, Mqtt::V5, "retain-as-published").await;
    let seen = |payloads: &[(&str, bool)]| -> Value {
        payloads.iter().map(|(payload, retain)| json!({"payload": payload, "retain": retain})).collect()
    };
    // A retained message sent because of a subscription always has RETAIN; a live one keeps it only with
    // retain-as-published; retain handling 2 sends nothing at subscribe.
    assert_eq!(result["as_published"], seen(&[("stored", true), ("live", true), ("plain", false)]));
    assert_eq!(result["default"], seen(&[("stored", true), ("live", false), ("plain", false)]));
    assert_eq!(result["no_retained_on_subscribe"], seen(&[("live", false), ("plain", false)]));
    gw.stop().await;
}

#[tokio::test]
async fn paho_v5_shared_subscription_splits_messages_between_members() {
    let gw = TestGateway::start().await;
    let result = paho(&gw, Mqtt::V5, "shared").await;
    let all: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    assert_eq!(result["ordinary"], json!(all), "an ordinary subscription gets everything");
    let members: Vec<Vec<String>> = serde_json::from_value(result["members"].clone()).unwrap();
    assert!(members.iter().all(|m| !m.is_empty()), "both members get a share: {members:?}");
    let mut union: Vec<String> = members.concat();
    union.sort_by_key(|p| p[1..].parse::<u32>().unwrap());
    assert_eq!(union, all, "each message goes to exactly one member: {members:?}");
    gw.stop().await;
}

#[tokio::test]
async fn paho_v5_topic_alias_set_used_and_remapped_by_the_publisher() {
    let gw = TestGateway::start().await;
    let result = paho(&gw, Mqtt::V5, "topic-alias").await;
    assert!(result["topic_alias_maximum"].as_u64().unwrap() >= 1, "{result}");
    assert_eq!(
        result["received"],
        json!([
            {"topic": "paho5/alias/t", "payload": "one"},
            {"topic": "paho5/alias/t", "payload": "two"},
            {"topic": "paho5/alias/u", "payload": "three"},
            {"topic": "paho5/alias/u", "payload": "four"},
        ])
    );
    gw.stop().await;
}

#[tokio::test]
async fn paho_v5_gets_server_topic_aliases_only_when_it_allows_them() {
    let gw = TestGateway::start().await;
    let result = paho(&gw, Mqtt::V5, "server-topic-alias").await;
    let sent = result["sent"].as_array().unwrap();
    let topics: Vec<&str> = sent.iter().map(|m| m["topic"].as_str().unwrap()).collect();
    // The application sees every topic, in order, once aliases are resolved.
    assert_eq!(
        result["resolved"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect::<Vec<_>>(),
        topics
    );
    let wire = result["wire"].as_array().unwrap();
    let payloads: Vec<&str> = wire.iter().map(|m| m["payload"].as_str().unwrap()).collect();
    let sent_payloads: Vec<&str> = sent.iter().map(|m| m["payload"].as_str().unwrap()).collect();
    assert_eq!(payloads, sent_payloads);
    // Every delivery carries an alias within the client's maximum (2); the first on a topic names it.
    for m in wire {
        let alias = m["alias"].as_u64().unwrap_or_else(|| panic!("no alias: {result}"));
        assert!((1..=2).contains(&alias), "{result}");
    }
    assert_eq!(wire[0]["topic"], sent[0]["topic"]);
    let empty = wire.iter().filter(|m| m["topic"] == "").count();
    assert!(empty >= 5, "most deliveries use the alias alone: {result}");
    // A client that announced no maximum gets whole topics and no alias.
    for (m, s) in result["plain"].as_array().unwrap().iter().zip(sent) {
        assert_eq!(m["topic"], s["topic"]);
        assert!(m["properties"].get("TopicAlias").is_none(), "{result}");
    }
    gw.stop().await;
}

async fn mosquitto_qos_round_trip(mqtt: Mqtt) {
    let gw = TestGateway::start().await;
    let base = format!("mosquitto{}/qos", mqtt.tag());
    let mut subscribers = Vec::new();
    for sub_qos in 0..=2u8 {
        let id = format!("mosquitto{}-qos-sub{sub_qos}", mqtt.tag());
        subscribers
            .push(Subscriber::start(&gw, mqtt, &id, &format!("{base}/sub{sub_qos}"), sub_qos, 3).await);
    }
    for sub_qos in 0..=2 {
        for pub_qos in 0..=2 {
            let (topic, payload, qos) =
                (format!("{base}/sub{sub_qos}"), format!("pub{pub_qos}"), pub_qos.to_string());
            mosquitto_pub(&gw, mqtt, &["-t", &topic, "-m", &payload, "-q", &qos]).await;
        }
    }
    for (sub_qos, subscriber) in (0..).zip(subscribers) {
        let messages = subscriber.messages().await;
        assert_eq!(
            payloads_and_qos(&messages),
            lower_qos(sub_qos),
            "subscription at QoS {sub_qos}: {messages:?}"
        );
        assert!(
            messages.iter().all(|m| m["retain"] == 0),
            "live messages are not flagged retained: {messages:?}"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn mosquitto_v311_qos_round_trip_delivers_the_lower_qos() {
    mosquitto_qos_round_trip(Mqtt::V311).await;
}

#[tokio::test]
async fn mosquitto_v5_qos_round_trip_delivers_the_lower_qos() {
    mosquitto_qos_round_trip(Mqtt::V5).await;
}

async fn mosquitto_retained(mqtt: Mqtt) {
    let gw = TestGateway::start().await;
    let topic = format!("mosquitto{}/retained/state", mqtt.tag());
    // `--retained-only`: a message without the RETAIN flag would end mosquitto_sub without printing anything.
    let retained = async || {
        mosquitto_sub(&gw, mqtt, &["-t", &topic, "--retained-only", "-C", "1", "-W", "5", "-v"]).await
    };

    mosquitto_pub(&gw, mqtt, &["-t", &topic, "-m", "first", "-r", "-q", "1"]).await;
    assert_eq!(retained().await, [format!("{topic} first")]);

    mosquitto_pub(&gw, mqtt, &["-t", &topic, "-m", "second", "-r", "-q", "1"]).await;
    mosquitto_pub(&gw, mqtt, &["-t", &topic, "-m", "live, not retained", "-q", "1"]).await;
    assert_eq!(retained().await, [format!("{topic} second")], "replaced, and only by a retained publication");

    // An empty retained payload clears the topic. The subscriber below asks for it first, then for a topic
    // with a retained marker: a SUBSCRIBE's filters are handled in order, so the marker comes first only if
    // nothing is left on the cleared topic.
    mosquitto_pub(&gw, mqtt, &["-t", &topic, "-n", "-r", "-q", "1"]).await;
    let marker = format!("{topic}/marker");
    mosquitto_pub(&gw, mqtt, &["-t", &marker, "-m", "marker", "-r", "-q", "1"]).await;
    let first = mosquitto_sub(&gw, mqtt, &["-t", &topic, "-t", &marker, "-C", "1", "-W", "5", "-v"]).await;
    assert_eq!(first, [format!("{marker} marker")], "the cleared topic has nothing retained");
    gw.stop().await;
}

#[tokio::test]
async fn mosquitto_v311_retained_message_is_set_replaced_and_cleared() {
    mosquitto_retained(Mqtt::V311).await;
}

#[tokio::test]
async fn mosquitto_v5_retained_message_is_set_replaced_and_cleared() {
    mosquitto_retained(Mqtt::V5).await;
}

#[tokio::test]
async fn mosquitto_v5_publication_properties_pass_through() {
    let gw = TestGateway::start().await;
    let topic = "mosquitto5/props/t";
    let subscriber = Subscriber::start(&gw, Mqtt::V5, "mosquitto5-props-sub", topic, 1, 1).await;
    let property = |name: &'static str, value: &'static str| ["-D", "publish", name, value];
    let mut args = vec!["-t", topic, "-m", "21.5", "-q", "1"];
    for (name, value) in [
        ("payload-format-indicator", "1"),
        ("message-expiry-interval", "600"),
        ("content-type", "text/plain"),
        ("response-topic", "mosquitto5/props/reply"),
        ("correlation-data", "req-1"),
    ] {
        args.extend(property(name, value));
    }
    args.extend(["-D", "publish", "user-property", "site", "plant-1"]);
    args.extend(["-D", "publish", "user-property", "line", "3"]);
    mosquitto_pub(&gw, Mqtt::V5, &args).await;

    let messages = subscriber.messages().await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    let mut properties = messages[0]["properties"].clone();
    let expiry = properties.as_object_mut().unwrap().remove("message-expiry-interval").unwrap();
    assert!((590..=600).contains(&expiry.as_u64().unwrap()), "expiry counted down: {expiry}");
    assert_eq!(
        properties,
        json!({
            "payload-format-indicator": 1,
            "content-type": "text/plain",
            "response-topic": "mosquitto5/props/reply",
            "correlation-data": "req-1",
            "user-properties": {"site": "plant-1", "line": "3"},
        })
    );
    assert_eq!((messages[0]["payload"].as_str(), messages[0]["qos"].as_u64()), (Some("21.5"), Some(1)));
    gw.stop().await;
}

#[tokio::test]
async fn clients_on_the_wrong_listener_fail_cleanly_without_affecting_others() {
    let gw = TestGateway::start().await;
    let bystander = Subscriber::start(&gw, Mqtt::V311, "wrong-bystander", "wrong/t", 1, 1).await;

    // Plain MQTT to the WebSocket listener: the HTTP handshake fails, the connection is closed, the client
    // reports it and exits.
    for mqtt in [Mqtt::V311, Mqtt::V5] {
        let mut command = mosquitto("mosquitto_pub", gw.ws.port(), mqtt);
        let output = run(command.args(["-t", "wrong/t", "-m", "lost", "-q", "1"]), MOSQUITTO_PUB).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{mqtt:?} to the WebSocket listener: {stderr}");
        assert!(stderr.contains("connection was lost"), "{mqtt:?}: {stderr}");
    }
    // paho the other way round too: WebSocket to the TCP listener, and TCP to the WebSocket listener.
    let result = paho(&gw, Mqtt::V5, "wrong-port").await;
    assert_eq!(
        result,
        json!({
            "websocket_to_tcp_listener": "refused: WebsocketConnectionError",
            "tcp_to_websocket_listener": "closed",
        })
    );

    mosquitto_pub(&gw, Mqtt::V311, &["-t", "wrong/t", "-m", "still here", "-q", "1"]).await;
    let messages = bystander.messages().await;
    assert_eq!(
        payloads_and_qos(&messages),
        [("still here".to_owned(), 1)],
        "only the good publication arrived"
    );
    // And the WebSocket listener still serves WebSocket clients.
    assert_websocket_exchange(&gw, Mqtt::V311).await;
    gw.stop().await;
}
