//! The librdkafka settings an upstream turns into: a pure function, so that the TLS and SASL plumbing is tested
//! without a broker. The TLS handshake is tested through a TLS terminator in front of tansu
//! (tests/broker/kafka_tls.rs); SASL's is not (tansu 0.6's SASL fails for any credentials).

use super::config::Upstream;

/// Which client the settings are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role<'a> {
    /// The uplink's producer.
    Producer,
    /// The start-up scan of what is already in Kafka: reads, never joins a group, never commits.
    Scanner,
    /// A downlink's group member.
    Consumer { group: &'a str },
    /// A connection test: a metadata request, nothing else.
    Probe,
}

/// In-flight records per uplink route, the bound on what librdkafka holds in memory. The journal holds the rest.
pub(crate) const MAX_IN_FLIGHT: usize = 20_000;

/// `key=value` pairs for librdkafka. Holds the SASL password: never log the result (see [`redacted`]).
pub(crate) fn client_settings(
    upstream: &Upstream,
    role: Role<'_>,
    client_id: &str,
) -> Vec<(&'static str, String)> {
    let mut s = vec![
        ("bootstrap.servers", upstream.bootstrap.join(",")),
        ("client.id", client_id.to_owned()),
        // A dead broker is noticed by the request timeout, not by the socket: a blackhole leaves it open.
        ("socket.keepalive.enable", "true".to_owned()),
        ("reconnect.backoff.ms", "100".to_owned()),
        ("reconnect.backoff.max.ms", "2000".to_owned()),
        ("topic.metadata.refresh.interval.ms", "30000".to_owned()),
    ];
    let protocol = match (upstream.uses_tls(), upstream.sasl.is_some()) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    s.push(("security.protocol", protocol.to_owned()));
    if upstream.uses_tls() {
        s.push(("enable.ssl.certificate.verification", "true".to_owned()));
        s.push(("ssl.endpoint.identification.algorithm", "https".to_owned()));
        if let Some(ca) = &upstream.ca {
            s.push(("ssl.ca.location", ca.display().to_string()));
        }
        if let Some(ca) = &upstream.ca_pem {
            s.push(("ssl.ca.pem", ca.clone()));
        }
        // Validation pairs a certificate with its key; each is a file or text.
        if let Some(cert) = &upstream.client_cert {
            s.push(("ssl.certificate.location", cert.display().to_string()));
        }
        if let Some(cert) = &upstream.client_cert_pem {
            s.push(("ssl.certificate.pem", cert.clone()));
        }
        if let Some(key) = &upstream.client_key {
            s.push(("ssl.key.location", key.display().to_string()));
        }
        if let Some(key) = &upstream.client_key_pem {
            s.push(("ssl.key.pem", key.clone()));
        }
    }
    if let Some(sasl) = &upstream.sasl {
        s.push(("sasl.mechanism", sasl.mechanism.as_str().to_owned()));
        s.push(("sasl.username", sasl.username.clone()));
        s.push(("sasl.password", sasl.password.clone()));
    }
    match role {
        Role::Producer => {
            s.extend([
                // Always on, not configurable: the cursor moves only on acks=all, and retries never duplicate.
                ("enable.idempotence", "true".to_owned()),
                ("acks", "all".to_owned()),
                // Never give up on a record: a gap inside a partition would make the start-up scan skip the
                // missing record. An outage is judged by the age of the last acknowledgement instead.
                ("message.timeout.ms", "0".to_owned()),
                ("max.in.flight.requests.per.connection", "5".to_owned()),
                ("compression.type", upstream.compression.as_str().to_owned()),
                ("linger.ms", "5".to_owned()),
                ("batch.num.messages", "10000".to_owned()),
                ("queue.buffering.max.messages", (MAX_IN_FLIGHT * 2).to_string()),
                ("queue.buffering.max.kbytes", "1048576".to_owned()),
                ("request.timeout.ms", "10000".to_owned()),
                // A missing topic is an operator's matter: the route waits and says so, rather than a typo in a
                // template creating topics in the cluster.
                ("allow.auto.create.topics", "false".to_owned()),
            ]);
            // Producers only: a consumer's fetch.max.bytes (50 MB) must not be below it.
            if let Some(n) = upstream.max_message_bytes {
                s.push(("message.max.bytes", n.to_string()));
            }
        }
        Role::Scanner => {
            s.extend([
                ("group.id", format!("{client_id}-scan")),
                ("enable.auto.commit", "false".to_owned()),
                ("enable.auto.offset.store", "false".to_owned()),
                ("enable.partition.eof", "true".to_owned()),
                // A remembered offset past the end (the broker lost its data) reads from the start instead.
                ("auto.offset.reset", "earliest".to_owned()),
            ]);
        }
        Role::Consumer { group } => {
            s.extend([
                ("group.id", group.to_owned()),
                // Offsets are stored by hand once the MQTT publish is in the journal, then committed.
                ("enable.auto.commit", "true".to_owned()),
                ("auto.commit.interval.ms", "500".to_owned()),
                ("enable.auto.offset.store", "false".to_owned()),
                ("auto.offset.reset", "earliest".to_owned()),
                ("session.timeout.ms", "10000".to_owned()),
            ]);
        }
        Role::Probe => {
            // A handshake that hangs (TLS to a listener that waits for something else) is reported as such
            // a second before the test gives up, rather than as a bare timeout.
            let setup = super::ops::TEST_TIMEOUT.saturating_sub(std::time::Duration::from_secs(1));
            s.push(("socket.connection.setup.timeout.ms", setup.as_millis().max(1000).to_string()));
        }
    }
    s
}

