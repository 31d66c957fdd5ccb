-- Kafka forwarding (src/forward/). Upstream clusters and routes are JSON objects validated by forward::config;
-- changing any of them bumps config_version, which the running gateway polls to apply the change.
CREATE TABLE kafka_upstreams (
    name    TEXT PRIMARY KEY,
    spec    TEXT    NOT NULL,          -- JSON: bootstrap, TLS files, SASL (its password included: never printed)
    updated INTEGER NOT NULL           -- unix ms
);

CREATE TABLE kafka_routes (
    name    TEXT PRIMARY KEY,
    kind    TEXT    NOT NULL,          -- "uplink" (MQTT -> Kafka) or "downlink" (Kafka -> MQTT)
    spec    TEXT    NOT NULL,          -- JSON, see forward::config::RouteSpec
    paused  INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL,          -- unix ms
    updated INTEGER NOT NULL
);

-- Records Kafka refused for good (too large, invalid topic) or a downlink could not publish (not allowed, bad
-- topic): kept with the reason, so that nothing is lost silently.
CREATE TABLE kafka_dead_letters (
    id          INTEGER PRIMARY KEY,
    route       TEXT    NOT NULL,
    ts          INTEGER NOT NULL,      -- unix ms, when it was refused
    journal_id  INTEGER,               -- uplink: the journal id of the message
    source      TEXT    NOT NULL,      -- uplink: the MQTT topic; downlink: "topic/partition@offset"
    destination TEXT    NOT NULL,      -- uplink: the Kafka topic; downlink: the MQTT topic
    reason      TEXT    NOT NULL,
    payload     BLOB    NOT NULL
);
CREATE INDEX kafka_dead_letters_route ON kafka_dead_letters (route, id);

-- Per uplink route and partition, the offset of a record Kafka acknowledged at or before the route's last cursor
-- commit: where the start-up scan for records already in Kafka begins (see forward::uplink, "no duplicates").
CREATE TABLE kafka_route_offsets (
    route     TEXT    NOT NULL,
    topic     TEXT    NOT NULL,
    partition INTEGER NOT NULL,
    offset    INTEGER NOT NULL,
    PRIMARY KEY (route, topic, partition)
);

-- This gateway's identity in the records it writes (header weir.gateway): stable across restarts and renames.
CREATE TABLE kafka_gateway (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    gateway TEXT NOT NULL
);
INSERT INTO kafka_gateway (id, gateway) VALUES (1, lower(hex(randomblob(6))));
