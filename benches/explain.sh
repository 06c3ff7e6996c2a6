#!/usr/bin/env bash
# EXPLAIN (ANALYZE, BUFFERS) of every ingest-path query, as the code sends it
# (prepared, with $n parameters), on the database at DATABASE_URL, with
# realistic parameters: a batch of BATCH (default 256) of the newest records
# as if submitted again (half their keys existing, half new), their donors,
# their clinics and windows, and an amendment of a flagged record. Writes run
# inside BEGIN … ROLLBACK (each under its own savepoint); nothing is kept,
# except that the sequence of record ids is not rolled back.
#
# Every query is planned twice: a custom plan for these values, and the
# generic plan Postgres may switch to after five executions of a prepared
# statement (sqlx prepares every statement).
#
#   DATABASE_URL=postgres://…/db benches/explain.sh [log file]
#
# Prints one verdict line per query and plan, keeps the plans in the log
# (default: a temporary file, named at the end) and exits 1 when any plan
# reads records, flags or record_versions by Seq Scan, or by a full scan of
# one of their indexes (an Index Scan without an Index Cond). The small
# tables (clinics, clinic_versions: one row per clinic) may be read whole.
#
# The query texts are copied from src/store/batch.rs, context.rs,
# registry.rs and ingest.rs: when one of those changes, change it here.
# A database from benches/seed.sql (records and flags) fits; ANALYZE it first.
set -euo pipefail
: "${DATABASE_URL:?set DATABASE_URL to the database to explain on}"
batch=${BATCH:-256}
log=${1:-$(mktemp -t explain.XXXXXX.log)}

