-- The message journal: every message the broker accepted, in acceptance order. The full history, and (with
-- cursors) the backlog of every durable consumer.
CREATE TABLE messages (
    id               INTEGER PRIMARY KEY,  -- journal position; consumers' cursors point here
    ts               INTEGER NOT NULL,     -- unix milliseconds when the broker accepted it
    topic            TEXT    NOT NULL,
    payload          BLOB    NOT NULL,
    qos              INTEGER NOT NULL,
    retain           INTEGER NOT NULL,
    client_id        TEXT,
    username         TEXT,
    payload_format   INTEGER,
    expiry_interval  INTEGER,
    content_type     TEXT,
    response_topic   TEXT,
    correlation_data BLOB,
    user_properties  TEXT                  -- JSON array of [key, value] pairs, NULL when none
);
CREATE INDEX messages_ts ON messages (ts);
CREATE INDEX messages_topic ON messages (topic, id);

-- Durable consumers (Kafka routes, persistent sessions, exports) read from their cursor and commit progress.
CREATE TABLE cursors (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL,             -- the last journal id this consumer has fully processed
    updated  INTEGER NOT NULL              -- unix milliseconds
);
