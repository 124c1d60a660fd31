#!/usr/bin/env bash
# The record store in SQLite beside the record store in PostgreSQL, end to end:
# for each backend in turn, a fresh `junction serve` with the shipped routes and
# mappings (every ADT^A01 routed to the `store` destination, sync = "full"),
# `junction load` of MESSAGES messages on CONNECTIONS connections, then the time
# until the store destination has delivered them all (the drain: documents
# applied per second). REPS runs of each, alternated; prints each run and the
# medians.
#
#   bash tests/postgres/setup.sh && bench/store.sh    # what BENCHMARKS.md reports
#
# The built-in load template is one patient, so its documents are applied one
# at a time, in order (one transaction, one commit each): the drain measures a
# backend's per-document latency, fsync included. PostgreSQL is the machine's
# (tests/postgres/setup.sh), on loopback, plain TCP, in a schema of its own.
# Tunables (environment): REPS (3), MESSAGES (5000), CONNECTIONS (32),
# PATIENTS (1: the load template's one patient; more spreads the messages over
# that many patients with `junction load --patients`, so the store destination
# applies up to its `concurrency` (4) documents at once), SYNC (full: the journal's
# and the SQLite record store's sync policy; normal leaves the fsyncs to the WAL
# checkpoint, so the drain is the engine's own work), BACKENDS ("sqlite postgres"),
# JUNCTION_BIN (a binary to run instead of building target/release/junction).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPS="${REPS:-3}"
MESSAGES="${MESSAGES:-5000}"
CONNECTIONS="${CONNECTIONS:-32}"
PATIENTS="${PATIENTS:-1}"
pg="$root/target/postgres-test"
[ -f "$pg/url" ] || { echo "run tests/postgres/setup.sh first" >&2; exit 1; }

if [ -n "${JUNCTION_BIN:-}" ]; then
    junction="$JUNCTION_BIN"
else
    (cd "$root" && cargo build --release --locked --quiet)
    junction="${CARGO_TARGET_DIR:-$root/target}/release/junction"
fi

# shellcheck source=bench/engine.sh
source "$root/bench/engine.sh"

work="$(mktemp -d "${TMPDIR:-/tmp}/junction-store-bench.XXXXXX")"
cleanup() {
    stop_engine
    rm -rf "$work"
}
trap cleanup EXIT

: >"$work/results.txt"
for rep in $(seq 1 "$REPS"); do
    for backend in ${BACKENDS:-sqlite postgres}; do
        dir="$work/$backend-$rep"
        start_engine "$dir" "$backend" "bench_$$_$rep"
        patients=()
        [ "$PATIENTS" -gt 1 ] && patients=(--patients "$PATIENTS")
        line="$("$junction" load --to "127.0.0.1:$mllp" --connections "$CONNECTIONS" \
            --messages "$MESSAGES" "${patients[@]}" 2>/dev/null | tail -n 1)"
        loaded=$(date +%s.%N)
        # the drain: until the store destination has delivered every message
        python3 - "$api" "$MESSAGES" <<'PY'
import json, sys, time, urllib.request
api, n = sys.argv[1], int(sys.argv[2])
while True:
    queues = json.load(urllib.request.urlopen(f"http://127.0.0.1:{api}/api/queues"))["queues"]
    store = next((q for q in queues if q["destination"] == "store"), {})
    if store.get("delivered", 0) >= n and store.get("pending", 1) == 0:
        break
    time.sleep(0.2)
PY
        drained=$(date +%s.%N)
        drain=$(python3 -c "print(f'{$drained - $loaded:.1f}')")
        echo "$backend $drain $line" | tee -a "$work/results.txt"
        stop_engine
    done
done

python3 - "$work/results.txt" "$MESSAGES" <<'PY'
import json, statistics, sys
runs = {}
n = int(sys.argv[2])
for line in open(sys.argv[1]):
    backend, drain, summary = line.split(" ", 2)
    runs.setdefault(backend, []).append((float(drain), json.loads(summary)))
for backend, rs in runs.items():
    drains = [d for d, _ in rs]
    print("%-8s intake median %.0f msgs/s (p99 %.2f ms); drain after the load: median %.1f s "
          "(%.0f documents/s from the load's start to the last document applied); runs %s; all accepted: %s" % (
        backend,
        statistics.median(r["msgs_per_sec"] for _, r in rs),
        statistics.median(r["p99_ms"] for _, r in rs),
        statistics.median(drains),
        n / (statistics.median(drains) + n / statistics.median(r["msgs_per_sec"] for _, r in rs)),
        " / ".join("%.1f s" % d for d in drains),
        all(r["not_accepted"] == 0 and r["errors"] == 0 for _, r in rs)))
PY