# Parameters and prepared statements.
setup=$(cat <<'SQL'
\pset pager off
-- The batch: the newest records, every 7th, as if submitted again.
SELECT max(id) AS max_id FROM records \gset
SELECT count(*) > 0 AS have FROM records WHERE id > :max_id - 7 * :batch AND id % 7 = 0 \gset
\if :have
\else
\echo 'the database holds no records: seed it first (benches/seed.sql)'
SELECT 1/0;
\endif
CREATE TEMP TABLE sample AS
SELECT row_number() OVER (ORDER BY id) - 1 AS n, r.*
FROM records r WHERE id > :max_id - 7 * :batch AND id % 7 = 0;
-- Idempotency keys: half existing, half new.
SELECT quote_nullable(array_agg(hospital_id ORDER BY n)) AS hospitals,
       quote_nullable(array_agg(CASE WHEN n % 2 = 0 THEN external_record_id
                                     ELSE external_record_id || '-new' END ORDER BY n)) AS externals,
       quote_nullable(array_agg(DISTINCT donor_fp)) AS donors,
       quote_nullable(array_agg(DISTINCT clinic_id)) AS clinic_ids,
       quote_nullable((array_agg(hospital_id ORDER BY n))[1]) AS one_hospital,
       quote_nullable((array_agg(external_record_id ORDER BY n))[1]) AS one_external,
       quote_nullable((array_agg(clinic_id ORDER BY n))[1]) AS one_clinic,
       quote_nullable(:max_id + 1) AS before
FROM sample \gset
-- Clinic windows per record: foreign living donors over 90 days (the longer
-- of surge and cluster), deceased donors over 365 days (the share window).
SELECT quote_nullable(array_agg(clinic_id ORDER BY n)) AS w_clinics,
       quote_nullable(array_agg(transplanted_at - interval '90 days' ORDER BY n)) AS w_living_since,
       quote_nullable(array_agg(transplanted_at - interval '365 days' ORDER BY n)) AS w_deceased_since,
       quote_nullable(array_agg(transplanted_at ORDER BY n)) AS w_until,
       quote_nullable(array_agg(:max_id + 1 + n ORDER BY n)) AS w_before,
       quote_nullable(array_agg(n ORDER BY n)) AS w_n
FROM sample \gset
-- Advisory-lock numbers: one per donor (exclusive) and two per clinic (shared).
SELECT quote_nullable(array_agg(k ORDER BY k)) AS lock_keys,
       quote_nullable(array_agg(exclusive ORDER BY k)) AS lock_exclusive FROM (
    SELECT DISTINCT ON (k) k, exclusive FROM (
        SELECT ('x' || left(encode(sha256(v), 'hex'), 16))::bit(64)::bigint AS k, exclusive
        FROM (SELECT donor_fp, true FROM sample
              UNION ALL SELECT convert_to('clinic-foreign-living' || clinic_id, 'UTF8'), false FROM sample
              UNION ALL SELECT convert_to('clinic-deceased' || clinic_id, 'UTF8'), false FROM sample
             ) s(v, exclusive)) h
    ORDER BY k, exclusive DESC
) k \gset
-- The batch's new records: the sample's rows under new keys and new ids.
SELECT quote_nullable(array_agg(:max_id + 1 + n ORDER BY n)) AS c_id,
       quote_nullable(array_agg(sha256(content_hash) ORDER BY n)) AS c_chain,
       quote_nullable(array_agg(content_hash ORDER BY n)) AS c_hash,
       quote_nullable(array_agg(hospital_id ORDER BY n)) AS c_hospital,
       quote_nullable(array_agg(external_record_id || '-new' ORDER BY n)) AS c_external,
       quote_nullable(array_agg(clinic_id ORDER BY n)) AS c_clinic,
       quote_nullable(array_agg(procedure_country ORDER BY n)) AS c_country,
       quote_nullable(array_agg(organ ORDER BY n)) AS c_organ,
       quote_nullable(array_agg(laterality ORDER BY n)) AS c_laterality,
       quote_nullable(array_agg(procured_at ORDER BY n)) AS c_procured,
       quote_nullable(array_agg(transplanted_at ORDER BY n)) AS c_transplanted,
       quote_nullable(array_agg(cold_ischemia_minutes ORDER BY n)) AS c_cold,
       quote_nullable(array_agg(machine_perfusion ORDER BY n)) AS c_perfusion,
       quote_nullable(array_agg(abo_exception ORDER BY n)) AS c_abo_exception,
       quote_nullable(array_agg(donor_fp ORDER BY n)) AS c_donor_fp,
       quote_nullable(array_agg(donor_type ORDER BY n)) AS c_donor_type,
       quote_nullable(array_agg(donor_relation ORDER BY n)) AS c_relation,
       quote_nullable(array_agg(donor_death_at ORDER BY n)) AS c_death_at,
       quote_nullable(array_agg(donor_death_kind ORDER BY n)) AS c_death_kind,
       quote_nullable(array_agg(donor_nationality ORDER BY n)) AS c_d_nat,
       quote_nullable(array_agg(donor_residence ORDER BY n)) AS c_d_res,
       quote_nullable(array_agg(donor_age ORDER BY n)) AS c_d_age,
       quote_nullable(array_agg(donor_sex ORDER BY n)) AS c_d_sex,
       quote_nullable(array_agg(donor_abo ORDER BY n)) AS c_d_abo,
       quote_nullable(array_agg(donor_rh ORDER BY n)) AS c_d_rh,
       quote_nullable(array_agg(donor_hla ORDER BY n)) AS c_d_hla,
       quote_nullable(array_agg(donor_non_resident ORDER BY n)) AS c_d_nr,
       quote_nullable(array_agg(recipient_fp ORDER BY n)) AS c_r_fp,
       quote_nullable(array_agg(recipient_nationality ORDER BY n)) AS c_r_nat,
       quote_nullable(array_agg(recipient_residence ORDER BY n)) AS c_r_res,
       quote_nullable(array_agg(recipient_age ORDER BY n)) AS c_r_age,
       quote_nullable(array_agg(recipient_sex ORDER BY n)) AS c_r_sex,
       quote_nullable(array_agg(recipient_abo ORDER BY n)) AS c_r_abo,
       quote_nullable(array_agg(recipient_rh ORDER BY n)) AS c_r_rh,
       quote_nullable(array_agg(recipient_hla ORDER BY n)) AS c_r_hla,
       quote_nullable(array_agg(recipient_non_resident ORDER BY n)) AS c_r_nr,
       -- flags on every 4th of them
       quote_nullable(array_agg(:max_id + 1 + n ORDER BY n) FILTER (WHERE n % 4 = 0)) AS f_record,
       quote_nullable(array_agg('ISCHEMIA_IMPLAUSIBLE'::text ORDER BY n) FILTER (WHERE n % 4 = 0)) AS f_rule,
       quote_nullable(array_agg(1 ORDER BY n) FILTER (WHERE n % 4 = 0)) AS f_version,
       quote_nullable(array_agg(2 ORDER BY n) FILTER (WHERE n % 4 = 0)) AS f_severity,
       quote_nullable(array_agg('explained'::text ORDER BY n) FILTER (WHERE n % 4 = 0)) AS f_explanation,
       quote_nullable(array_agg('{' || (id - 1) || '}' ORDER BY n) FILTER (WHERE n % 4 = 0)) AS f_evidence,
       quote_nullable(array_agg(hospital_id ORDER BY n) FILTER (WHERE n % 4 = 0)) AS f_hospital,
       quote_nullable(array_agg(clinic_id ORDER BY n) FILTER (WHERE n % 4 = 0)) AS f_clinic,
       quote_nullable(array_agg(external_record_id || '-new' ORDER BY n) FILTER (WHERE n % 4 = 0)) AS f_external
FROM sample \gset
-- The amendment: the newest flagged record, amended to its own content.
SELECT quote_nullable(r.id) AS a_id, quote_nullable(r.version + 1) AS a_version,
       quote_nullable(f.rule_id) AS a_rule, quote_nullable(sha256(r.content_hash)) AS a_hash,
       quote_nullable(r.clinic_id) AS a_clinic, quote_nullable(r.procedure_country) AS a_country,
       quote_nullable(r.external_record_id) AS a_external,
       quote_nullable(r.organ) AS a_organ, quote_nullable(r.laterality) AS a_laterality,
       quote_nullable(r.procured_at) AS a_procured, quote_nullable(r.transplanted_at) AS a_transplanted,
       quote_nullable(r.cold_ischemia_minutes) AS a_cold, quote_nullable(r.machine_perfusion) AS a_perfusion,
       quote_nullable(r.abo_exception) AS a_abo_exception, quote_nullable(r.donor_fp) AS a_donor_fp,
       quote_nullable(r.donor_type) AS a_donor_type, quote_nullable(r.donor_relation) AS a_relation,
       quote_nullable(r.donor_death_at) AS a_death_at, quote_nullable(r.donor_death_kind) AS a_death_kind,
       quote_nullable(r.donor_nationality) AS a_d_nat, quote_nullable(r.donor_residence) AS a_d_res,
       quote_nullable(r.donor_age) AS a_d_age, quote_nullable(r.donor_sex) AS a_d_sex,
       quote_nullable(r.donor_abo) AS a_d_abo, quote_nullable(r.donor_rh) AS a_d_rh,
       quote_nullable(r.donor_hla) AS a_d_hla, quote_nullable(r.donor_non_resident) AS a_d_nr,
       quote_nullable(r.recipient_fp) AS a_r_fp, quote_nullable(r.recipient_nationality) AS a_r_nat,
       quote_nullable(r.recipient_residence) AS a_r_res, quote_nullable(r.recipient_age) AS a_r_age,
       quote_nullable(r.recipient_sex) AS a_r_sex, quote_nullable(r.recipient_abo) AS a_r_abo,
       quote_nullable(r.recipient_rh) AS a_r_rh, quote_nullable(r.recipient_hla) AS a_r_hla,
       quote_nullable(r.recipient_non_resident) AS a_r_nr, quote_nullable(r.hospital_id) AS a_hospital
FROM flags f JOIN records r ON r.id = f.record_id
ORDER BY f.id DESC LIMIT 1 \gset

PREPARE find_existing_many(text[], text[]) AS
SELECT r.hospital_id, r.external_record_id, r.id, r.version, r.content_hash,
       r.received_at
FROM unnest($1::text[], $2::text[]) AS k(hospital_id, external_record_id)
JOIN records r USING (hospital_id, external_record_id);

PREPARE lock_and_allocate(bigint[], bool[], int) AS
SELECT nextval((SELECT pg_get_serial_sequence('records', 'id')::regclass)) AS "id!",
       nextval('ledger_seq') AS "seq!"
FROM generate_series(1, $3)
WHERE (SELECT count(*)
       FROM unnest($1::bigint[], $2::bool[]) AS k(key, exclusive),
            LATERAL (SELECT CASE WHEN k.exclusive THEN pg_advisory_xact_lock(k.key)
                                 ELSE pg_advisory_xact_lock_shared(k.key) END) AS l
      ) >= 0;

PREPARE current_clinics(text[]) AS
SELECT v.clinic_id, v.version, v.name, v.country, v.licensed_organs,
       v.licence_valid_from, v.licence_valid_until, v.status,
       v.status_effective_from, v.recorded_at
FROM clinics c
JOIN clinic_versions v ON v.clinic_id = c.clinic_id AND v.version = c.current_version
WHERE c.clinic_id = ANY($1);

PREPARE current_clinic(text) AS
SELECT v.clinic_id, v.version, v.name, v.country, v.licensed_organs,
       v.licence_valid_from, v.licence_valid_until, v.status,
       v.status_effective_from, v.recorded_at
FROM clinics c
JOIN clinic_versions v ON v.clinic_id = c.clinic_id AND v.version = c.current_version
WHERE c.clinic_id = $1;

PREPARE donor_histories(bytea[], bigint) AS
SELECT donor_fp, id, organ, laterality, donor_type, donor_relation, donor_death_at,
       donor_death_kind, procured_at
FROM records WHERE donor_fp = ANY($1) AND id < $2 ORDER BY id;

PREPARE clinic_windows_living(text[], timestamptz[], timestamptz[], bigint[], bigint[]) AS
SELECT q.n AS "n!", r.id AS "id!", r.transplanted_at AS "transplanted_at!",
       r.donor_relation, r.donor_nationality AS "donor_nationality!"
FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::bigint[],
            $5::bigint[]) AS q(clinic_id, since, until, before, n)
