-- Synthesises :n transplant records, and optionally :flags flags on them,
-- straight into a migrated database, for measuring rescans and queries at
-- scale (10^6 records in about half a minute). Not the ingest path: content
-- hashes and chain heads are made up (`verify` rejects a seeded database),
-- and so are the flags, not raised by the rules.
--
--   psql "$DATABASE_URL" -v n=1000000 -f benches/seed.sql
--   psql "$DATABASE_URL" -v n=10000000 -v flags=1000000 -f benches/seed.sql
--
-- Records shape: 200 registered clinics; 70% deceased donors giving three organs each (two kidneys and a
-- liver) at up to three clinics; 30% living donors; 3% foreign donors and
-- 2% foreign recipients; 1% unrelated living donors; 20 countries; 20 years of dates;
-- 500 hospitals.
-- Keys are deterministic, so a second run with the same n conflicts and adds nothing.
-- Records are written in chunks of a million, one transaction each, so memory
-- and WAL stay bounded and an interrupted load keeps what it committed.
--
-- Flags shape (flags must be at most n): at most one flag per record and rule,
-- flags on about one record in 10 n / (9 flags), newest records carrying the newest
-- flag ids; every 10th flag a second rule on the record of the flag before it.
-- Rules weighted (per mille): ISCHEMIA_IMPLAUSIBLE 150, CLINIC_COUNTRY_MISMATCH 120,
-- CLINIC_NON_RESIDENT_SHARE 110, TOURISM_FOREIGN_PAIR 90, ABO_INCOMPATIBLE 80,
-- CLINIC_LICENCE_INVALID 70, CLINIC_NOT_LICENSED 60, DONOR_NATIONALITY_CLUSTER 60,
-- CLINIC_FOREIGN_DONOR_SURGE 50, DECEASED_DONOR_INCONSISTENT 50,
-- REPEAT_FOREIGN_LIVING_DONOR 40, CLINIC_UNREGISTERED 40, SAME_PERSON 20,
-- MINOR_LIVING_DONOR 20, RELATION_GENETICALLY_IMPLAUSIBLE 20,
-- ANATOMICAL_MAXIMUM 10, LIVING_DONOR_ORGAN 5, DEATH_AFTER_PROCUREMENT 5.
-- The tourism rules' flags fall on records of the first 10% of clinics, so a few
-- clinics hold many flags and most hold few; hospitals, clinic and hospital ids
-- are the flagged record's. Severity is the rule's default, 5% of flags a
-- configured step higher or lower. Status by age: the oldest 80% are 30% OPEN,
-- 10% IN_REVIEW, 20% CONFIRMED, 40% DISMISSED; the newest 20% are 90% OPEN,
-- 8% IN_REVIEW, 1% CONFIRMED, 1% DISMISSED (no flag_events are written for them).
-- Raised over the last two years, in id order.
--
-- Federation elements (opt-in): with -v elements=FILE, the living donors'
-- records get the donor and recipient elements FILE holds (COPY text: g,
-- donor element, recipient element), made by benches/seed_elements.rs under
-- the registry's FEDERATION_KEY; without it no record has elements.
--
-- Ends with VACUUM (ANALYZE) of the tables written (autovacuum may be off):
-- planner statistics and the visibility map index-only scans need.
\set ON_ERROR_STOP on
-- The 200 clinics, registered and licensed for every organ.
INSERT INTO clinic_versions (clinic_id, version, name, country, licensed_organs,
                             licence_valid_from, licence_valid_until, status, recorded_at)
SELECT 'SEED-C' || c, 1, 'Seed clinic ' || c,
       (ARRAY['DE','FR','ES','IT','NL','BE','AT','PL','CZ','SE','NO','DK','FI','PT','GR','HU','RO','TR','US','CA'])[1 + c % 20],
       ARRAY['KIDNEY','LIVER','LIVER_SEGMENT','HEART','LUNG','LUNG_LOBE','PANCREAS','INTESTINE'],
       '2000-01-01', '2040-01-01', 'ACTIVE', now()
FROM generate_series(0, 199) AS c
ON CONFLICT DO NOTHING;
INSERT INTO clinics (clinic_id, current_version, country)
SELECT clinic_id, 1, country FROM clinic_versions WHERE clinic_id LIKE 'SEED-C%'
ON CONFLICT DO NOTHING;
-- Elements by record number g, when given.
CREATE TEMP TABLE seed_elements (g bigint PRIMARY KEY, donor bytea NOT NULL, recipient bytea NOT NULL);
\if :{?elements}
-- (\copy takes its file name literally, so the command is put together first.)
\set copy_elements '\\copy seed_elements FROM ' :'elements'
:copy_elements
ANALYZE seed_elements;
\endif
-- Records lo..hi of n.
CREATE FUNCTION pg_temp.seed_records(lo bigint, hi bigint, n bigint) RETURNS void
LANGUAGE sql AS $seed$
INSERT INTO records (
    hospital_id, external_record_id, content_hash, clinic_id, procedure_country,
    organ, laterality, procured_at, transplanted_at, cold_ischemia_minutes,
    machine_perfusion, abo_exception,
    donor_fp, donor_type, donor_relation, donor_death_at, donor_death_kind,
    donor_nationality, donor_residence, donor_age, donor_sex, donor_abo, donor_rh,
    donor_hla, donor_non_resident,
    recipient_fp, recipient_nationality, recipient_residence, recipient_age,
    recipient_sex, recipient_abo, recipient_rh, recipient_hla, recipient_non_resident,
    version_recorded_at, received_at, ledger_seq, donor_element, recipient_element)
