-- A record's current version lives in its records row alone; record_versions
-- keeps the versions an amendment replaced. The stored body is the record's
-- pseudonymised JSON, which the row's columns give back byte for byte, so a
-- copy beside every row doubled what each record wrote (about 1 KB of JSONB,
-- a primary-key entry and a foreign-key check) for a body read only when an
-- auditor opens a case or the chains are verified. The current version's
-- chain entry is checked against the columns instead, which also makes the
-- columns the rules read tamper-evident.
ALTER TABLE records
    ADD COLUMN version_reason      TEXT,
    ADD COLUMN version_recorded_at TIMESTAMPTZ;

UPDATE records r
SET version_reason = v.reason, version_recorded_at = v.recorded_at
FROM record_versions v
WHERE v.record_id = r.id AND v.version = r.version;
-- A record whose current version row is missing keeps a broken chain, which
-- verification names; its entry time is its receipt.
UPDATE records SET version_recorded_at = received_at WHERE version_recorded_at IS NULL;
ALTER TABLE records ALTER COLUMN version_recorded_at SET NOT NULL;

-- The current versions now held by records leave the history table; this
-- one move is the only change record_versions ever permits.
ALTER TABLE record_versions DISABLE TRIGGER record_versions_append_only;
DELETE FROM record_versions v USING records r
WHERE v.record_id = r.id AND v.version = r.version;
ALTER TABLE record_versions ENABLE TRIGGER record_versions_append_only;
