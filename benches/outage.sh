#!/usr/bin/env bash
# Measures what callers see while the database goes away and comes back, in
# one command: the release server on a project-managed local Postgres of its
# own (under a scratch data directory), a record submitted every few
# milliseconds and health checked on another connection, while loadgen stops
# that Postgres (fast mode) and starts it again. Prints how long the service
# took to know, how fast calls were refused meanwhile (target: under 100 ms,
# each with RetryInfo) and how soon a record was stored again (target: under
# 1 s). Extra arguments go to loadgen (e.g. --outage-seconds 5).
#
# SKIP_BUILD=1 measures the binaries as they were last built.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
[[ -n ${SKIP_BUILD:-} ]] || cargo build --release --quiet --bin transplant-audit --bin loadgen
dir=$(mktemp -d -t ta-outage.XXXXXX)
# Reachable by the user Postgres runs as, so the cluster lives under it.
chmod 755 "$dir"
unset DATABASE_URL
export DATA_DIR=$dir
export FINGERPRINT_KEY=${FINGERPRINT_KEY:-$(openssl rand -hex 32)}
export SIGNING_KEY=${SIGNING_KEY:-$(openssl rand -hex 32)}
export LEDGER_DIGEST_FILE=$dir/digests.jsonl
export METRICS_ADDR=127.0.0.1:0 LISTEN_ADDR=127.0.0.1:50061 RUST_LOG=error
bin=$target/release/transplant-audit

server=
# The server stops its local Postgres when it exits (it is the last user).
cleanup() {
  [[ -n $server ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT

$bin migrate
admin_key=$($bin keys create --role admin --principal outage)
hospital_key=$($bin keys create --role hospital --hospital-id H-DE-001)
$bin serve & server=$!
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/50061) 2>/dev/null && break
  sleep 0.1
done
"$target"/release/loadgen --mode outage --endpoint http://127.0.0.1:50061 \
  --postgres-dir "$dir/postgres" --api-key "$hospital_key" --admin-key "$admin_key" \
  --hospital-id H-DE-001 --records 50000 "$@"
