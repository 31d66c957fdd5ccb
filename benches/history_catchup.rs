//! A durable consumer's catch-up over a journal backlog, without the network or Kafka: what a Kafka route's
//! reading costs on a filter over many topics. Journals N messages of 256 B over T topics `long/tK` (with every
//! Nth on `other/tK` if `--other-every N`), then reads them all through a consumer on `long/#` in batches of 2,000.
//! Run: `cargo bench --bench history_catchup -- --messages 200000 --topics 1000 [--other-every 3]`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::sync::Arc;
use std::time::Instant;

use weir::mqtt::broker::Message;
use weir::mqtt::codec::QoS;
use weir::store::consumer::{Consumer, StartAt};
use weir::store::{Journal, JournalConfig};

use support::arg;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let messages = arg("--messages", 200_000);
    let topics = arg("--topics", 1_000);
    let other_every = arg("--other-every", 0);
    let batch = arg("--batch", 2_000);
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), JournalConfig::default()).await.unwrap();
    let payload = vec![b'x'; 256];
    let mut matching = 0;
    for i in 0..messages {
        let topic = if other_every > 0 && i % other_every == 0 {
            format!("other/t{}", i % topics)
        } else {
            matching += 1;
            format!("long/t{}", i % topics)
        };
        let m = Arc::new(Message::new(&topic, payload.clone(), QoS::AtLeastOnce, false));
        // Waits only for places in the writer's queue, so that nothing is dropped.
        drop(journal.append(&m).await);
    }
    journal.flush().await;
    // The steady state: all but the last fraction of a second in the topic index.
    journal.index_now().await;
    let mut consumer =
        Consumer::open(&journal, "bench", vec!["long/#".into()], StartAt::Beginning).await.unwrap();
    let start = Instant::now();
    let (mut read, mut batches, mut slowest) = (0, 0, 0.0f64);
    loop {
        let t = Instant::now();
        let got = consumer.next_batch(batch).await.unwrap();
        slowest = slowest.max(t.elapsed().as_secs_f64());
        read += got.len();
        batches += 1;
        if consumer.caught_up() {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(read, matching, "every matching message once");
    println!(
        "{messages} x 256 B over {topics} topics{}: {read} read in {batches} batches of up to {batch} in {secs:.2} s \
         ({:.0} msg/s), slowest batch {:.1} ms, {} journal rows read",
        if other_every > 0 { format!(" (one in {other_every} on another topic)") } else { String::new() },
        read as f64 / secs,
        slowest * 1000.0,
        consumer.rows_read()
    );
    journal.close().await;
}
