-- Topic access rules, each a JSON object: {"subject":{"kind":"user"|"role"|"anyone"|"anonymous","name":...},
-- "effect":"allow"|"deny", "action":"publish"|"subscribe"|"both", "filter":"plant/%u/#"}.
CREATE TABLE acl_rules (
    id      INTEGER PRIMARY KEY,
    rule    TEXT    NOT NULL,
    created INTEGER NOT NULL  -- unix ms
);
