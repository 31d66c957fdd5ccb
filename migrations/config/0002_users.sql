-- MQTT users. Passwords are stored as argon2id PHC strings (or, after `weir import mosquitto`, Mosquitto's own
-- $6$/$7$ hashes, upgraded to argon2id at the next successful login).
CREATE TABLE users (
    username      TEXT PRIMARY KEY,
    password_hash TEXT    NOT NULL,
    roles         TEXT    NOT NULL DEFAULT '[]',  -- JSON array of role names
    created       INTEGER NOT NULL,               -- unix ms
    updated       INTEGER NOT NULL
);

-- Bumped by every change to users (and, later, rules and certificates), from any process: the running gateway
-- polls it to apply changes made by `weir user ...` without a restart.
CREATE TABLE config_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO config_version (id, version) VALUES (1, 0);