CROSS JOIN LATERAL (
    SELECT id, transplanted_at, donor_relation, donor_nationality FROM records
    WHERE clinic_id = q.clinic_id AND donor_type = 'LIVING' AND donor_non_resident
      AND transplanted_at >= q.since AND transplanted_at <= q.until
      AND id < q.before) r
ORDER BY q.n, r.id;

PREPARE clinic_windows_deceased(text[], timestamptz[], timestamptz[], bigint[], bigint[]) AS
SELECT q.n AS "n!", c.total AS "total!", c.non_resident AS "non_resident!"
FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::bigint[],
            $5::bigint[]) AS q(clinic_id, since, until, before, n)
CROSS JOIN LATERAL (
    SELECT count(*) AS total,
           count(*) FILTER (WHERE recipient_non_resident) AS non_resident
    FROM records
    WHERE clinic_id = q.clinic_id AND donor_type = 'DECEASED'
      AND transplanted_at >= q.since AND transplanted_at <= q.until
      AND id < q.before) c;

PREPARE lock_keys(bigint[], bool[]) AS
SELECT count(*) AS "locked!"
FROM unnest($1::bigint[], $2::bool[]) AS k(key, exclusive),
     LATERAL (SELECT CASE WHEN k.exclusive THEN pg_advisory_xact_lock(k.key)
                          ELSE pg_advisory_xact_lock_shared(k.key) END) AS l;

