-- Investigation cases. A case's events are the evidence (append-only, each
-- MACed and sealed, each naming the event it follows); the case's row and its
-- list of flags are derived from them and checked against them.
CREATE TABLE cases (
    id          BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title       TEXT        NOT NULL,
    summary     TEXT        NOT NULL,
    status      TEXT        NOT NULL
                CHECK (status IN ('OPEN', 'INVESTIGATING', 'REFERRED', 'CLOSED')),
    assignee    TEXT,
    referred_to TEXT,
    revision    BIGINT      NOT NULL,
    opened_by   TEXT        NOT NULL,
    opened_at   TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);
-- Keyset pages of ListCases, newest first, by status and assignee.
CREATE INDEX cases_by_status ON cases (status, id DESC);
CREATE INDEX cases_by_assignee ON cases (assignee, id DESC);

-- A flag is in at most one case.
CREATE TABLE case_flags (
    flag_id BIGINT PRIMARY KEY REFERENCES flags (id),
    case_id BIGINT NOT NULL REFERENCES cases (id)
);
CREATE INDEX case_flags_by_case ON case_flags (case_id, flag_id);

CREATE TABLE case_events (
    case_id      BIGINT      NOT NULL REFERENCES cases (id),
    step         INTEGER     NOT NULL,
    kind         TEXT        NOT NULL CHECK (kind IN
                 ('OPENED', 'FLAG_ADDED', 'FLAG_REMOVED', 'ASSIGNED', 'STATUS_CHANGED', 'NOTED')),
    at           TIMESTAMPTZ NOT NULL,
    key_id       TEXT        NOT NULL,
    principal    TEXT        NOT NULL,
    title        TEXT,
    summary      TEXT,
    flag_id      BIGINT,
    assignee     TEXT,
    from_status  TEXT,
    to_status    TEXT,
    referred_to  TEXT,
    note         TEXT        NOT NULL,
    trace_id     TEXT,
    own_trace_id TEXT,
    ledger_seq   BIGINT      NOT NULL,
    ledger_prev  BIGINT,
    ledger_mac   BYTEA       NOT NULL,
    PRIMARY KEY (case_id, step)
);
CREATE INDEX case_events_ledger ON case_events (ledger_seq);

CREATE TRIGGER case_events_append_only BEFORE UPDATE OR DELETE ON case_events
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER case_events_no_truncate BEFORE TRUNCATE ON case_events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER cases_no_delete BEFORE DELETE ON cases
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER cases_no_truncate BEFORE TRUNCATE ON cases
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
