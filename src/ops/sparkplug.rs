//! Sparkplug B actions: the rebirth request. The console calls the running gateway's service directly; the
//! command line, a process of its own with no route to the broker, leaves a request in `config.sqlite`
//! (`sparkplug_requests`) that the running gateway's configuration watcher takes within a second, executes here
//! through the same service (same rate limit, same audit entry, under the CLI operator's name) and answers; the
//! command line waits for the answer, bounded. A request is taken once, so never executed twice; one not taken
//! in time is withdrawn and never executed.

use std::time::Duration;

use super::{Actor, Ops, OpsError};
use crate::sparkplug::{Sparkplug, SparkplugError, topic};
use crate::store::config_db;

/// How often the command line looks for the gateway's answer.
const ANSWER_POLL: Duration = Duration::from_millis(100);

impl Ops {
    /// Sends the `Node Control/Rebirth` NCMD to `group`/`node` through the running gateway's service.
    pub async fn sparkplug_rebirth(
        &self,
        sparkplug: &Sparkplug,
        group: &str,
        node: &str,
        actor: &Actor,
    ) -> Result<(), OpsError> {
        sparkplug.rebirth(group, node, actor.as_str(), self.security().pool()).await.map_err(|e| match e {
            SparkplugError::Store(e) => OpsError::Store(e),
            other => OpsError::Invalid(other.to_string()),
        })
    }

    /// From another process (the command line): asks the gateway running on this data directory to send a
    /// rebirth request, and waits up to `timeout` for its answer: what was done, or why not (the rate limit, an
    /// unknown edge node) as [`OpsError::Invalid`]. Without an answer in time the request is withdrawn.
    pub async fn request_rebirth(
        &self,
        group: &str,
        node: &str,
        actor: &Actor,
        timeout: Duration,
    ) -> Result<String, OpsError> {
        check_ids(group, node)?;
        let pool = self.security().pool();
        let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX / 2);
        let expires = crate::timefmt::now_ms().saturating_add(timeout_ms);
        let id = config_db::insert_sparkplug_request(pool, "rebirth", group, node, actor.as_str(), expires)
            .await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let request = config_db::sparkplug_request(pool, id).await?;
            match request.as_ref().map(|r| (r.state.as_str(), r.result.clone().unwrap_or_default())) {
                Some(("done", result)) => return Ok(result),
                Some(("refused", result)) => return Err(OpsError::Invalid(result)),
                Some(("pending" | "taken", _)) => {}
                // Expired by the gateway (its clock), or deleted.
                _ => break,
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(ANSWER_POLL).await;
        }
        let withdrawn = config_db::withdraw_sparkplug_request(pool, id).await?;
        let state = config_db::sparkplug_request(pool, id).await?;
        let secs = timeout.as_secs_f64();
        Err(OpsError::Unanswered(match state.as_ref().map(|r| (r.state.as_str(), r.result.clone())) {
            // Answered between the last look and the withdrawal.
            Some(("done", result)) => return Ok(result.unwrap_or_default()),
            Some(("refused", result)) => return Err(OpsError::Invalid(result.unwrap_or_default())),
            Some(("taken", _)) => format!(
                "the gateway took the request but did not answer within {secs} s; see `weir audit` and its log"
            ),
            _ if withdrawn => format!(
                "no answer from the gateway within {secs} s (is it running on {}?); the request is withdrawn \
                 and will not be sent",
                self.data_dir().display()
            ),
            _ => "the request expired before the gateway took it; nothing was sent".to_owned(),
        }))
    }

    /// In the running gateway: executes the requests the command line left, each once, and answers them.
    /// Returns how many were executed.
    pub async fn serve_sparkplug_requests(&self, sparkplug: &Sparkplug) -> Result<usize, OpsError> {
        let pool = self.security().pool();
        let requests = config_db::take_sparkplug_requests(pool).await?;
        for r in &requests {
            let outcome = match r.action.as_str() {
                "rebirth" => self
                    .sparkplug_rebirth(sparkplug, &r.group, &r.node, &Actor::new(r.actor.clone()))
                    .await
                    .map(|()| format!("rebirth requested from {}/{}", r.group, r.node)),
                other => Err(OpsError::Invalid(format!("unknown request {other:?}"))),
            };
            let (done, text) = match outcome {
                Ok(text) => (true, text),
                Err(e) => (false, e.to_string()),
            };
            tracing::info!(id = r.id, action = r.action, actor = r.actor, done, "{text}");
            config_db::answer_sparkplug_request(pool, r.id, done, &text).await?;
        }
        Ok(requests.len())
    }
}

/// Sparkplug identifiers as the namespace allows them: checked before anything is asked.
pub fn check_ids(group: &str, node: &str) -> Result<(), OpsError> {
    for id in [group, node] {
        if !topic::valid_identifier(id) {
            return Err(OpsError::Invalid(SparkplugError::InvalidId(id.to_owned()).to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_is_taken_once_and_one_nobody_takes_is_withdrawn() {
        let dir = tempfile::tempdir().unwrap();
        let ops = Ops::open(dir.path()).await.unwrap();
        let pool = ops.security().pool();
        let later = crate::timefmt::now_ms() + 60_000;
        let a = config_db::insert_sparkplug_request(pool, "rebirth", "G", "A", "cli:t", later).await.unwrap();
        let stale = config_db::insert_sparkplug_request(pool, "rebirth", "G", "B", "cli:t", 0).await.unwrap();
        // Taken once: the second look finds nothing; the stale one is never taken.
        let taken = config_db::take_sparkplug_requests(pool).await.unwrap();
        assert_eq!(taken.iter().map(|r| r.id).collect::<Vec<_>>(), [a]);
        assert!(config_db::take_sparkplug_requests(pool).await.unwrap().is_empty());
        let stale = config_db::sparkplug_request(pool, stale).await.unwrap().unwrap();
        assert_eq!(stale.state, "expired");
        // A taken request is not withdrawn; its answer is what the requester reads.
        assert!(!config_db::withdraw_sparkplug_request(pool, a).await.unwrap());
        config_db::answer_sparkplug_request(pool, a, false, "too soon").await.unwrap();
        let a = config_db::sparkplug_request(pool, a).await.unwrap().unwrap();
        assert_eq!((a.state.as_str(), a.result.as_deref()), ("refused", Some("too soon")));

        // No gateway: no answer, the request is withdrawn and a gateway starting later never executes it.
        let asked = ops.request_rebirth("G", "N", &Actor::new("cli:t"), Duration::from_millis(300)).await;
        let Err(OpsError::Unanswered(text)) = asked else { panic!("{asked:?}") };
        assert!(text.contains("no answer from the gateway") && text.contains("withdrawn"), "{text}");
        assert!(config_db::take_sparkplug_requests(pool).await.unwrap().is_empty());
        // Bad identifiers are refused before anything is recorded.
        let bad = ops.request_rebirth("G/H", "N", &Actor::new("cli:t"), Duration::from_millis(300)).await;
        assert!(matches!(&bad, Err(OpsError::Invalid(t)) if t.contains("not a valid Sparkplug identifier")));
        let rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM sparkplug_requests").fetch_one(pool).await.unwrap();
        assert_eq!(rows, 3);
    }
}
