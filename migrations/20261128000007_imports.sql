-- Progress of NDJSON back-fills (`transplant-audit import`): an interrupted
-- import resumes after the last batch it committed. A file is known by the
-- SHA-256 of its content, so a changed file is a new import.
CREATE TABLE imports (
    file_sha256 bytea PRIMARY KEY,
    file_name text NOT NULL,
    lines_done bigint NOT NULL DEFAULT 0 CHECK (lines_done >= 0),
    accepted bigint NOT NULL DEFAULT 0,
    duplicates bigint NOT NULL DEFAULT 0,
    rejected bigint NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
