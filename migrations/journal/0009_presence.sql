-- Each client's last presence, written by the journal writer on every attach and detach (clean sessions too),
-- with the will of a connected client: a client still `online` here at start-up was connected when the gateway
-- stopped, so it is marked lost and its will published once. Also restores the retained presence messages
-- (`$SYS/...` is not journaled).
CREATE TABLE presence (
    client_id    TEXT PRIMARY KEY,
    state        TEXT    NOT NULL,      -- online, offline, lost
    reason       TEXT,
    ts           INTEGER NOT NULL,      -- unix ms
    username     TEXT,
    peer         TEXT,
    will_topic   TEXT,                  -- while online: the will to publish if the gateway dies
    will_payload BLOB,
    will_qos     INTEGER,
    will_retain  INTEGER,
    will_delay   INTEGER
);

-- The presence history: every connect, disconnect and loss, kept under the journal's retention (`max_age_days`).
CREATE TABLE presence_events (
    id        INTEGER PRIMARY KEY,
    ts        INTEGER NOT NULL,         -- unix ms
    client_id TEXT    NOT NULL,
    username  TEXT,
    peer      TEXT,
    state     TEXT    NOT NULL,         -- online, offline, lost
    reason    TEXT
);
CREATE INDEX presence_events_client ON presence_events (client_id, ts);
CREATE INDEX presence_events_ts ON presence_events (ts);
