-- Persistent sessions (session expiry > 0) and their subscriptions, so that they survive a restart. Session
-- expiry keeps counting across the restart from `disconnected_at`.
CREATE TABLE sessions (
    client_id       TEXT PRIMARY KEY,
    expiry          INTEGER NOT NULL,      -- seconds; 4294967295 = never
    disconnected_at INTEGER,               -- unix ms; NULL while connected
    will_topic      TEXT,                  -- the will to publish if the connection is lost
    will_payload    BLOB,
    will_qos        INTEGER,
    will_retain     INTEGER,
    will_delay      INTEGER,
    will_due        INTEGER                -- unix ms when a delayed will is due (after a disconnection)
);

CREATE TABLE subscriptions (
    client_id           TEXT    NOT NULL,
    filter              TEXT    NOT NULL,  -- as subscribed, $share/... included
    qos                 INTEGER NOT NULL,
    no_local            INTEGER NOT NULL,
    retain_as_published INTEGER NOT NULL,
    retain_handling     INTEGER NOT NULL,
    subscription_id     INTEGER,
    PRIMARY KEY (client_id, filter)
);