SELECT
    'H-SEED-' || (g % 500),
    'SEED-' || g,
    sha256(('content' || g)::bytea),
    'SEED-C' || (g % 200),
    c.country,
    CASE WHEN living THEN 'KIDNEY' WHEN g % 3 = 2 THEN 'LIVER' ELSE 'KIDNEY' END,
    CASE WHEN living THEN 'LEFT' WHEN g % 3 = 0 THEN 'LEFT' WHEN g % 3 = 1 THEN 'RIGHT' ELSE 'NOT_APPLICABLE' END,
    t - interval '6 hours', t, NULL, false, 'NONE',
    CASE WHEN living THEN sha256(('living' || g)::bytea) ELSE sha256(('deceased' || (g / 3))::bytea) END,
    CASE WHEN living THEN 'LIVING' ELSE 'DECEASED' END,
    CASE WHEN living THEN (CASE WHEN g % 100 = 97 THEN 'UNRELATED_DIRECTED' ELSE 'SIBLING' END) END,
    CASE WHEN NOT living THEN t - interval '10 hours' END,
    CASE WHEN NOT living THEN 'DBD' END,
    CASE WHEN foreign_donor THEN 'MD' ELSE c.country END,
    CASE WHEN foreign_donor THEN 'MD' ELSE c.country END,
    18 + g % 60, CASE WHEN g % 2 = 0 THEN 'FEMALE' ELSE 'MALE' END, 'O', 'POSITIVE', NULL,
    foreign_donor,
    sha256(('recipient' || g)::bytea),
    CASE WHEN foreign_recipient THEN 'IL' ELSE c.country END,
    CASE WHEN foreign_recipient THEN 'IL' ELSE c.country END,
    1 + g % 80, CASE WHEN g % 2 = 1 THEN 'FEMALE' ELSE 'MALE' END, 'A', 'POSITIVE', NULL,
    foreign_recipient,
    now(), now(), nextval('ledger_seq'), e.donor, e.recipient
FROM (
    SELECT g,
           (g % 10) >= 7 AS living,
           g % 33 = 0 AS foreign_donor,
           g % 50 = 0 AS foreign_recipient,
           timestamptz '2005-01-01' + (g::double precision / n) * interval '7300 days' AS t
    FROM generate_series(lo, hi) AS g
) s
CROSS JOIN LATERAL (
    SELECT (ARRAY['DE','FR','ES','IT','NL','BE','AT','PL','CZ','SE','NO','DK','FI','PT','GR','HU','RO','TR','US','CA'])[1 + (g % 200) % 20] AS country
) c
LEFT JOIN pg_temp.seed_elements AS e (eg, donor, recipient) ON e.eg = s.g
ON CONFLICT ON CONSTRAINT records_idempotency DO NOTHING;
$seed$;
SELECT format('SELECT pg_temp.seed_records(%s, %s, %s)', lo, least(lo + 999999, :n), :n)
FROM generate_series(1, :n, 1000000) AS lo
\gexec
\if :{?flags}
\else
\set flags 0
\endif
-- Flags lo..hi of nflags over the records with ids up to nrecords.
CREATE FUNCTION pg_temp.seed_flags(lo bigint, hi bigint, nflags bigint, nrecords bigint) RETURNS void
LANGUAGE sql AS $seed$
INSERT INTO flags (record_id, rule_id, rule_version, severity, explanation, evidence_record_ids,
                   status, revision, raised_at, updated_at, hospital_id, clinic_id, record_version,
                   dismissal_proposed_by, external_record_id)
SELECT r.id, rule.id, 1,
       greatest(1, least(4, rule.severity + CASE WHEN h % 100 = 0 THEN 1 WHEN h % 100 = 1 THEN -1 ELSE 0 END)),
       'Synthetic ' || rule.id || ' finding on record ' || r.id,
       CASE WHEN rule.family IN ('repeat_donor', 'tourism') THEN ARRAY[greatest(1, r.id - 3 * s), greatest(1, r.id - 7 * s)]
            ELSE '{}' END,
       st.status,
       CASE st.status WHEN 'OPEN' THEN 1 WHEN 'IN_REVIEW' THEN 2 ELSE 3 END,
       raised, raised + CASE WHEN st.status = 'OPEN' THEN interval '0' ELSE interval '3 days' END,
       r.hospital_id, r.clinic_id, 1,
       CASE WHEN st.status = 'IN_REVIEW' AND rule.severity = 4 AND h % 7 = 0 THEN 'seed-auditor' END,
       r.external_record_id
