-- Who may call: API keys, stored as hashes only.
CREATE TABLE api_keys (
    id          BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_id      TEXT        NOT NULL UNIQUE,
    secret_hash BYTEA       NOT NULL CHECK (octet_length(secret_hash) = 32),
    role        TEXT        NOT NULL CHECK (role IN ('HOSPITAL', 'AUDITOR', 'ADMIN')),
    hospital_id TEXT,
    description TEXT        NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ,
    revoked_at  TIMESTAMPTZ,
    CHECK ((role = 'HOSPITAL') = (hospital_id IS NOT NULL))
);

-- Every case an auditor opened; append-only like the triage trail.
CREATE TABLE case_access (
    id        BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    flag_id   BIGINT      NOT NULL REFERENCES flags (id),
    key_id    TEXT        NOT NULL,
    at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    trace_id  TEXT
);
CREATE INDEX case_access_by_flag ON case_access (flag_id, id);
CREATE TRIGGER case_access_append_only BEFORE UPDATE OR DELETE ON case_access
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

-- Tamper evidence: each history entry carries a keyed hash (HMAC-SHA-256
-- under a key derived from the service's secret) of its content chained to
-- the previous entry of the same record or flag; the record and the flag
-- keep the head, so a removed last entry shows too. Chains are per record
-- and per flag, so concurrent ingest never queues on one global row.
ALTER TABLE record_versions ADD COLUMN chain_hash BYTEA;
ALTER TABLE flag_events ADD COLUMN chain_hash BYTEA;
ALTER TABLE records ADD COLUMN chain_head BYTEA;
ALTER TABLE flags ADD COLUMN chain_head BYTEA;

-- CRITICAL flags are dismissed by two auditors: the first proposes, a second approves.
ALTER TABLE flags ADD COLUMN dismissal_proposed_by TEXT;
-- A step either moves the status or proposes a dismissal for a second auditor.
ALTER TABLE flag_events ADD COLUMN kind TEXT NOT NULL DEFAULT 'TRANSITION'
    CHECK (kind IN ('TRANSITION', 'DISMISSAL_PROPOSED'));
