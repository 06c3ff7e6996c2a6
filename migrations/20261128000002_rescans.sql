-- Re-runs of rules over stored records, with a cursor so an interrupted run resumes.
CREATE TABLE rescans (
    id                  BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rules               TEXT[]      NOT NULL,
    transplanted_from   TIMESTAMPTZ,
    transplanted_until  TIMESTAMPTZ,
    cursor_record_id    BIGINT      NOT NULL DEFAULT 0,
    processed           BIGINT      NOT NULL DEFAULT 0,
    flags_added         BIGINT      NOT NULL DEFAULT 0,
    started_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at         TIMESTAMPTZ
);

-- Rule-quality counts per rule and status.
CREATE INDEX flags_by_rule_status ON flags (rule_id, status);