PREPARE find_existing(text, text) AS
SELECT id, version, content_hash, received_at FROM records
WHERE hospital_id = $1 AND external_record_id = $2;

PREPARE insert_new(bigint[], bytea[], bytea[], text[], text[], text[], text[], text[], text[],
                   timestamptz[], timestamptz[], int[], bool[], text[], bytea[], text[], text[],
                   timestamptz[], text[], text[], text[], smallint[], text[], text[], text[],
                   jsonb[], bool[], bytea[], text[], text[], smallint[], text[], text[], text[],
                   jsonb[], bool[], timestamptz) AS
INSERT INTO records (
    id, chain_head, content_hash, hospital_id, external_record_id, clinic_id,
    procedure_country, organ, laterality, procured_at, transplanted_at,
    cold_ischemia_minutes, machine_perfusion, abo_exception,
    donor_fp, donor_type, donor_relation, donor_death_at, donor_death_kind,
    donor_nationality, donor_residence, donor_age, donor_sex, donor_abo,
    donor_rh, donor_hla, donor_non_resident,
    recipient_fp, recipient_nationality, recipient_residence, recipient_age,
    recipient_sex, recipient_abo, recipient_rh, recipient_hla,
    recipient_non_resident, version_recorded_at)
OVERRIDING SYSTEM VALUE
SELECT *, $37::timestamptz FROM unnest(
    $1::bigint[], $2::bytea[], $3::bytea[], $4::text[], $5::text[],
    $6::text[], $7::text[], $8::text[], $9::text[], $10::timestamptz[],
    $11::timestamptz[], $12::int[], $13::bool[], $14::text[],
    $15::bytea[], $16::text[], $17::text[], $18::timestamptz[], $19::text[],
    $20::text[], $21::text[], $22::smallint[], $23::text[], $24::text[],
    $25::text[], $26::jsonb[], $27::bool[],
    $28::bytea[], $29::text[], $30::text[], $31::smallint[],
    $32::text[], $33::text[], $34::text[], $35::jsonb[], $36::bool[])
