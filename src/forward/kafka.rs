//! librdkafka, wrapped: the uplink's producer and what it reports, the partitioner, topic metadata, the
//! start-up scan of records already in Kafka, and the connection test. librdkafka's calls that block run on the
//! blocking pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, DefaultConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message as _};
use rdkafka::producer::{DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::config::Upstream;
use super::ops::{ConnectionFailure, FailureKind};
use super::settings::{Role, client_settings};

/// Headers every uplink record carries, besides the MQTT ones; the start-up scan reads them back.
pub(crate) const HEADER_GATEWAY: &str = "weir.gateway";
pub(crate) const HEADER_ROUTE: &str = "weir.route";
pub(crate) const HEADER_ID: &str = "weir.id";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum KafkaClientError {
    #[error("Kafka client: {0}")]
    Client(#[from] KafkaError),
    #[error("Kafka topic {topic:?}: {reason}")]
    Topic { topic: String, reason: String },
    #[error("reading what is already in Kafka took longer than {0:?}")]
    ScanTimeout(Duration),
    #[error("the Kafka client task failed: {0}")]
    Task(String),
}

/// What librdkafka says about one record: where it landed, or why it did not.
#[derive(Debug)]
pub(crate) struct Delivered {
    pub(crate) id: i64,
    pub(crate) result: Result<(i32, i64), KafkaError>,
}

/// Receives librdkafka's delivery reports and errors on its own thread and passes them on.
pub(crate) struct ProducerEvents {
    deliveries: mpsc::UnboundedSender<Delivered>,
    errors: mpsc::UnboundedSender<String>,
}

impl std::fmt::Debug for ProducerEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProducerEvents")
    }
}

impl ClientContext for ProducerEvents {
    fn error(&self, error: KafkaError, reason: &str) {
        let _ = self.errors.send(format!("{error}: {reason}"));
    }
}

impl ProducerContext for ProducerEvents {
    type DeliveryOpaque = Box<i64>;

    fn delivery(&self, result: &DeliveryResult<'_>, id: Box<i64>) {
        let result = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.clone()),
        };
        let _ = self.deliveries.send(Delivered { id: *id, result });
    }
}

pub(crate) type Producer = ThreadedProducer<ProducerEvents>;

/// An idempotent, `acks=all` producer, its delivery reports and its client-level errors.
pub(crate) fn producer(
    upstream: &Upstream,
    client_id: &str,
) -> Result<(Producer, mpsc::UnboundedReceiver<Delivered>, mpsc::UnboundedReceiver<String>), KafkaClientError>
{
    let (deliveries, delivered) = mpsc::unbounded_channel();
    let (errors, errored) = mpsc::unbounded_channel();
    let producer = config(upstream, Role::Producer, client_id)
        .create_with_context(ProducerEvents { deliveries, errors })?;
    Ok((producer, delivered, errored))
}

/// A producer whose records each end within `timeout` (acknowledged, or failed): for replaying dead letters,
/// where the operator waits for an answer. The uplink's own producer never gives up on a record.
pub(crate) fn bounded_producer(
    upstream: &Upstream,
    client_id: &str,
    timeout: Duration,
) -> Result<(Producer, mpsc::UnboundedReceiver<Delivered>, mpsc::UnboundedReceiver<String>), KafkaClientError>
{
    let (deliveries, delivered) = mpsc::unbounded_channel();
    let (errors, errored) = mpsc::unbounded_channel();
    let mut config = config(upstream, Role::Producer, client_id);
    config.set("message.timeout.ms", timeout.as_millis().to_string());
    let producer = config.create_with_context(ProducerEvents { deliveries, errors })?;
    Ok((producer, delivered, errored))
}

pub(crate) fn config(upstream: &Upstream, role: Role<'_>, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    let settings = client_settings(upstream, role, client_id);
    tracing::debug!(upstream = %upstream.name, settings = ?super::settings::redacted(&settings), "Kafka client");
    for (key, value) in settings {
        config.set(key, value);
    }
    // librdkafka's own log goes to ours at warning level and above (it names brokers, never secrets).
    config.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    config
}

/// Whether a failed record can never succeed: it goes to the dead letters. Everything else is retried.
pub(crate) fn is_permanent(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::UnsupportedCompressionType
        )
    )
}

