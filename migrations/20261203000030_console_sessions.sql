-- The web console's sessions. Only a hash of a session's id is stored, so a
-- copy of this table signs nobody in. A session belongs to the API key its
-- auditor signed in with; revoking the key ends it (the console checks the
-- key on every request, and the revocation deletes the key's sessions).
CREATE TABLE console_sessions (
    id_hash      BYTEA       PRIMARY KEY,
    key_id       TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX console_sessions_by_key ON console_sessions (key_id);
CREATE INDEX console_sessions_by_last_seen ON console_sessions (last_seen_at);
