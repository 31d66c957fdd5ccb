-- Bearer tokens an administrator creates for machines: a Prometheus scraper reading /metrics on a console that
-- is not on loopback. Only a SHA-256 of each token is kept; the token itself is shown once, when it is made.
CREATE TABLE api_tokens (
    name      TEXT PRIMARY KEY,
    sha256    TEXT    NOT NULL UNIQUE,       -- hex
    created   INTEGER NOT NULL,              -- unix ms
    last_used INTEGER                        -- unix ms
);
