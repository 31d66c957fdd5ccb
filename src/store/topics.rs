//! The topic catalogue (`topics`: one row per topic the journal holds), read for the console: a tree listed
//! one level at a time, and search. Fast with 100,000 topics: a level costs two index seeks per child, never a
//! scan of the topics below it.

use sqlx::{Row, SqlitePool};

use super::StoreError;

/// One level below a prefix.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Child {
    /// The level's name.
    pub name: String,
    /// The full topic (or topic prefix) up to and including this level.
    pub path: String,
    /// A topic of exactly this name exists.
    pub topic: bool,
    /// There are topics below it.
    pub branch: bool,
}

/// The levels directly below `prefix` (`""` for the root, else a topic prefix without the trailing `/`), in order,
/// at most `limit` of them; the flag says whether more were left out.
pub async fn children(
    pool: &SqlitePool,
    prefix: &str,
    limit: usize,
) -> Result<(Vec<Child>, bool), StoreError> {
    let base = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
    // Every topic below `base` sorts in [base, base with its final '/' raised to '0').
    let end = if prefix.is_empty() { None } else { Some(format!("{prefix}0")) };
    // A level's topics are `name` and `name/...`; but `name-x` (any character below '/') sorts between the
    // two, so a level can come round again after another: `seen` skips it then.
    let mut from = Bound::AtOrAfter(base.clone());
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    while let Some(topic) = next(pool, &from, end.as_deref()).await? {
        let Some(rest) = topic.strip_prefix(&base) else { break };
        let name = rest.split('/').next().unwrap_or_default().to_owned();
        let path = format!("{base}{name}");
        if !seen.insert(name.clone()) {
            from = Bound::AtOrAfter(format!("{path}0"));
            continue;
        }
        if out.len() == limit {
            return Ok((out, true));
        }
        let exact = rest == name;
        let branch = !exact
            || next(pool, &Bound::AtOrAfter(format!("{path}/")), Some(&format!("{path}0"))).await?.is_some();
        // Past `path/...` (everything below a level sorts in [path/, path0)), or just past the topic itself.
        from = if exact { Bound::After(topic.clone()) } else { Bound::AtOrAfter(format!("{path}0")) };
        out.push(Child { name, path, topic: exact, branch });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((out, false))
}

enum Bound {
    AtOrAfter(String),
    After(String),
}

async fn next(pool: &SqlitePool, from: &Bound, end: Option<&str>) -> Result<Option<String>, StoreError> {
    let (sql, key) = match from {
        Bound::AtOrAfter(key) => (
            "SELECT topic FROM topics WHERE topic >= ?1 AND (?2 IS NULL OR topic < ?2) ORDER BY topic LIMIT 1",
            key,
        ),
        Bound::After(key) => (
            "SELECT topic FROM topics WHERE topic > ?1 AND (?2 IS NULL OR topic < ?2) ORDER BY topic LIMIT 1",
            key,
        ),
    };
    Ok(sqlx::query_scalar(sql).bind(key).bind(end).fetch_optional(pool).await?)
}

/// Topics containing `text`, in order, at most `limit`.
pub async fn search(pool: &SqlitePool, text: &str, limit: i64) -> Result<Vec<String>, StoreError> {
    let pattern = format!("%{}%", text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
    Ok(sqlx::query_scalar("SELECT topic FROM topics WHERE topic LIKE ? ESCAPE '\\' ORDER BY topic LIMIT ?")
        .bind(pattern)
        .bind(limit)
        .fetch_all(pool)
        .await?)
}

/// What the catalogue knows of one topic: its newest message's id and how many were journaled.
pub async fn topic(pool: &SqlitePool, topic: &str) -> Result<Option<(i64, i64)>, StoreError> {
    let row = sqlx::query("SELECT last_id, count FROM topics WHERE topic = ?")
        .bind(topic)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|r| Ok::<_, sqlx::Error>((r.try_get("last_id")?, r.try_get("count")?))).transpose()?)
}

/// How many topics the catalogue holds.
pub async fn count(pool: &SqlitePool) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM topics").fetch_one(pool).await?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::mqtt::broker::Message;
    use crate::mqtt::codec::QoS;
    use crate::store::{Journal, JournalConfig};

    #[tokio::test]
    async fn the_tree_lists_one_level_at_a_time_and_search_finds_substrings() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), JournalConfig::default()).await.unwrap();
        for topic in [
            "plant/a/temp",
            "plant/a/temp",
            "plant/a",
            "plant/a-b/x",
            "plant/b",
            "plant0",
            "office/x",
            "plant/a/temp/raw",
        ] {
            j.append_nowait(&Arc::new(Message::new(topic, "1", QoS::AtMostOnce, false)));
        }
        j.flush().await;
        j.index_now().await;
        let names = |children: &[Child]| {
            children.iter().map(|c| (c.name.clone(), c.topic, c.branch)).collect::<Vec<_>>()
        };
        let (root, more) = children(j.pool(), "", 100).await.unwrap();
        assert!(!more);
        assert_eq!(
            names(&root),
            [("office".into(), false, true), ("plant".into(), false, true), ("plant0".into(), true, false)]
        );
        let (plant, _) = children(j.pool(), "plant", 100).await.unwrap();
        assert_eq!(
            names(&plant),
            [("a".into(), true, true), ("a-b".into(), false, true), ("b".into(), true, false)]
        );
        assert_eq!(plant[0].path, "plant/a");
        let (a, _) = children(j.pool(), "plant/a", 100).await.unwrap();
        assert_eq!(names(&a), [("temp".into(), true, true)]);
        let (limited, more) = children(j.pool(), "plant", 2).await.unwrap();
        assert!(more && limited.len() == 2);
        assert_eq!(search(j.pool(), "temp", 10).await.unwrap(), ["plant/a/temp", "plant/a/temp/raw"]);
        assert_eq!(search(j.pool(), "a_b", 10).await.unwrap(), Vec::<String>::new(), "_ is no wildcard");
        assert_eq!(topic(j.pool(), "plant/a/temp").await.unwrap().map(|(_, n)| n), Some(2));
        assert_eq!(count(j.pool()).await.unwrap(), 7);
        j.close().await;
    }
}