ON CONFLICT ON CONSTRAINT records_idempotency DO NOTHING
RETURNING id, received_at;

PREPARE insert_flags(bigint[], text[], int[], smallint[], text[], text[], text[], text[], text[]) AS
INSERT INTO flags (record_id, rule_id, rule_version, severity, explanation,
                   evidence_record_ids, hospital_id, clinic_id, record_version,
                   external_record_id)
SELECT f.record_id, f.rule_id, f.rule_version, f.severity, f.explanation,
       f.evidence::bigint[], f.hospital_id, f.clinic_id, 1, f.external_record_id
FROM unnest($1::bigint[], $2::text[], $3::int[], $4::smallint[], $5::text[],
            $6::text[], $7::text[], $8::text[], $9::text[])
     AS f(record_id, rule_id, rule_version, severity, explanation, evidence,
          hospital_id, clinic_id, external_record_id);

-- The amend path (ingest.rs: amend, save_flags; row.rs: current_versions).
PREPARE lock_record(bigint) AS
SELECT id FROM records WHERE id = $1 FOR UPDATE;

PREPARE current_versions(bigint[]) AS
SELECT r.id, r.version, r.content_hash, r.chain_head, r.version_reason,
       r.version_recorded_at, r.received_at, r.hospital_id, r.external_record_id,
       r.clinic_id, r.procedure_country, r.organ, r.laterality, r.procured_at,
       r.transplanted_at, r.cold_ischemia_minutes, r.machine_perfusion, r.abo_exception,
       r.donor_fp, r.donor_type, r.donor_relation, r.donor_death_at, r.donor_death_kind,
       r.donor_nationality, r.donor_residence, r.donor_age, r.donor_sex, r.donor_abo,
       r.donor_rh, r.donor_hla, r.donor_non_resident, r.recipient_fp,
       r.recipient_nationality, r.recipient_residence, r.recipient_age, r.recipient_sex,
       r.recipient_abo, r.recipient_rh, r.recipient_hla, r.recipient_non_resident
FROM unnest($1::bigint[]) WITH ORDINALITY AS want(id, n)
JOIN records r ON r.id = want.id
ORDER BY want.n;

PREPARE amend(bigint, bytea, text, text, text, text, timestamptz, timestamptz, int, bool,
              text, bytea, text, text, timestamptz, text, text, text, smallint, text, text,
              text, jsonb, bool, bytea, text, text, smallint, text, text, text, jsonb, bool,
              int, bytea, text, text, timestamptz, bytea, int, text, timestamptz, bytea) AS
WITH archived AS (
    INSERT INTO record_versions
        (record_id, version, content_hash, body, reason, recorded_at, chain_hash)
    VALUES ($1, $34, $35, $36::text::jsonb, $37, $38, $39))
