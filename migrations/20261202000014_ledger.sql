-- The ledger: every row that is evidence carries a MAC of its content
-- (computed by the service under a key derived from its secret, never
-- stored here) and a place in one database-wide sequence; the server seals
-- rows in sequence order into hash-chained blocks whose signed digests are
-- kept outside the database. Rows written before this migration get their
-- MACs once, when the service first starts on it (the genesis block).

-- One sequence for every table. CACHE 1: a backend must not hold numbers
-- that others have passed, or the sealer could close a range before them.
CREATE SEQUENCE ledger_seq CACHE 1;

-- People and systems behind API keys. `created_by` is the principal of the
-- administrator who made it; NULL when made on the command line, whose user
-- holds the service's secrets and is outside the two-person rule.
CREATE TABLE principals (
    id         BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       TEXT        NOT NULL UNIQUE,
    kind       TEXT        NOT NULL CHECK (kind IN ('PERSON', 'SYSTEM')),
    created_by BIGINT      REFERENCES principals (id),
    created_at TIMESTAMPTZ NOT NULL,
    ledger_seq BIGINT      NOT NULL DEFAULT nextval('ledger_seq'),
    ledger_mac BYTEA
);

-- Every existing key becomes a principal of its own.
ALTER TABLE api_keys
    ADD COLUMN principal_id BIGINT REFERENCES principals (id),
    ADD COLUMN created_by   BIGINT REFERENCES principals (id),
    ADD COLUMN ledger_seq   BIGINT NOT NULL DEFAULT nextval('ledger_seq'),
    ADD COLUMN ledger_prev  BIGINT,
    ADD COLUMN ledger_mac   BYTEA;
INSERT INTO principals (name, kind, created_at)
SELECT 'key ' || key_id, CASE role WHEN 'HOSPITAL' THEN 'SYSTEM' ELSE 'PERSON' END, created_at
FROM api_keys ORDER BY id;
UPDATE api_keys k SET principal_id = p.id FROM principals p WHERE p.name = 'key ' || k.key_id;
ALTER TABLE api_keys ALTER COLUMN principal_id SET NOT NULL;
ALTER TABLE api_keys ALTER COLUMN ledger_seq DROP DEFAULT;

-- Records: a row is a record's current version; an amendment gives it a new
-- place in the sequence (`ledger_prev` the one it replaces).
ALTER TABLE records
    ADD COLUMN ledger_seq  BIGINT NOT NULL DEFAULT nextval('ledger_seq'),
    ADD COLUMN ledger_prev BIGINT,
    ADD COLUMN ledger_mac  BYTEA;
ALTER TABLE records ALTER COLUMN ledger_seq DROP DEFAULT;
ALTER TABLE records ALTER COLUMN received_at DROP DEFAULT;

ALTER TABLE record_versions
    ADD COLUMN ledger_seq BIGINT NOT NULL DEFAULT nextval('ledger_seq'),
    ADD COLUMN ledger_mac BYTEA;

ALTER TABLE clinic_versions
    ADD COLUMN ledger_seq BIGINT NOT NULL DEFAULT nextval('ledger_seq'),
    ADD COLUMN ledger_mac BYTEA;
ALTER TABLE clinic_versions ALTER COLUMN recorded_at DROP DEFAULT;

ALTER TABLE imports
    ADD COLUMN ledger_seq  BIGINT NOT NULL DEFAULT nextval('ledger_seq'),
    ADD COLUMN ledger_prev BIGINT,
    ADD COLUMN ledger_mac  BYTEA;
ALTER TABLE imports ALTER COLUMN ledger_seq DROP DEFAULT;

-- A flag's row is the fold of its steps: RAISED (what the rule found),
-- TRANSITION and DISMISSAL_PROPOSED (triage), REEVALUATED and CLEARED (an
-- amendment that still raises it, or no longer does). Steps are numbered
-- per flag from 1; the first is always RAISED.
ALTER TABLE flag_events DISABLE TRIGGER flag_events_append_only;
ALTER TABLE flag_events
    ADD COLUMN step                INTEGER,
    ADD COLUMN principal           TEXT,
    ADD COLUMN own_trace_id        TEXT,
    ADD COLUMN rule_version        INTEGER,
    ADD COLUMN severity            SMALLINT CHECK (severity BETWEEN 1 AND 4),
    ADD COLUMN explanation         TEXT,
    ADD COLUMN evidence_record_ids BIGINT[],
    ADD COLUMN record_version      INTEGER,
    ADD COLUMN cleared_in_version  INTEGER,
    ADD COLUMN ledger_seq          BIGINT,
    ADD COLUMN ledger_mac          BYTEA;
ALTER TABLE flag_events ALTER COLUMN from_status DROP NOT NULL;
ALTER TABLE flag_events DROP CONSTRAINT flag_events_kind_check;
ALTER TABLE flag_events ADD CONSTRAINT flag_events_kind_check
    CHECK (kind IN ('RAISED', 'TRANSITION', 'DISMISSAL_PROPOSED', 'REEVALUATED', 'CLEARED'));
ALTER TABLE flag_events RENAME COLUMN actor TO key_id;
ALTER TABLE flag_events ALTER COLUMN kind DROP DEFAULT;
UPDATE flag_events SET principal = 'key ' || key_id;
-- A RAISED step for every flag raised before steps said so, with what its
-- row holds now.
INSERT INTO flag_events
    (flag_id, at, key_id, principal, from_status, to_status, note, kind, rule_version, severity,
     explanation, evidence_record_ids, record_version, cleared_in_version)
