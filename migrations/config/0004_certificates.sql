-- Certificates issued by Weir's CA (never their private keys), and their revocation.
CREATE TABLE certificates (
    serial         TEXT PRIMARY KEY,       -- 32 hex digits
    common_name    TEXT    NOT NULL,
    canonical_name TEXT    NOT NULL,       -- case-folded, for the duplicate check among live certificates
    sans           TEXT    NOT NULL,       -- JSON array of "DNS:..", "IP:..", "email:..", "URI:.."
    not_before     INTEGER NOT NULL,       -- unix ms
    not_after      INTEGER NOT NULL,
    fingerprint    TEXT    NOT NULL,       -- SHA-256, as openssl prints it
    cert_pem       TEXT    NOT NULL,
    issued         INTEGER NOT NULL,
    revoked_at     INTEGER                 -- NULL while valid
);
CREATE INDEX certificates_name ON certificates (canonical_name);
