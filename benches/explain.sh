#!/usr/bin/env bash
# The query plans of the service's real database path, judged.
#
# Runs the release server with auto_explain loaded into every Postgres
# session it opens, drives it through gRPC and the console with loadgen,
# and judges every plan Postgres reported. What is explained is what the
# server sends, as it sends it (prepared by sqlx, custom or generic plan as
# Postgres chose, with the statements of triggers and foreign-key checks),
# not hand-kept copies of the query texts, which drift. COPY … FROM STDIN
# (how records are written) has no plan; the triggers it fires do.
#
#   benches/explain.sh [directory for the logs]
#
# The database, either:
# - DATABASE_URL=postgres://…/db: an existing database, migrated but never
#   dropped (one filled by benches/seed.sql, say). It gets the run's keys,
#   clinics and records: not one whose data matters. Give it the
#   FINGERPRINT_KEY and SIGNING_KEY it was written with; otherwise the run
#   writes under random ones, which `verify` then rejects.
# - unset: a fresh database EXPLAIN_DATABASE (default ta_explain, dropped
#   first) on the Postgres at ADMIN_URL (default 127.0.0.1:5432), seeded by
#   benches/seed.sql with SEED_RECORDS (100000) records and SEED_FLAGS
#   (10000) flags, so that the planner sees a registry, not empty tables.
# First a server without auto_explain adopts and seals what the ledger does
# not hold yet (a seeded backlog: whole tables, once), then ANALYZE.
#
# How plans reach us: the server's connection URL carries
# `options=-c session_preload_libraries=auto_explain -c auto_explain.…`
# with auto_explain.log_level=notice and client_min_messages=notice, so
# each plan comes back to the server as a NOTICE on its own connection;
# sqlx logs notices under the tracing target sqlx::postgres::notice at INFO,
# which RUST_LOG turns on, and LOG_FORMAT=json keeps each plan on one line of
# the server's log. Nothing is read from the Postgres server's own log or
# configuration, so this works against a Postgres elsewhere (a managed one
# too) as long as auto_explain is installed (contrib) and the role may set
# those parameters: a superuser, or on Postgres 15+ a role granted SET on
# session_preload_libraries and auto_explain.*. The script checks first.
#
# Sequential scans are priced out (enable_seqscan=off), so that a plan
# keeps one only where no index serves the statement, whatever the size of
# the tables; NATURAL_PLANS=1 keeps the planner's own choices, which are the
# ones to judge on a database of production size.
#
# The load (sizes in RECORDS, STREAM_RECORDS, REPLAYS, ROUNDS): clinics
# registered, SubmitRecord from 8 callers and one SubmitRecords stream (new
# records), the first REPLAYS of each submitted again unchanged (duplicates)
# and then amended through AmendRecord; then, with an AUDITOR key,
# ListFlags, the investigation calls (SearchRecords, GetNetwork,
# GetClinicActivity) and the console's pages; meanwhile the server's own
# tasks (the ledger's sealer, the console's kept counts). A minute or two.
# auto_explain times every plan node and the plans travel to the
# server, so the service runs far slower than in production: no figure
# here is a measurement.
#
# Prints one verdict line per distinct statement and exits 1 when any plan
# reads records, flags, flag_events, record_versions or access_log whole: a
# Seq Scan, or an Index Scan / Index Only Scan without an Index Cond that no
# Limit stops early. Small tables (clinics, clinic_versions, keys, …) may be
# read whole, and so may the few statements benches/explain_plans.py names,
# with why (reported as "whole"). The plans (per statement, the slowest of
# each plan shape) are kept in a log named at the end, with the server's
# raw log next to it, which `benches/explain_plans.py SERVER_LOG PLANS_LOG`
# judges again.
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir=${CARGO_TARGET_DIR:-target}/release
# SKIP_BUILD=1 explains the binaries as they were last built.
[[ -n ${SKIP_BUILD:-} ]] || cargo build --release --quiet --bin transplant-audit --bin loadgen
bin=$bin_dir/transplant-audit
loadgen=$bin_dir/loadgen
out=${1:-$(mktemp -d -t explain.XXXXXX)}
mkdir -p "$out"
trap 'echo "explain.sh: line $LINENO failed; logs in $out" >&2' ERR
records=${RECORDS:-3000}
stream_records=${STREAM_RECORDS:-20000}
replays=${REPLAYS:-200}
rounds=${ROUNDS:-5}
grpc_port=${EXPLAIN_GRPC_PORT:-50071}
console_port=${EXPLAIN_CONSOLE_PORT:-8071}

if [[ -n ${DATABASE_URL:-} ]]; then
  fresh=
