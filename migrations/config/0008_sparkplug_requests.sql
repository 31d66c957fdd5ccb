-- Requests from the command line to the running gateway (the CLI has no route to the broker; the gateway's
-- configuration watcher polls this table every second). A request is taken once (pending -> taken, in one
-- statement) and then answered (done or refused, with the text the CLI prints); one not taken by `expires` is
-- never executed (the CLI withdraws it when it stops waiting). Answered rows are deleted after a day.
CREATE TABLE sparkplug_requests (
    id       INTEGER PRIMARY KEY,
    action   TEXT    NOT NULL CHECK (action IN ('rebirth')),
    group_id TEXT    NOT NULL,
    node_id  TEXT    NOT NULL,
    actor    TEXT    NOT NULL,          -- as the audit log names them: cli:<login>
    created  INTEGER NOT NULL,          -- unix ms
    expires  INTEGER NOT NULL,          -- unix ms: not executed from then on
    state    TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'taken', 'done', 'refused', 'expired')),
    answered INTEGER,                   -- unix ms
    result   TEXT                       -- what was done, or why not
);
CREATE INDEX sparkplug_requests_state ON sparkplug_requests (state);
