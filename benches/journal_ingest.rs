//! Journal ingest rate without the network or the broker: how many messages per second the journal writer
//! commits, for each durability setting and payload size. Run: `cargo bench --bench journal_ingest`
//! (`-- --messages N --topics T`). Prints one Markdown row per case.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::mqtt::broker::Message;
use weir::mqtt::codec::QoS;
use weir::store::{Durability, Journal, JournalConfig};

use support::arg;

async fn run(durability: Durability, payload: usize, messages: usize, topics: usize) -> (f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig { durability, ..JournalConfig::default() };
    let journal = Journal::open(dir.path(), config).await.unwrap();
    let body = vec![b'x'; payload];
    // Prepared up front, so that only the journal is measured.
    let batch: Vec<Arc<Message>> = (0..messages)
        .map(|i| {
            let mut m = Message::new(
                &format!("plant/line{}/sensor{}", i % 7, i % topics),
                body.clone(),
                QoS::AtLeastOnce,
                false,
            );
            m.origin = Some(weir::mqtt::broker::ClientId::new(&format!("device-{}", i % topics)));
            Arc::new(m)
        })
        .collect();
    let start = Instant::now();
    let mut completions = Vec::with_capacity(messages);
    for m in &batch {
        completions.push(journal.append(m).await);
    }
    for c in completions {
        c.await.unwrap().unwrap();
    }
    let elapsed = start.elapsed();
    let batches = journal.stats().batches.load(std::sync::atomic::Ordering::Relaxed);
    journal.close().await;
    (messages as f64 / elapsed.as_secs_f64(), batches)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let messages = arg("--messages", 300_000);
    let topics = arg("--topics", 1_000);
    println!("| durability | payload (B) | messages | topics | rows/s | commits |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, durability) in [
        ("synced", Durability::Synced),
        ("batched", Durability::Batched { window: Duration::from_millis(100) }),
    ] {
        for payload in [16, 256, 4096] {
            let (rate, batches) = run(durability, payload, messages, topics).await;
            println!("| {name} | {payload} | {messages} | {topics} | {rate:.0} | {batches} |");
        }
    }
}
