-- The QoS 1/2 deliveries waiting for (or in flight to) persistent sessions: references into the journal, with
-- the packet identifier and QoS 2 phase of those in flight, so that a restart resumes them exactly.
CREATE TABLE session_messages (
    seq          INTEGER PRIMARY KEY,      -- queue order
    client_id    TEXT    NOT NULL,
    message_id   INTEGER NOT NULL,         -- messages.id
    qos          INTEGER NOT NULL,         -- as delivered to this subscriber
    retain       INTEGER NOT NULL,         -- the RETAIN flag as this subscriber sees it
    sub_ids      TEXT,                     -- JSON array of subscription identifiers, NULL when none
    packet_id    INTEGER,                  -- NULL while queued
    released     INTEGER NOT NULL DEFAULT 0,
    UNIQUE (client_id, message_id)
);
CREATE INDEX session_messages_message ON session_messages (message_id);
