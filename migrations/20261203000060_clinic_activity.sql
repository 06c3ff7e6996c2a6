-- Clinic activity kept at write time: per clinic, month of transplant (UTC)
-- and procedure country, one counter per (metric, dimension), moved by
-- every insert, amendment, flag raised, triaged or cleared in the same
-- transaction (crates/core/src/domain/activity.rs names the counters and
-- says what counts). GetClinicActivity and GetCountryActivity read a few
-- hundred of these rows instead of a clinic's records, so their time does
-- not grow with the registry.
CREATE TABLE clinic_activity (
    clinic_id         TEXT    NOT NULL,
    month             DATE    NOT NULL CHECK (extract(day FROM month) = 1),
    procedure_country CHAR(2) NOT NULL,
    metric            TEXT    NOT NULL,
    dimension         TEXT    NOT NULL,
    n                 BIGINT  NOT NULL,
    PRIMARY KEY (clinic_id, month, procedure_country, metric, dimension)
);
-- A country's year: every clinic's rows, read from the index alone.
CREATE INDEX clinic_activity_by_country ON clinic_activity (procedure_country, month, clinic_id)
    INCLUDE (metric, dimension, n);

-- The counters of what is stored already. A replica of an earlier version
-- keeps no counters: what it writes after this backfill is not counted, so
-- stop those writers before migrating (docs/operations.md).

INSERT INTO clinic_activity (clinic_id, month, procedure_country, metric, dimension, n)
SELECT clinic_id, month, procedure_country, metric, dimension, count(*)
FROM (
    SELECT r.clinic_id,
           date_trunc('month', r.transplanted_at AT TIME ZONE 'UTC')::date AS month,
           r.procedure_country, c.metric, c.dimension
    FROM records r
    CROSS JOIN LATERAL (
        VALUES ('TRANSPLANTS', r.organ || '/' || r.donor_type, true),
               ('DECEASED_TO_NON_RESIDENT', '',
                r.donor_type = 'DECEASED' AND r.recipient_non_resident),
               ('LIVING_UNRELATED_FOREIGN_DONOR', '',
                r.donor_type = 'LIVING' AND r.donor_non_resident
                AND r.donor_relation = 'UNRELATED_DIRECTED'),
               ('FOREIGN_LIVING_DONOR_NATIONALITY', r.donor_nationality::text,
                r.donor_type = 'LIVING' AND r.donor_non_resident)
    ) AS c(metric, dimension, counts)
    WHERE c.counts
    UNION ALL
    SELECT r.clinic_id,
           date_trunc('month', r.transplanted_at AT TIME ZONE 'UTC')::date,
           r.procedure_country, c.metric, c.dimension
    FROM flags f
    JOIN records r ON r.id = f.record_id
    CROSS JOIN LATERAL (
        VALUES ('FLAGS', f.rule_id || '/' || f.status, true),
               ('FLAGS_CLEARED', f.rule_id, f.cleared_in_version IS NOT NULL)
    ) AS c(metric, dimension, counts)
    WHERE c.counts
) AS counted
GROUP BY clinic_id, month, procedure_country, metric, dimension;
