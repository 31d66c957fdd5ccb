-- The topic catalogue: one row per topic the journal holds, for the console's topic tree and search. The writer
-- keeps it with the topic index (in bulk, about four times a second), and retention drops topics whose newest
-- message it has removed.
CREATE TABLE topics (
    topic   TEXT    PRIMARY KEY,
    last_id INTEGER NOT NULL,              -- the newest message on it (messages.id)
    count   INTEGER NOT NULL               -- messages journaled on it since it was first seen
) WITHOUT ROWID;

INSERT INTO topics (topic, last_id, count) SELECT topic, max(id), count(*) FROM messages GROUP BY topic;
