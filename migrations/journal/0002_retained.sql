-- The retained message of each topic, as a pointer into the journal. Written in the same transaction as the
-- message itself, so that an acknowledged retained publish is retained after any restart.
CREATE TABLE retained (
    topic      TEXT PRIMARY KEY,
    message_id INTEGER NOT NULL
);
