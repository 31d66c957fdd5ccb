//! Durable consumers of the journal: the store-and-forward outbox for forwarders (Kafka) and exports.
//!
//! A consumer has a name and a cursor (the last journal id it has fully processed) in the `cursors` table. It reads
//! what matches its filters after its cursor, does its work, and commits how far it got. After a restart, or an
//! uplink outage of any length, it resumes exactly there: a consumer that falls behind costs disk, not memory, and
//! misses nothing, because retention never prunes past the slowest cursor (until the hard cap).

use super::history::{self, HistoryQuery, Order, StoredMessage};
use super::{Journal, StoreError};
use crate::mqtt::codec::topic;

/// Where a consumer without a cursor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Everything the journal still holds.
    Beginning,
    /// Only what is journaled from now on.
    Now,
}

#[derive(Debug)]
pub struct Consumer {
    journal: Journal,
    name: String,
    filters: Vec<String>,
    /// Read up to here (not necessarily committed).
    read: i64,
    committed: i64,
    /// Rows read from the journal so far, matching or not ([`history::Page::rows_read`]).
    rows_read: u64,
}

impl Consumer {
    /// Opens the consumer `name`, creating its cursor if it has none.
    pub async fn open(
        journal: &Journal,
        name: &str,
        filters: Vec<String>,
        start: StartAt,
    ) -> Result<Consumer, StoreError> {
        if let Some(bad) = filters.iter().find(|f| !topic::valid_topic_filter(f)) {
            return Err(StoreError::InvalidQuery(format!("{bad:?} is not a valid topic filter")));
        }
        let committed = match journal.cursor(name).await? {
            Some(position) => position,
            None => {
                let position = match start {
                    StartAt::Beginning => 0,
                    StartAt::Now => sqlx::query_scalar::<_, Option<i64>>("SELECT max(id) FROM messages")
                        .fetch_one(journal.pool())
                        .await?
                        .unwrap_or(0),
                };
                journal.commit_cursor(name, position).await?;
                position
            }
        };
        Ok(Consumer {
            journal: journal.clone(),
            name: name.to_owned(),
            filters,
            read: committed,
            committed,
            rows_read: 0,
        })
    }

    /// Up to `max` messages after what was read so far, oldest first, that match any of the filters.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<StoredMessage>, StoreError> {
        let mut out = Vec::new();
        while out.len() < max {
            let query = HistoryQuery {
                order: Order::OldestFirst,
                after: Some(self.read),
                limit: 1000,
                ..HistoryQuery::new("#")
            };
            let page = history::query(self.journal.pool(), &query).await?;
            self.rows_read += page.rows_read;
            let Some(last) = page.messages.last().map(|m| m.id) else { break };
            for m in page.messages {
                if out.len() == max {
                    return Ok(out);
                }
                self.read = m.id;
                if self.filters.iter().any(|f| topic::matches(f, &m.topic)) {
                    out.push(m);
                }
            }
            self.read = last;
            if page.next.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// Records that everything up to and including journal id `through` is done with. Going back is refused.
    pub async fn commit(&mut self, through: i64) -> Result<(), StoreError> {
        if through < self.committed {
            return Err(StoreError::InvalidQuery(format!(
                "cursor {} cannot move back from {} to {through}",
                self.name, self.committed
            )));
        }
        self.journal.commit_cursor(&self.name, through).await?;
        self.committed = through;
        Ok(())
    }

    /// The committed position.
    pub fn position(&self) -> i64 {
        self.committed
    }

    /// How many rows this consumer has read from the journal, matching its filters or not: what its reading
    /// cost, for tests and metrics.
    pub fn rows_read(&self) -> u64 {
        self.rows_read
    }

    /// Starts reading again from the committed position (after a failed delivery, say).
    pub fn rewind(&mut self) {
        self.read = self.committed;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::mqtt::broker::Message;
    use crate::mqtt::codec::QoS;
    use crate::store::JournalConfig;

    async fn journal(dir: &std::path::Path) -> Journal {
        let mut config = JournalConfig::default();
        config.retention.prune_interval = Duration::from_secs(3600);
        config.retention.max_age = Some(Duration::ZERO);
        Journal::open(dir, config).await.unwrap()
    }

    fn append(j: &Journal, topic: &str, payload: &str) {
        j.append_nowait(&Arc::new(Message::new(topic, payload.to_owned(), QoS::AtLeastOnce, false)));
    }

    #[tokio::test]
    async fn a_consumer_resumes_at_its_cursor_after_a_restart_and_protects_its_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let j = journal(dir.path()).await;
        append(&j, "before", "not for a consumer that starts now");
        j.flush().await;
        let mut c = Consumer::open(&j, "kafka:plant", vec!["plant/#".into()], StartAt::Now).await.unwrap();
        for i in 0..5 {
            append(&j, "plant/a", &i.to_string());
            append(&j, "office/b", "ignored");
        }
        j.flush().await;
        let batch = c.next_batch(3).await.unwrap();
        let payloads: Vec<_> = batch.iter().map(|m| String::from_utf8(m.payload.clone()).unwrap()).collect();
        assert_eq!(payloads, ["0", "1", "2"]);
        c.commit(batch[1].id).await.unwrap();
        assert!(c.commit(batch[0].id).await.is_err(), "no going back");
        // Pruning keeps everything after the cursor.
        tokio::time::sleep(Duration::from_millis(5)).await;
        j.prune_now().await;
        j.close().await;

        let j = journal(dir.path()).await;
        let mut c = Consumer::open(&j, "kafka:plant", vec!["plant/#".into()], StartAt::Now).await.unwrap();
        let payloads: Vec<_> = c
            .next_batch(100)
            .await
            .unwrap()
            .iter()
            .map(|m| String::from_utf8(m.payload.clone()).unwrap())
            .collect();
        assert_eq!(payloads, ["2", "3", "4"], "resumes after the last commit, misses nothing");
        assert!(c.next_batch(100).await.unwrap().is_empty());
        c.rewind();
        assert_eq!(c.next_batch(1).await.unwrap()[0].payload, b"2");
        assert!(Consumer::open(&j, "bad", vec!["a/#/b".into()], StartAt::Now).await.is_err());
    }
}
