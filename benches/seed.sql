-- Synthesises :n transplant records straight into a migrated database, for
-- measuring rescans and queries at scale (10^6 in about half a minute).
-- Not the ingest path: no record_versions rows and no flags are written.
--
--   psql "$DATABASE_URL" -v n=1000000 -f benches/seed.sql
--
-- Shape: 200 registered clinics; 70% deceased donors giving three organs each (two kidneys and a
-- liver) at up to three clinics; 30% living donors; 3% foreign donors and
-- 2% foreign recipients; 1% unrelated living donors; 20 countries; 20 years of dates.
-- Keys are deterministic, so a second run with the same n conflicts and adds nothing.
\set ON_ERROR_STOP on
-- The 200 clinics, registered and licensed for every organ.
INSERT INTO clinic_versions (clinic_id, version, name, country, licensed_organs,
                             licence_valid_from, licence_valid_until, status)
SELECT 'SEED-C' || c, 1, 'Seed clinic ' || c,
       (ARRAY['DE','FR','ES','IT','NL','BE','AT','PL','CZ','SE','NO','DK','FI','PT','GR','HU','RO','TR','US','CA'])[1 + c % 20],
       ARRAY['KIDNEY','LIVER','LIVER_SEGMENT','HEART','LUNG','LUNG_LOBE','PANCREAS','INTESTINE'],
       '2000-01-01', '2040-01-01', 'ACTIVE'
FROM generate_series(0, 199) AS c
ON CONFLICT DO NOTHING;
INSERT INTO clinics (clinic_id, current_version, country)
SELECT clinic_id, 1, country FROM clinic_versions WHERE clinic_id LIKE 'SEED-C%'
ON CONFLICT DO NOTHING;
INSERT INTO records (
    hospital_id, external_record_id, content_hash, clinic_id, procedure_country,
    organ, laterality, procured_at, transplanted_at, cold_ischemia_minutes,
    machine_perfusion, abo_exception,
    donor_fp, donor_type, donor_relation, donor_death_at, donor_death_kind,
    donor_nationality, donor_residence, donor_age, donor_sex, donor_abo, donor_rh,
    donor_hla, donor_non_resident,
    recipient_fp, recipient_nationality, recipient_residence, recipient_age,
    recipient_sex, recipient_abo, recipient_rh, recipient_hla, recipient_non_resident)
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
    foreign_recipient
FROM (
    SELECT g,
           (g % 10) >= 7 AS living,
           g % 33 = 0 AS foreign_donor,
           g % 50 = 0 AS foreign_recipient,
           timestamptz '2005-01-01' + (g::double precision / :n) * interval '7300 days' AS t
    FROM generate_series(1, :n) AS g
) s
CROSS JOIN LATERAL (
    SELECT (ARRAY['DE','FR','ES','IT','NL','BE','AT','PL','CZ','SE','NO','DK','FI','PT','GR','HU','RO','TR','US','CA'])[1 + (g % 200) % 20] AS country
) c
ON CONFLICT ON CONSTRAINT records_idempotency DO NOTHING;
ANALYZE records;