FROM (
    SELECT i, abs(hashint8(i)::bigint) AS h, abs(hashint8(i - (CASE WHEN i % 10 = 3 THEN 1 ELSE 0 END))::bigint) AS hr,
           greatest(1, nrecords / (nflags - nflags / 10)) AS s,
           now() - interval '730 days' * (1 - i::double precision / nflags) AS raised
    FROM generate_series(lo, hi) AS i
) g
CROSS JOIN LATERAL (
    -- the k-th flagged record: every 10th flag is another rule on the record
    -- of the flag before it
    SELECT i - (i + 7) / 10 AS k
) k
CROSS JOIN LATERAL (
    SELECT w.id, w.family, w.severity
    FROM (VALUES
        ('ISCHEMIA_IMPLAUSIBLE', 'pairing', 2, 0, 150),
        ('CLINIC_COUNTRY_MISMATCH', 'clinic', 2, 150, 270),
        ('CLINIC_NON_RESIDENT_SHARE', 'tourism', 2, 270, 380),
        ('TOURISM_FOREIGN_PAIR', 'tourism', 3, 380, 470),
        ('ABO_INCOMPATIBLE', 'pairing', 3, 470, 550),
        ('CLINIC_LICENCE_INVALID', 'clinic', 3, 550, 620),
        ('CLINIC_NOT_LICENSED', 'clinic', 3, 620, 680),
        ('DONOR_NATIONALITY_CLUSTER', 'tourism', 3, 680, 740),
        ('CLINIC_FOREIGN_DONOR_SURGE', 'tourism', 3, 740, 790),
        ('DECEASED_DONOR_INCONSISTENT', 'repeat_donor', 3, 790, 840),
        ('REPEAT_FOREIGN_LIVING_DONOR', 'repeat_donor', 3, 840, 880),
        ('CLINIC_UNREGISTERED', 'clinic', 3, 880, 920),
        ('SAME_PERSON', 'pairing', 3, 920, 940),
        ('MINOR_LIVING_DONOR', 'pairing', 3, 940, 960),
        ('RELATION_GENETICALLY_IMPLAUSIBLE', 'pairing', 3, 960, 980),
        ('ANATOMICAL_MAXIMUM', 'repeat_donor', 4, 980, 990),
        ('LIVING_DONOR_ORGAN', 'pairing', 4, 990, 995),
        ('DEATH_AFTER_PROCUREMENT', 'pairing', 4, 995, 1000)
    ) AS w(id, family, severity, lo, hi)
    -- the second rule on a record is another one than the first's
    WHERE w.lo <= (CASE WHEN i % 10 = 3 THEN (hr + 500) ELSE hr END) % 1000
      AND (CASE WHEN i % 10 = 3 THEN (hr + 500) ELSE hr END) % 1000 < w.hi
) rule
CROSS JOIN LATERAL (
    -- tourism flags on the first 20 of each 200 records (of each 200 * (s / 10)
    -- if that fits): the first 10% of clinics
    SELECT CASE WHEN rule.family = 'tourism' THEN ((k - 1) / 20) * greatest(20, 200 * (s / 10)) + 1 + (k - 1) % 20
                ELSE (k - 1) * s + 1 + abs(hashint8(k)::bigint) % s END AS record_id
) pick
CROSS JOIN LATERAL (
    SELECT CASE WHEN i > nflags * 0.8 THEN
                CASE WHEN h % 100 < 90 THEN 'OPEN' WHEN h % 100 < 98 THEN 'IN_REVIEW'
                     WHEN h % 100 < 99 THEN 'CONFIRMED' ELSE 'DISMISSED' END
           ELSE CASE WHEN h % 100 < 30 THEN 'OPEN' WHEN h % 100 < 40 THEN 'IN_REVIEW'
                     WHEN h % 100 < 60 THEN 'CONFIRMED' ELSE 'DISMISSED' END
           END AS status
) st
JOIN records r ON r.id = pick.record_id
ON CONFLICT ON CONSTRAINT flags_one_per_record_and_rule DO NOTHING;
$seed$;
SELECT format('SELECT pg_temp.seed_flags(%s, %s, %s, %s)', lo, least(lo + 999999, :flags), :flags,
              (SELECT max(id) FROM records))
FROM generate_series(1, :flags, 1000000) AS lo
\gexec
VACUUM (ANALYZE) clinic_versions, clinics, records, flags;
