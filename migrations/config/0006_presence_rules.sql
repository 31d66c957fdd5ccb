-- Configured birth and death messages: for clients matched by user name or client id (patterns with `*` and
-- `?`) or by role, a message published when such a client connects (birth) or disconnects normally (death).
CREATE TABLE presence_rules (
    id         INTEGER PRIMARY KEY,
    match_kind TEXT    NOT NULL CHECK (match_kind IN ('user', 'role', 'client')),
    pattern    TEXT    NOT NULL,
    event      TEXT    NOT NULL CHECK (event IN ('birth', 'death')),
    topic      TEXT    NOT NULL,   -- template: %c client id, %u user name
    payload    TEXT    NOT NULL,   -- template: %c, %u, %t unix ms, %T RFC 3339, %% a percent sign
    qos        INTEGER NOT NULL CHECK (qos IN (0, 1, 2)),
    retain     INTEGER NOT NULL,
    created    INTEGER NOT NULL    -- unix ms
);
