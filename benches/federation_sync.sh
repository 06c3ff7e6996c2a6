#!/usr/bin/env bash
# Reproduces the federation sync figure of docs/performance.md: two
# registries on fresh databases (ta_fed_a, ta_fed_b on the Postgres at
# ADMIN_URL), each seeded by benches/seed.sql with FEDERATION_RECORDS records
# (default 3,333,334: 10^6 living donors) whose living donors carry elements
# under the registry's own federation key (benches/seed_elements.rs; the
# living donors of every FEDERATION_SHARED-th ten records, default 100, are
# the same people in both), certificates from a CA of each, registry b
# serving FEDERATION_ADDR, and registry a running `federation sync --peer b`,
# timed. FEDERATION_KEEP=1 keeps the databases (dropped otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
admin=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
n=${FEDERATION_RECORDS:-3333334}
shared=${FEDERATION_SHARED:-100}
target=${CARGO_TARGET_DIR:-target}
work=$(mktemp -d -t ta-federation.XXXXXX)
export SIGNING_KEY=${SIGNING_KEY:-$(openssl rand -hex 32)}
export LEDGER_DIGEST_FILE=$work/digests.jsonl RUST_LOG=warn METRICS_ADDR=127.0.0.1:0
export FEDERATION_DAILY_CEILING=100000000

cargo build --release --quiet --bin transplant-audit
cargo build --release --quiet -p transplant-audit-core --example seed_elements
bin=$target/release/transplant-audit

server=
cleanup() {
  local status=$?
  [[ -n $server ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  if [[ -z ${FEDERATION_KEEP:-} ]]; then
    psql "$admin" -qc "DROP DATABASE IF EXISTS ta_fed_a WITH (FORCE)" \
      -c "DROP DATABASE IF EXISTS ta_fed_b WITH (FORCE)"
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT

declare -A fingerprint federation
for r in a b; do
  fingerprint[$r]=$(openssl rand -hex 32)
  federation[$r]=$(openssl rand -hex 32)
  # A CA per registry, and the registry's certificate (server and client).
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=registry $r CA" -keyout "$work/$r-ca-key.pem" -out "$work/$r-ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$work/$r-key.pem" -out "$work/$r.csr" 2>/dev/null
  openssl x509 -req -in "$work/$r.csr" -CA "$work/$r-ca.pem" -CAkey "$work/$r-ca-key.pem" \
    -CAcreateserial -days 2 -out "$work/$r.pem" -extfile <(printf '%s\n' \
      'subjectAltName=DNS:localhost' 'basicConstraints=CA:FALSE' \
      'keyUsage=digitalSignature' 'extendedKeyUsage=serverAuth,clientAuth') 2>/dev/null
  psql "$admin" -qc "DROP DATABASE IF EXISTS ta_fed_$r WITH (FORCE)" -c "CREATE DATABASE ta_fed_$r"
  url=${admin%/*}/ta_fed_$r
  DATABASE_URL=$url FINGERPRINT_KEY=${fingerprint[$r]} $bin migrate
  start=$(date +%s.%N)
  "$target/release/examples/seed_elements" "${federation[$r]}" "$n" "$r" "$shared" \
    >"$work/$r-elements.tsv"
  middle=$(date +%s.%N)
  psql "$url" -q -v n="$n" -v elements="$work/$r-elements.tsv" -f benches/seed.sql >/dev/null
  rm "$work/$r-elements.tsv"
  echo "registry $r: elements $(echo "$middle - $start" | bc) s, seed $(echo "$(date +%s.%N) - $middle" | bc) s" >&2
done

# Registry r's environment (its database, keys and certificate).
as() {
  local r=$1
  shift
  DATABASE_URL=${admin%/*}/ta_fed_$r FINGERPRINT_KEY=${fingerprint[$r]} \
    FEDERATION_KEY=${federation[$r]} FEDERATION_CERT_FILE=$work/$r.pem \
    FEDERATION_KEY_FILE=$work/$r-key.pem "$@"
}
# Registry b's server; run in the background, the subshell becomes the
# server (exec), so $! is its pid for the kill and the CPU figure.
serve_b() {
  export LISTEN_ADDR=127.0.0.1:50171 FEDERATION_ADDR=127.0.0.1:50172
  exec env DATABASE_URL="${admin%/*}/ta_fed_b" FINGERPRINT_KEY="${fingerprint[b]}" \
    FEDERATION_KEY="${federation[b]}" FEDERATION_CERT_FILE="$work/b.pem" \
    FEDERATION_KEY_FILE="$work/b-key.pem" "$bin" serve
}
as b $bin federation peers add a --address https://localhost:50162 --ca-file "$work/a-ca.pem" >/dev/null
as a $bin federation peers add b --address https://localhost:50172 --ca-file "$work/b-ca.pem" >/dev/null
# Adding a peer adopted every seeded row into the ledger, rewriting it:
# VACUUM, as autovacuum would, so that index-only scans skip the heap.
for r in a b; do psql "${admin%/*}/ta_fed_$r" -qc "VACUUM (ANALYZE) records"; done
serve_b &
server=$!
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/50172) 2>/dev/null && break
  sleep 0.1
done
start=$(date +%s.%N)
as a $bin federation sync --peer b 2> >(tail -n 2 >&2)
end=$(date +%s.%N)
read -r _ _ _ _ _ _ _ _ _ _ _ _ _ utime stime _ <"/proc/$server/stat"
echo "sync: $(echo "$end - $start" | bc) s wall; the peer's server used $(( (utime + stime) / $(getconf CLK_TCK) )) s of CPU" >&2
