-- Records, flags, the clinic registry and the triage trail.
--
-- Identifiers are never stored: donors and recipients appear only as keyed
-- fingerprints (HMAC-SHA-256, 32 bytes).

CREATE TABLE clinic_versions (
    clinic_id             TEXT        NOT NULL,
    version               INTEGER     NOT NULL CHECK (version >= 1),
    name                  TEXT        NOT NULL,
    country               CHAR(2)     NOT NULL,
    licensed_organs       TEXT[]      NOT NULL,
    licence_valid_from    TIMESTAMPTZ NOT NULL,
    licence_valid_until   TIMESTAMPTZ,
    status                TEXT        NOT NULL CHECK (status IN ('ACTIVE', 'SUSPENDED', 'REVOKED')),
    status_effective_from TIMESTAMPTZ,
    recorded_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, version)
);

-- The current version of each clinic; rows are only ever inserted into clinic_versions.
CREATE TABLE clinics (
    clinic_id       TEXT    PRIMARY KEY,
    current_version INTEGER NOT NULL,
    country         CHAR(2) NOT NULL,
    FOREIGN KEY (clinic_id, current_version) REFERENCES clinic_versions (clinic_id, version)
);
CREATE INDEX clinics_country ON clinics (country, clinic_id);

CREATE TABLE records (
    id                      BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hospital_id             TEXT        NOT NULL,
    external_record_id      TEXT        NOT NULL,
    version                 INTEGER     NOT NULL DEFAULT 1,
    content_hash            BYTEA       NOT NULL,
    received_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    amended_at              TIMESTAMPTZ,
    clinic_id               TEXT        NOT NULL,
    procedure_country       CHAR(2)     NOT NULL,
    organ                   TEXT        NOT NULL,
    laterality              TEXT        NOT NULL,
    procured_at             TIMESTAMPTZ NOT NULL,
    transplanted_at         TIMESTAMPTZ NOT NULL,
    cold_ischemia_minutes   INTEGER,
    machine_perfusion       BOOLEAN     NOT NULL,
    abo_exception           TEXT        NOT NULL,
    donor_fp                BYTEA       NOT NULL CHECK (octet_length(donor_fp) = 32),
    donor_type              TEXT        NOT NULL CHECK (donor_type IN ('LIVING', 'DECEASED')),
    donor_relation          TEXT,
    donor_death_at          TIMESTAMPTZ,
    donor_death_kind        TEXT,
    donor_nationality       CHAR(2)     NOT NULL,
    donor_residence         CHAR(2)     NOT NULL,
    donor_age               SMALLINT    NOT NULL,
    donor_sex               TEXT,
    donor_abo               TEXT        NOT NULL,
    donor_rh                TEXT,
    donor_hla               JSONB,
    donor_non_resident      BOOLEAN     NOT NULL,
    recipient_fp            BYTEA       NOT NULL CHECK (octet_length(recipient_fp) = 32),
    recipient_nationality   CHAR(2)     NOT NULL,
    recipient_residence     CHAR(2)     NOT NULL,
    recipient_age           SMALLINT    NOT NULL,
    recipient_sex           TEXT,
    recipient_abo           TEXT        NOT NULL,
    recipient_rh            TEXT,
    recipient_hla           JSONB,
    recipient_non_resident  BOOLEAN     NOT NULL,
    CONSTRAINT records_idempotency UNIQUE (hospital_id, external_record_id),
    CHECK ((donor_type = 'LIVING') = (donor_relation IS NOT NULL)),
    CHECK ((donor_type = 'DECEASED') = (donor_death_at IS NOT NULL AND donor_death_kind IS NOT NULL))
);
-- Repeat-donor rules: every earlier record of one donor.
CREATE INDEX records_donor ON records (donor_fp, id);
CREATE INDEX records_recipient ON records (recipient_fp, id);
-- Tourism window rules: a clinic's recent living foreign-donor and deceased-donor transplants.
CREATE INDEX records_clinic_foreign_living ON records (clinic_id, transplanted_at)
    INCLUDE (donor_relation, donor_nationality)
    WHERE donor_type = 'LIVING' AND donor_non_resident;
CREATE INDEX records_clinic_deceased ON records (clinic_id, transplanted_at)
    INCLUDE (recipient_non_resident)
    WHERE donor_type = 'DECEASED';

-- Every version of every record as it was submitted (pseudonymised), oldest first.
CREATE TABLE record_versions (
    record_id    BIGINT      NOT NULL REFERENCES records (id),
    version      INTEGER     NOT NULL,
    content_hash BYTEA       NOT NULL,
    body         JSONB       NOT NULL,
    reason       TEXT,
    recorded_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (record_id, version)
);

CREATE TABLE flags (
    id                    BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    record_id             BIGINT      NOT NULL REFERENCES records (id),
    rule_id               TEXT        NOT NULL,
    rule_version          INTEGER     NOT NULL,
    severity              SMALLINT    NOT NULL CHECK (severity BETWEEN 1 AND 4),
    explanation           TEXT        NOT NULL,
    evidence_record_ids   BIGINT[]    NOT NULL DEFAULT '{}',
    status                TEXT        NOT NULL DEFAULT 'OPEN'
                          CHECK (status IN ('OPEN', 'IN_REVIEW', 'CONFIRMED', 'DISMISSED')),
    revision              BIGINT      NOT NULL DEFAULT 1,
    raised_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    hospital_id           TEXT        NOT NULL,
    clinic_id             TEXT        NOT NULL,
    record_version        INTEGER     NOT NULL,
    cleared_in_version    INTEGER,
    CONSTRAINT flags_one_per_record_and_rule UNIQUE (record_id, rule_id)
);
-- Auditor listings: newest first, by each filter.
CREATE INDEX flags_by_status ON flags (status, id DESC);
CREATE INDEX flags_by_rule ON flags (rule_id, id DESC);
CREATE INDEX flags_by_clinic ON flags (clinic_id, id DESC);
CREATE INDEX flags_by_hospital ON flags (hospital_id, id DESC);
CREATE INDEX flags_by_severity ON flags (severity, id DESC);
CREATE INDEX flags_by_raised_at ON flags (raised_at, id);

-- Every triage step; append-only.
CREATE TABLE flag_events (
    id          BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    flag_id     BIGINT      NOT NULL REFERENCES flags (id),
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor       TEXT        NOT NULL,
    from_status TEXT        NOT NULL,
    to_status   TEXT        NOT NULL,
    note        TEXT        NOT NULL DEFAULT '',
    trace_id    TEXT
);
CREATE INDEX flag_events_by_flag ON flag_events (flag_id, id);

-- The history tables refuse change: an auditor's work and a record's past are
-- never rewritten, whoever holds the connection.
CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER flag_events_append_only BEFORE UPDATE OR DELETE ON flag_events
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER record_versions_append_only BEFORE UPDATE OR DELETE ON record_versions
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER clinic_versions_append_only BEFORE UPDATE OR DELETE ON clinic_versions
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER history_no_truncate BEFORE TRUNCATE ON flag_events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER record_versions_no_truncate BEFORE TRUNCATE ON record_versions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