UPDATE records SET
    version = $40, amended_at = now(), content_hash = $2, clinic_id = $3,
    procedure_country = $4, organ = $5, laterality = $6, procured_at = $7,
    transplanted_at = $8, cold_ischemia_minutes = $9, machine_perfusion = $10,
    abo_exception = $11, donor_fp = $12, donor_type = $13, donor_relation = $14,
    donor_death_at = $15, donor_death_kind = $16, donor_nationality = $17,
    donor_residence = $18, donor_age = $19, donor_sex = $20, donor_abo = $21,
    donor_rh = $22, donor_hla = $23, donor_non_resident = $24, recipient_fp = $25,
    recipient_nationality = $26, recipient_residence = $27, recipient_age = $28,
    recipient_sex = $29, recipient_abo = $30, recipient_rh = $31,
    recipient_hla = $32, recipient_non_resident = $33,
    version_reason = $41, version_recorded_at = $42, chain_head = $43
WHERE id = $1;

PREPARE save_flag(bigint, text, int, smallint, text, bigint[], text, text, int, text) AS
INSERT INTO flags (record_id, rule_id, rule_version, severity, explanation,
                   evidence_record_ids, hospital_id, clinic_id, record_version,
                   external_record_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT ON CONSTRAINT flags_one_per_record_and_rule
DO UPDATE SET rule_version = EXCLUDED.rule_version,
    severity = EXCLUDED.severity, explanation = EXCLUDED.explanation,
    evidence_record_ids = EXCLUDED.evidence_record_ids,
    clinic_id = EXCLUDED.clinic_id, record_version = EXCLUDED.record_version,
    cleared_in_version = NULL, updated_at = now();

PREPARE clear_flags(bigint, int, text[], text) AS
UPDATE flags SET cleared_in_version = coalesce(cleared_in_version, $2),
                 clinic_id = $4, updated_at = now()
WHERE record_id = $1 AND rule_id <> ALL($3);

SQL
)

# The 37 arguments of insert_new: the batch's records under new keys.
new_records=":c_id, :c_chain, :c_hash, :c_hospital, :c_external, :c_clinic, :c_country, :c_organ, \
:c_laterality, :c_procured, :c_transplanted, :c_cold, :c_perfusion, :c_abo_exception, :c_donor_fp, \
:c_donor_type, :c_relation, :c_death_at, :c_death_kind, :c_d_nat, :c_d_res, :c_d_age, :c_d_sex, \
:c_d_abo, :c_d_rh, :c_d_hla, :c_d_nr, :c_r_fp, :c_r_nat, :c_r_res, :c_r_age, :c_r_sex, :c_r_abo, \
:c_r_rh, :c_r_hla, :c_r_nr, now()"
# name|statement setup (executed, not explained)|EXECUTE arguments
statements=(
  "find_existing_many||:hospitals, :externals"
  "lock_and_allocate||:lock_keys, :lock_exclusive, :batch"
  "current_clinics||:clinic_ids"
  "current_clinic||:one_clinic"
  "donor_histories||:donors, :before"
  "clinic_windows_living||:w_clinics, :w_living_since, :w_until, :w_before, :w_n"
  "clinic_windows_deceased||:w_clinics, :w_deceased_since, :w_until, :w_before, :w_n"
  "lock_keys||:lock_keys, :lock_exclusive"
  "find_existing||:one_hospital, :one_external"
  "insert_new||$new_records"
  "insert_flags|EXECUTE insert_new($new_records);|:f_record, :f_rule, :f_version, :f_severity, :f_explanation, :f_evidence, :f_hospital, :f_clinic, :f_external"
  "lock_record||:a_id"
  "current_versions||ARRAY[:a_id]::bigint[]"
  "amend||:a_id, :a_hash, :a_clinic, :a_country, :a_organ, :a_laterality, :a_procured, :a_transplanted, :a_cold, :a_perfusion, :a_abo_exception, :a_donor_fp, :a_donor_type, :a_relation, :a_death_at, :a_death_kind, :a_d_nat, :a_d_res, :a_d_age, :a_d_sex, :a_d_abo, :a_d_rh, :a_d_hla, :a_d_nr, :a_r_fp, :a_r_nat, :a_r_res, :a_r_age, :a_r_sex, :a_r_abo, :a_r_rh, :a_r_hla, :a_r_nr, :a_version - 1, :a_hash, '{\"synthetic\": true}', NULL, now(), :a_hash, :a_version, 'explain.sh', now(), :a_hash"
  "save_flag||:a_id, :a_rule, 1, 3, 'explained again', '{}', :a_hospital, :a_clinic, :a_version, :a_external"
  "clear_flags||:a_id, :a_version, ARRAY['ABO_INCOMPATIBLE'], :a_clinic"
)