/// The number of partitions of `topic`; an error if it does not exist (the route waits for it: nothing is
/// lost, and an operator who creates it sees forwarding resume).
pub(crate) async fn partitions(
    producer: &Arc<Producer>,
    topic: &str,
    timeout: Duration,
) -> Result<i32, KafkaClientError> {
    let producer = producer.clone();
    let name = topic.to_owned();
    let metadata =
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(Some(&name), timeout))
            .await
            .map_err(|e| KafkaClientError::Task(e.to_string()))??;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(KafkaClientError::Topic {
            topic: topic.to_owned(),
            reason: "not in the metadata".into(),
        });
    };
    if let Some(e) = t.error() {
        let code: RDKafkaErrorCode = e.into();
        return Err(KafkaClientError::Topic { topic: topic.to_owned(), reason: code.to_string() });
    }
    match i32::try_from(t.partitions().len()) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(KafkaClientError::Topic { topic: topic.to_owned(), reason: "has no partitions".into() }),
    }
}

/// The partition Kafka's Java client would choose for this key (murmur2), so that records keep their order per
/// key whichever client wrote them, and the start-up scan knows where each pending record would go.
pub(crate) fn partition_for(key: &[u8], partitions: i32) -> i32 {
    let hash = murmur2(key) & 0x7fff_ffff;
    i32::try_from(hash % u32::try_from(partitions.max(1)).unwrap_or(1)).unwrap_or(0)
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`).
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h = SEED ^ u32::try_from(len).unwrap_or(u32::MAX);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes(chunk.try_into().unwrap_or([0; 4]));
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match *chunks.remainder() {
        [a, b, c] => {
            h ^= u32::from(c) << 16;
            h ^= u32::from(b) << 8;
            h ^= u32::from(a);
            h = h.wrapping_mul(M);
        }
        [a, b] => {
            h ^= u32::from(b) << 8;
            h ^= u32::from(a);
            h = h.wrapping_mul(M);
        }
        [a] => {
            h ^= u32::from(a);
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// A partition that neither yields a record nor its end this long after being assigned is read from its start.
const SILENT_PARTITION: Duration = Duration::from_secs(5);

/// Records of ours at the end of a partition are looked for from here when no offset was remembered.
const TAIL_WINDOW: i64 = 100_000;

/// For each partition, the highest journal id this gateway's route has in it, reading from the remembered
/// offset (or the last [`TAIL_WINDOW`] records) to the end.
///
/// Why not ListOffsets: tansu 0.6 answers LATEST with a wrong high watermark (1 for a partition of 428
/// records), and so does its offset-for-time. The end is found instead by reading to the partition-EOF that
/// librdkafka derives from the fetch responses' high watermark, which tansu gets right.
pub(crate) async fn scan_highest_ids(
    upstream: &Upstream,
    client_id: &str,
    gateway: &str,
    route: &str,
    from: HashMap<(String, i32), Option<i64>>,
    deadline: Duration,
) -> Result<HashMap<(String, i32), i64>, KafkaClientError> {
    if from.is_empty() {
        return Ok(HashMap::new());
    }
    let consumer: BaseConsumer<DefaultConsumerContext> =
        config(upstream, Role::Scanner, client_id).create()?;
    let gateway = gateway.to_owned();
    let route = route.to_owned();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut highest = HashMap::new();
        // One topic at a time: librdkafka's end-of-partition event names the partition, not its topic.
        let mut topics: HashMap<&str, Vec<(i32, Option<i64>)>> = HashMap::new();
        for ((topic, partition), offset) in &from {
            topics.entry(topic.as_str()).or_default().push((*partition, *offset));
        }
        for (topic, partitions) in topics {
            let mut tpl = TopicPartitionList::new();
            for (partition, offset) in &partitions {
                let start = match offset {
                    Some(o) => Offset::Offset(*o),
                    None => Offset::OffsetTail(TAIL_WINDOW),
                };
                tpl.add_partition_offset(topic, *partition, start)?;
            }
            consumer.assign(&tpl)?;
            let mut open: std::collections::HashSet<i32> = partitions.iter().map(|(p, _)| *p).collect();
            let assigned = Instant::now();
            let mut restarted = false;
            while !open.is_empty() {
                if started.elapsed() > deadline {
                    return Err(KafkaClientError::ScanTimeout(deadline));
                }
                if !restarted && assigned.elapsed() > SILENT_PARTITION {
                    // A remembered offset past the end that the broker does not answer with OFFSET_OUT_OF_RANGE
                    // (tansu after a restart) would wait for ever: read those partitions from the start instead.
                    restarted = true;
                    let mut again = TopicPartitionList::new();
                    for p in &open {
                        again.add_partition_offset(topic, *p, Offset::Beginning)?;
                    }
                    consumer.assign(&again)?;
                }
                match consumer.poll(Duration::from_millis(200)) {
                    None => {}
                    Some(Err(KafkaError::PartitionEOF(p))) => {
                        open.remove(&p);
                    }
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(m)) => {
                        if let Some(id) = our_id(&m, &gateway, &route) {
                            let entry = highest.entry((topic.to_owned(), m.partition())).or_insert(id);
                            *entry = (*entry).max(id);
                        }
                    }
                }
            }
        }
        Ok(highest)
    })
    .await
    .map_err(|e| KafkaClientError::Task(e.to_string()))?
}

/// A connection test: one metadata request (all topics) to `upstream`, retried until it is answered, the client
/// reports a failure that waiting will not mend (authentication, TLS), or `timeout` has passed. Answers the
/// brokers (`id host:port`), the number of topics, and how long it took.
pub(crate) async fn probe(
    upstream: &Upstream,
    client_id: &str,
    timeout: Duration,
) -> Result<(Vec<String>, usize, Duration), ConnectionFailure> {
    let config = config(upstream, Role::Probe, client_id);
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let consumer: BaseConsumer<ProbeEvents> = config
            .create_with_context(ProbeEvents::default())
            .map_err(|e| ConnectionFailure { kind: FailureKind::Settings, detail: e.to_string() })?;
        loop {
            let left = timeout.saturating_sub(started.elapsed());
            let answer = consumer.fetch_metadata(None, left.min(Duration::from_millis(500)));
            // Polling hands what the client reported meanwhile (refused, authentication, TLS) to the context. A
            // poll also ends early (`None`) on a log line, so it is given a little time, not none.
            for _ in 0..64 {
                if consumer.poll(Duration::from_millis(100)).is_none() {
                    break;
                }
            }
            let said = consumer.context().said();
            match answer {
                Ok(metadata) => {
                    let brokers = metadata
                        .brokers()
                        .iter()
                        .map(|b| format!("{} {}:{}", b.id(), b.host(), b.port()))
                        .collect();
                    return Ok((brokers, metadata.topics().len(), started.elapsed()));
                }
                Err(e) => {
                    let failure = classify(&e, &said);
                    let hopeless = matches!(failure.kind, FailureKind::Authentication | FailureKind::Tls);
                    if hopeless || started.elapsed() >= timeout {
                        return Err(failure);
                    }
                }
            }
        }
    })
    .await
    .map_err(|e| ConnectionFailure { kind: FailureKind::Other, detail: e.to_string() })?
}

/// What librdkafka reported while a connection test ran.
#[derive(Debug, Default)]
struct ProbeEvents {
    said: Mutex<Vec<(Option<RDKafkaErrorCode>, String)>>,
}

impl ProbeEvents {
    fn said(&self) -> Vec<(Option<RDKafkaErrorCode>, String)> {
        self.said.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn note(&self, code: Option<RDKafkaErrorCode>, reason: &str) {
        let mut said = self.said.lock().unwrap_or_else(PoisonError::into_inner);
        if said.len() < 32 {
            said.push((code, reason.to_owned()));
        }
    }
}

impl ClientContext for ProbeEvents {
    /// What a test's client logs is what the test reports: the log keeps it at debug level. A failed
    /// connection is logged, and only some are errors as well (a handshake that timed out is a warning).
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(?level, "librdkafka (connection test): {fac} {message}");
        if fac == "FAIL" {
            // "[thrd:ssl://k1:9093/bootstrap]: ssl://k1:9093/bootstrap: ...": the thread says it twice.
            let message =
                message.strip_prefix("[thrd:").and_then(|m| m.split_once("]: ")).map_or(message, |(_, m)| m);
            self.note(None, message);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.note(error.rdkafka_error_code(), reason);
    }
}

impl ConsumerContext for ProbeEvents {}

/// The most telling reason a metadata request failed: authentication and TLS before being unreachable, which
/// the client also reports (all brokers down) once a handshake fails.
fn classify(error: &KafkaError, said: &[(Option<RDKafkaErrorCode>, String)]) -> ConnectionFailure {
    let kind_of = |code: Option<RDKafkaErrorCode>, reason: &str| match code {
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
            FailureKind::Authentication
        }
        Some(RDKafkaErrorCode::SSL) => FailureKind::Tls,
        _ if reason.contains("SASL") || reason.contains("uthenticat") => FailureKind::Authentication,
        _ if reason.contains("SSL") || reason.contains("TLS") || reason.contains("certificate") => {
            FailureKind::Tls
        }
        _ => FailureKind::Unreachable,
    };
    let reports = said.iter().map(|(code, reason)| (kind_of(*code, reason), reason));
    let telling = reports
        .clone()
        .find(|(kind, _)| *kind != FailureKind::Unreachable)
        .or_else(|| reports.clone().find(|(_, reason)| !reason.contains("brokers are down")))
        .or_else(|| reports.clone().next());
    match telling {
        Some((kind, reason)) => ConnectionFailure { kind, detail: reason.clone() },
        None => ConnectionFailure {
            kind: FailureKind::Unreachable,
            detail: match error.rdkafka_error_code() {
                Some(RDKafkaErrorCode::OperationTimedOut) => "no broker answered in time".to_owned(),
                _ => error.to_string(),
            },
        },
    }
}

/// The journal id of a record this gateway's route wrote.
fn our_id(m: &rdkafka::message::BorrowedMessage<'_>, gateway: &str, route: &str) -> Option<i64> {
    let headers = m.headers()?;
    let mut g = None;
    let mut r = None;
    let mut id = None;
    for h in headers.iter() {
        match h.key {
            HEADER_GATEWAY if g.is_none() => g = h.value,
            HEADER_ROUTE if r.is_none() => r = h.value,
            HEADER_ID if id.is_none() => id = h.value,
            _ => {}
        }
    }
    if g? != gateway.as_bytes() || r? != route.as_bytes() {
        return None;
    }
    std::str::from_utf8(id?).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::config::{Compression, Sasl, SaslMechanism};

    #[test]
    fn murmur2_partitions_as_the_java_client_does() {
        // Values from Kafka's own test (UtilsTest.testMurmur2) and DefaultPartitioner behaviour.
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32, -58897971);
        for p in 1..10 {
            assert!((0..p).contains(&partition_for(b"plant/a", p)));
        }
    }

    #[test]
    fn librdkafka_accepts_the_tls_and_sasl_settings() {
        // Proves the build has OpenSSL and SCRAM in it, and that every setting we produce is one librdkafka
        // knows. The TLS handshake is tested in tests/broker/kafka_tls.rs; SASL's cannot be (tansu 0.6's fails).
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let ca_pem = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&ca, ca_pem.cert.pem()).unwrap();
        for mechanism in [SaslMechanism::Plain, SaslMechanism::ScramSha256, SaslMechanism::ScramSha512] {
            let up = Upstream {
                name: "secure".into(),
                bootstrap: vec!["127.0.0.1:1".into()],
                tls: true,
                ca: Some(ca.clone()),
                sasl: Some(Sasl { mechanism, username: "u".into(), password: "p".into() }),
                compression: Compression::Lz4,
                max_message_bytes: Some(4_000_000),
                ..Upstream::default()
            };
            let (p, _, _) = producer(&up, "test").unwrap();
            drop(p);
            let _: BaseConsumer = config(&up, Role::Consumer { group: "g" }, "test").create().unwrap();
        }
    }

    #[tokio::test]
    async fn a_connection_test_names_what_failed_within_its_time() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let up = Upstream { name: "t".into(), bootstrap: vec![closed.to_string()], ..Upstream::default() };
        let started = Instant::now();
        let failure = probe(&up, "test", Duration::from_secs(2)).await.unwrap_err();
        assert_eq!(failure.kind, FailureKind::Unreachable, "{failure}");
        assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
        eprintln!("closed port: {failure} after {:?}", started.elapsed());

        // TLS to something that does not speak it.
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = plain.local_addr().unwrap();
        let server = tokio::spawn(async move {
            loop {
                let (mut socket, _) = plain.accept().await.unwrap();
                let _ = tokio::io::AsyncWriteExt::write_all(&mut socket, b"HTTP/1.1 400 Bad Request\r\n\r\n")
                    .await;
            }
        });
        let tls = Upstream { bootstrap: vec![addr.to_string()], tls: true, ..up.clone() };
        let failure = probe(&tls, "test", Duration::from_secs(3)).await.unwrap_err();
        assert_eq!(failure.kind, FailureKind::Tls, "{failure}");
        eprintln!("TLS to plain TCP: {failure}");
        server.abort();

        // A client key that is not the certificate's: librdkafka refuses the settings.
        let cert = rcgen::generate_simple_self_signed(vec!["gw".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["other".into()]).unwrap();
        let mismatched = Upstream {
            tls: true,
            client_cert_pem: Some(cert.cert.pem()),
            client_key_pem: Some(other.signing_key.serialize_pem()),
            ..up.clone()
        };
        let failure = probe(&mismatched, "test", Duration::from_secs(2)).await.unwrap_err();
        assert_eq!(failure.kind, FailureKind::Settings, "{failure}");
        eprintln!("mismatched key: {failure}");
        let matched = Upstream { client_key_pem: Some(cert.signing_key.serialize_pem()), ..mismatched };
        let failure = probe(&matched, "test", Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(failure.kind, FailureKind::Unreachable, "a matching pair is accepted: {failure}");
    }
}