SELECT id, raised_at, '', 'rules', NULL, 'OPEN', '', 'RAISED', rule_version, severity,
       explanation, evidence_record_ids, record_version, cleared_in_version
FROM flags ORDER BY id;
UPDATE flag_events e SET step = n.step
FROM (SELECT id, row_number() OVER (PARTITION BY flag_id
                                    ORDER BY (kind = 'RAISED') DESC, id) AS step
      FROM flag_events) n
WHERE n.id = e.id;
-- Rows follow the sequence in the order they were written.
UPDATE flag_events e SET ledger_seq = n.seq
FROM (SELECT id, nextval('ledger_seq') AS seq FROM (SELECT id FROM flag_events ORDER BY id) o) n
WHERE n.id = e.id;
ALTER TABLE flag_events ALTER COLUMN step SET NOT NULL;
ALTER TABLE flag_events ALTER COLUMN principal SET NOT NULL;
ALTER TABLE flag_events ALTER COLUMN ledger_seq SET NOT NULL;
ALTER TABLE flag_events ALTER COLUMN ledger_seq SET DEFAULT nextval('ledger_seq');
ALTER TABLE flag_events ALTER COLUMN at DROP DEFAULT;
ALTER TABLE flag_events DROP COLUMN chain_hash;
ALTER TABLE flag_events ADD CONSTRAINT flag_events_one_per_step UNIQUE (flag_id, step);
ALTER TABLE flag_events ENABLE TRIGGER flag_events_append_only;
ALTER TABLE flags DROP COLUMN chain_head;
ALTER TABLE flags ALTER COLUMN raised_at DROP DEFAULT;
ALTER TABLE flags ALTER COLUMN updated_at DROP DEFAULT;

-- Reads of evidence by auditors and administrators; the access to opened
-- flags recorded so far moves here.
CREATE TABLE access_log (
    id           BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           TIMESTAMPTZ NOT NULL,
    principal    TEXT        NOT NULL,
    key_id       TEXT        NOT NULL,
    action       TEXT        NOT NULL,
    resource     TEXT        NOT NULL,
    resource_id  TEXT        NOT NULL,
    trace_id     TEXT,
    own_trace_id TEXT,
    ledger_seq   BIGINT      NOT NULL DEFAULT nextval('ledger_seq'),
    ledger_mac   BYTEA
);
INSERT INTO access_log (at, principal, key_id, action, resource, resource_id, trace_id)
SELECT at, 'key ' || key_id, key_id, 'GetFlag', 'flag', flag_id::text, trace_id
FROM case_access ORDER BY id;
DROP TABLE case_access;
CREATE INDEX access_log_by_resource ON access_log (resource, resource_id, id);

-- The server's seal: each block lists the row states of a range of the
-- sequence (packed entries) and chains to the block before it.
CREATE TABLE ledger_blocks (
    block      BIGINT      PRIMARY KEY CHECK (block >= 1),
    first_seq  BIGINT      NOT NULL,
    last_seq   BIGINT      NOT NULL CHECK (last_seq >= first_seq - 1),
    entries    BYTEA       NOT NULL,
    prev_hash  BYTEA       NOT NULL,
    hash       BYTEA       NOT NULL,
    sealed_at  TIMESTAMPTZ NOT NULL,
    public_key BYTEA       NOT NULL,
    signature  BYTEA       NOT NULL
);
ALTER TABLE ledger_blocks ALTER COLUMN entries SET STORAGE EXTERNAL;

-- The sealer reads each table by sequence number, and so does verify.
CREATE INDEX records_ledger ON records (ledger_seq);
CREATE INDEX record_versions_ledger ON record_versions (ledger_seq);
CREATE INDEX flag_events_ledger ON flag_events (ledger_seq);
CREATE INDEX clinic_versions_ledger ON clinic_versions (ledger_seq);
CREATE INDEX principals_ledger ON principals (ledger_seq);
CREATE INDEX api_keys_ledger ON api_keys (ledger_seq);
CREATE INDEX imports_ledger ON imports (ledger_seq);
CREATE INDEX access_log_ledger ON access_log (ledger_seq);

-- Append-only where history is kept; TRUNCATE refused everywhere. Triggers
-- stop mistakes and anyone without the table owner's rights; the ledger
-- catches the rest.
CREATE TRIGGER access_log_append_only BEFORE UPDATE OR DELETE ON access_log
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER principals_append_only BEFORE UPDATE OR DELETE ON principals
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER ledger_blocks_append_only BEFORE UPDATE OR DELETE ON ledger_blocks
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER records_no_delete BEFORE DELETE ON records
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER flags_no_delete BEFORE DELETE ON flags
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER api_keys_no_delete BEFORE DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER records_no_truncate BEFORE TRUNCATE ON records
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER flags_no_truncate BEFORE TRUNCATE ON flags
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER clinic_versions_no_truncate BEFORE TRUNCATE ON clinic_versions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER clinics_no_truncate BEFORE TRUNCATE ON clinics
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER principals_no_truncate BEFORE TRUNCATE ON principals
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER api_keys_no_truncate BEFORE TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER imports_no_truncate BEFORE TRUNCATE ON imports
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER access_log_no_truncate BEFORE TRUNCATE ON access_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER ledger_blocks_no_truncate BEFORE TRUNCATE ON ledger_blocks
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