explains() {
  printf '%s\n' "$setup"
  echo "BEGIN;"
  for mode in custom generic; do
    echo "SET plan_cache_mode = force_${mode}_plan;"
    for s in "${statements[@]}"; do
      IFS='|' read -r name before args <<<"$s"
      echo "\\echo '### $name $mode'"
      echo "SAVEPOINT each;"
      if [[ -n $before ]]; then printf '\\o /dev/null\n%s\n\\o\n' "$before"; fi
      echo "EXPLAIN (ANALYZE, BUFFERS) EXECUTE $name($args);"
      echo "ROLLBACK TO SAVEPOINT each;"
    done
  done
  echo "ROLLBACK;"
}

if ! explains | psql "$DATABASE_URL" -X -q -v ON_ERROR_STOP=1 -v batch="$batch" >"$log" 2>&1; then
  echo "explain.sh: psql failed; see $log" >&2
  tail -20 "$log" >&2
  exit 1
fi

# One verdict per statement and plan: the scans of the large tables, and
# whether any of them reads the whole table or the whole of an index.
awk '
function close_node() {
  if (pending != "" && !cond) { bad = bad " full-index-scan(" pending ")" }
  pending = ""; cond = 0
}
function flush() {
  close_node()
  if (name != "") {
    printf "%-24s %-8s %9s ms  %-8s %s\n", name, mode, time, (bad == "" ? "ok" : "FAIL"), scans
    if (bad != "") { failed = 1; printf "%45s%s\n", "", bad }
  }
  scans = ""; bad = ""; time = "?"
}
BEGIN { printf "%-24s %-8s %12s  %-8s %s\n", "statement", "plan", "execution", "verdict", "scans (table: how)" }
/^### / { flush(); name = $2; mode = $3; next }
/Execution Time:/ { time = $(NF - 1) }
/->|^ *[A-Z][A-Za-z ]+ on [a-z_]+|^ *[A-Z][A-Za-z ]+  \(cost/ {
  if ($0 ~ /->/ || $0 ~ /\(cost=/) close_node()
}
/Index Cond:/ { cond = 1 }
/(Seq Scan|Index Scan|Index Only Scan|Bitmap Heap Scan|Bitmap Index Scan|Function Scan)( Backward)? (using [a-z_0-9]+ )?on [a-z_0-9]+/ {
  line = $0; sub(/^ *(-> *)?/, "", line); sub(/  \(cost=.*/, "", line)
  table = line; sub(/.* on /, "", table); sub(/ .*/, "", table)
  how = line; sub(/ on .*/, "", how)
  if (how ~ /Bitmap Index Scan/) { how = how " on " table; table = "" }
  if (how !~ /Function Scan/) scans = scans (scans == "" ? "" : ", ") (table == "" ? "" : table ": ") how
  big = (table ~ /^(records|flags|record_versions)$/)
  if (big && how ~ /Seq Scan/) bad = bad " seq-scan(" table ")"
  if (big && how ~ /^(Parallel )?Index (Only )?Scan/) { pending = table " " how; cond = 0 }
}
END { flush(); exit failed }
' "$log" && status=0 || status=$?
echo "plans: $log"
if [[ $status -ne 0 ]]; then
  echo "explain.sh: a plan reads records, flags or record_versions whole (see above)" >&2
  exit 1
fi
