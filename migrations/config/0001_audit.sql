-- Configuration data lives apart from the write-heavy journal. Users, ACLs, certificates and Kafka routes are
-- added by their issues; the audit log of security and configuration events starts here.
CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY,
    ts      INTEGER NOT NULL,              -- unix milliseconds
    actor   TEXT    NOT NULL,              -- who: a user, "cli", "system"
    action  TEXT    NOT NULL,              -- what, e.g. "database.recovered"
    detail  TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_ts ON audit_log (ts);