/// The settings as they may be shown or logged: secrets replaced, certificates left out (long, and not secret).
pub(crate) fn redacted(settings: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    settings
        .iter()
        .map(|(k, v)| {
            let shown = match *k {
                k if k.contains("password") || k == "ssl.key.pem" => "<secret>".to_owned(),
                "ssl.ca.pem" | "ssl.certificate.pem" => format!("<{} bytes of PEM>", v.len()),
                _ => v.clone(),
            };
            (*k, shown)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::config::{Compression, Sasl, SaslMechanism};

    fn get<'a>(s: &'a [(&'static str, String)], key: &str) -> Option<&'a str> {
        s.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
    }

    fn plain() -> Upstream {
        Upstream {
            name: "main".into(),
            bootstrap: vec!["k1:9092".into(), "k2:9093".into()],
            compression: Compression::Zstd,
            ..Upstream::default()
        }
    }

    #[test]
    fn a_plain_producer_is_idempotent_with_acks_all() {
        let s = client_settings(&plain(), Role::Producer, "weir");
        assert_eq!(get(&s, "bootstrap.servers"), Some("k1:9092,k2:9093"));
        assert_eq!(get(&s, "security.protocol"), Some("plaintext"));
        assert_eq!(get(&s, "enable.idempotence"), Some("true"));
        assert_eq!(get(&s, "acks"), Some("all"));
        assert_eq!(get(&s, "compression.type"), Some("zstd"));
        assert_eq!(get(&s, "sasl.password"), None);
    }

    #[test]
    fn tls_and_sasl_reach_librdkafka_and_the_password_is_redacted() {
        let up = Upstream {
            ca: Some("/etc/weir/kafka-ca.pem".into()),
            client_cert: Some("/etc/weir/c.pem".into()),
            client_key: Some("/etc/weir/c.key".into()),
            sasl: Some(Sasl {
                mechanism: SaslMechanism::ScramSha256,
                username: "gw".into(),
                password: "hunter2".into(),
            }),
            ..plain()
        };
        let s = client_settings(&up, Role::Consumer { group: "g" }, "weir");
        assert_eq!(get(&s, "security.protocol"), Some("sasl_ssl"));
        assert_eq!(get(&s, "ssl.ca.location"), Some("/etc/weir/kafka-ca.pem"));
        assert_eq!(get(&s, "ssl.certificate.location"), Some("/etc/weir/c.pem"));
        assert_eq!(get(&s, "ssl.key.location"), Some("/etc/weir/c.key"));
        assert_eq!(get(&s, "sasl.mechanism"), Some("SCRAM-SHA-256"));
        assert_eq!(get(&s, "sasl.username"), Some("gw"));
        assert_eq!(get(&s, "sasl.password"), Some("hunter2"));
        assert_eq!(get(&s, "group.id"), Some("g"));
        let shown = format!("{:?}", redacted(&s));
        assert!(!shown.contains("hunter2") && shown.contains("<secret>"), "{shown}");
        let tls_only = Upstream { tls: true, ..plain() };
        assert_eq!(get(&client_settings(&tls_only, Role::Producer, "w"), "security.protocol"), Some("ssl"));
        let pem = Upstream {
            ca_pem: Some("-----BEGIN CERTIFICATE-----".into()),
            client_cert_pem: Some("cert".into()),
            client_key_pem: Some("-----BEGIN PRIVATE KEY----- hunter3".into()),
            ..plain()
        };
        let s = client_settings(&pem, Role::Probe, "weir");
        assert_eq!(get(&s, "security.protocol"), Some("ssl"));
        assert_eq!(get(&s, "ssl.ca.pem"), Some("-----BEGIN CERTIFICATE-----"));
        assert_eq!(get(&s, "ssl.certificate.pem"), Some("cert"));
        assert!(get(&s, "ssl.key.pem").is_some_and(|k| k.contains("hunter3")));
        assert_eq!(get(&s, "group.id"), None, "a probe joins no group");
        let shown = format!("{:?}", redacted(&s));
        assert!(!shown.contains("hunter3") && !shown.contains("BEGIN"), "{shown}");
        let sasl_only = Upstream {
            sasl: Some(Sasl { mechanism: SaslMechanism::Plain, username: "u".into(), password: "p".into() }),
            ..plain()
        };
        assert_eq!(
            get(&client_settings(&sasl_only, Role::Scanner, "w"), "security.protocol"),
            Some("sasl_plaintext")
        );
    }
}