else
  admin=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
  db=${EXPLAIN_DATABASE:-ta_explain}
  export DATABASE_URL=${admin%/*}/$db
  fresh=1
fi
export FINGERPRINT_KEY=${FINGERPRINT_KEY:-$(openssl rand -hex 32)}
export SIGNING_KEY=${SIGNING_KEY:-$(openssl rand -hex 32)}
# The ledger's digests go to a scratch file, not into the report.
export LEDGER_DIGEST_FILE=${LEDGER_DIGEST_FILE:-$out/digests}
export RUST_LOG=warn

# auto_explain in every session of the server, its plans sent as NOTICEs.
settings=(session_preload_libraries=auto_explain auto_explain.log_min_duration=0
  auto_explain.log_analyze=on auto_explain.log_buffers=on auto_explain.log_format=json
  auto_explain.log_nested_statements=on auto_explain.log_level=notice client_min_messages=notice)
# A small database's tables are cheaper to read whole than through an index,
# and the planner rightly does so: with sequential scans priced out, a Seq
# Scan left in a plan means no index can serve the statement, whatever the
# database's size. The price (disable_cost) also inflates the cost of a plan
# that keeps a Seq Scan of some small table, enough to make it parallel:
# no parallel plans then. NATURAL_PLANS=1 keeps the planner's own choices
# (for a database of production size, where those are the ones that matter).
[[ -n ${NATURAL_PLANS:-} ]] || settings+=(enable_seqscan=off max_parallel_workers_per_gather=0)
explain_options=$(printf -- '-c %s ' "${settings[@]}")
encoded=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' \
  "$explain_options")
[[ $DATABASE_URL == *\?* ]] && sep='&' || sep='?'
explained_url="$DATABASE_URL${sep}options=$encoded"

# Setup's chatter (notices, the keys' announcements) goes to setup.log.
if [[ -n $fresh ]]; then
  echo "fresh database $db: seeding ${SEED_RECORDS:-100000} records, ${SEED_FLAGS:-10000} flags"
  psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" 2>>"$out/setup.log"
  $bin migrate 2>>"$out/setup.log"
  psql "$DATABASE_URL" -q -v ON_ERROR_STOP=1 -v n="${SEED_RECORDS:-100000}" \
    -v flags="${SEED_FLAGS:-10000}" -f benches/seed.sql >>"$out/setup.log"
else
  $bin migrate 2>>"$out/setup.log"
fi
# Can this role load auto_explain, and do its plans reach the client?
if ! probe=$(psql "$explained_url" -Xqc "SELECT 1" 2>&1 >/dev/null) || [[ $probe != *plan:* ]]; then
  echo "explain.sh: auto_explain did not report a plan on $DATABASE_URL:" >&2
  echo "$probe" >&2
  echo "(the role must be allowed to set session_preload_libraries and auto_explain.*)" >&2
  exit 1
fi

hospital_key=$($bin keys create --role hospital --hospital-id H-DE-001 2>>"$out/setup.log")
admin_key=$($bin keys create --role admin --principal explain 2>>"$out/setup.log")
auditor_key=$($bin keys create --role auditor --principal explain 2>>"$out/setup.log")

# serve URL LOG: the server on DATABASE_URL=URL, its stderr to LOG.
server=
trap '[[ -n $server ]] && kill $server 2>/dev/null && wait $server 2>/dev/null; true' EXIT
serve() {
  DATABASE_URL=$1 LOG_FORMAT=json LISTEN_ADDR=127.0.0.1:$grpc_port \
    CONSOLE_ADDR=127.0.0.1:$console_port METRICS_ADDR=127.0.0.1:0 $bin serve 2>"$2" &
  server=$!
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$grpc_port) 2>/dev/null && return
    kill -0 $server 2>/dev/null || { echo "the server exited; see $2" >&2; exit 1; }
    sleep 0.1
  done
  echo "the server did not start; see $2" >&2
  exit 1
}
stop() { kill "$server"; wait "$server" || true; server=; }

# Rows written before the ledger (a seeded database's) are adopted and
# sealed once, reading whole tables: a server without auto_explain does that
# first, so that what is judged is the steady state.
echo "sealing the ledger"
serve "$DATABASE_URL" "$out/settle.log"
sealed="SELECT coalesce((SELECT max(last_seq) FROM ledger_blocks), 0)
               >= coalesce(pg_sequence_last_value('ledger_seq'), 0)"
for i in $(seq 600); do
  [[ $(psql "$DATABASE_URL" -XAtc "$sealed") == t ]] && break
  [[ $i -lt 600 ]] || { echo "explain.sh: the ledger was not sealed in 5 minutes" >&2; exit 1; }
  sleep 0.5
done
stop
psql "$DATABASE_URL" -qc "ANALYZE"

RUST_LOG=warn,sqlx::postgres::notice=info serve "$explained_url" "$out/server.log"

# Each loadgen run's report goes to loadgen.log; a failed run ends the script.
run() {
  echo "loadgen ${*: -4}"
  # Without DATABASE_URL, loadgen measures no raw-Postgres baselines.
  if ! env -u DATABASE_URL $loadgen --endpoint http://127.0.0.1:$grpc_port --console-url http://127.0.0.1:$console_port \
    --min-seconds 0 "$@" >>"$out/loadgen.log" 2>&1; then
    echo "explain.sh: loadgen ${*: -4} failed:" >&2
    tail -20 "$out/loadgen.log" >&2
    exit 1
  fi
}
run_id=explain-$(date +%s)
ingest=(--api-key "$hospital_key" --admin-key "$admin_key" --hospital-id H-DE-001
  --run-id "$run_id" --records "$records" --stream-records "$stream_records" --repeats 1
  --replays "$replays")
# Fewer callers than the server's pool has connections (DB_MAX_CONNECTIONS,
# 16): amendments hold a connection while they wait for each other's
# advisory locks, and the one holding them needs a second connection to
# read the ledger's new blocks (docs/performance.md, "Query plans").
run "${ingest[@]}" --mode both --concurrency 8
run --api-key "$auditor_key" --mode list-flags --rounds "$rounds"
run --api-key "$auditor_key" --mode investigate --rounds "$rounds"
run --api-key "$auditor_key" --mode console --rounds "$rounds"
stop

echo
status=0
python3 benches/explain_plans.py "$out/server.log" "$out/plans.log" || status=$?
echo "plans: $out/plans.log (server log: $out/server.log, loadgen reports: $out/loadgen.log)"
exit $status
