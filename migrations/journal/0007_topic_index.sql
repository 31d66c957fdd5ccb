-- The per-row index on (topic, id) made every commit rewrite one index page per distinct topic in it: with a
-- thousand topics, most of what a batch wrote to the WAL was index pages, and ingest ran at a third of its
-- speed without it. The topic index is now a table the writer fills in bulk (about once a second, in topic
-- order, so each page is touched once per step), and `journal_state.topic_index` says how far it has got;
-- history queries read the index up to there and scan the short tail after it.
CREATE TABLE topic_index (
    topic TEXT    NOT NULL,
    id    INTEGER NOT NULL,                -- messages.id
    PRIMARY KEY (topic, id)
) WITHOUT ROWID;

CREATE TABLE journal_state (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);

INSERT INTO topic_index (topic, id) SELECT topic, id FROM messages ORDER BY topic, id;
INSERT INTO journal_state (key, value) SELECT 'topic_index', coalesce(max(id), 0) FROM messages;
DROP INDEX messages_topic;

-- Pruned messages leave the index with them.
CREATE TRIGGER messages_unindex AFTER DELETE ON messages BEGIN
    DELETE FROM topic_index WHERE topic = old.topic AND id = old.id;
END;
