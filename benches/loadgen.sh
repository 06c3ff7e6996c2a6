#!/usr/bin/env bash
# Reproduces the ingest figures of docs/performance.md in one command: a
# fresh database on the Postgres at ADMIN_URL (default 127.0.0.1:5432), the
# release server on it, a warm-up run, ANALYZE and a server restart (so plans
# fit the data even where autovacuum is off), then the measured loadgen run
# with its raw-Postgres baselines: three repeats, each of unary calls and
# their baseline, then a stream and its baseline, every phase lasting several
# seconds; the ratios are reported as their median and range. About three
# minutes on a 2-core machine. Extra arguments go to loadgen (later ones
# win, e.g. --repeats 5 or --stream-records 400000).
#
# LOADGEN_DATABASE=name measures on that existing database instead (for
# example one benches/seed.sql filled with 10^7 records, to compare ingest
# cost with a nearly empty one); it is migrated, never dropped.
set -euo pipefail
cd "$(dirname "$0")/.."
admin=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db=${LOADGEN_DATABASE:-ta_loadgen}
export DATABASE_URL=${admin%/*}/$db
export FINGERPRINT_KEY=${FINGERPRINT_KEY:-$(openssl rand -hex 32)}
export SIGNING_KEY=${SIGNING_KEY:-$(openssl rand -hex 32)}
# The ledger's digests go to a scratch file, not into the report.
export LEDGER_DIGEST_FILE=${LEDGER_DIGEST_FILE:-$(mktemp -t ta-digests.XXXXXX)}
export METRICS_ADDR=127.0.0.1:0 LISTEN_ADDR=127.0.0.1:50051 RUST_LOG=warn

# SKIP_BUILD=1 measures the binaries as they were last built.
[[ -n ${SKIP_BUILD:-} ]] || cargo build --release --quiet --bin transplant-audit --bin loadgen
if [[ -z ${LOADGEN_DATABASE:-} ]]; then
  psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
fi
# SERVER_BIN=path measures another build of the server (say, the one
# before a change) with this loadgen.
bin=${SERVER_BIN:-${CARGO_TARGET_DIR:-target}/release/transplant-audit}
$bin migrate
admin_key=$($bin keys create --role admin --principal loadgen)
hospital_key=$($bin keys create --role hospital --hospital-id H-DE-001)

server=
serve() {
  $bin serve & server=$!
  for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/50051) 2>/dev/null && return
    sleep 0.1
  done
  echo "the server did not start" >&2; exit 1
}
# Waits for the server to exit, so that a run right after finds the port free.
trap '[[ -n $server ]] && kill $server 2>/dev/null && wait $server 2>/dev/null; true' EXIT

run() {
  ${CARGO_TARGET_DIR:-target}/release/loadgen --api-key "$hospital_key" --admin-key "$admin_key" \
    --hospital-id H-DE-001 --server-pid "$server" --database-url "$DATABASE_URL" "$@"
}
serve
# Warm-up: the tables have rows.
run --records 5000 --stream-records 20000 --repeats 1 --mode both >/dev/null 2>&1
kill "$server"; wait "$server" || true
psql "$DATABASE_URL" -qc "ANALYZE"
serve
run --records 30000 --stream-records 250000 --repeats 3 --concurrency 64 "$@"
