#!/usr/bin/env bash
# FHIR reads over HTTP from the record store in SQLite beside the record store in
# PostgreSQL. For each backend in turn: a fresh `junction serve` with the shipped
# routes and mappings, PATIENTS ADT^A01 admissions loaded (`junction load
# --patients`: one Patient and one Encounter each, in the store once the queue has
# drained), a `clinical` token, then REQUESTS reads by curl (`--parallel`,
# CONCURRENCY at once, keep-alive), a quarter of each kind:
#   Patient?identifier=<MRN>, Patient/<id>, Patient/<id>/$everything,
#   Encounter?patient=<id>
# for patients picked at random (the same picks for both backends). Every read is
# audited (one audit row written per read, as in production). REPS runs of each,
# alternated; prints each run and the medians (reads/s, wall time).
#
#   bash tests/postgres/setup.sh && bench/fhir_reads.sh    # what BENCHMARKS.md reports
#
# PostgreSQL is the machine's (tests/postgres/setup.sh), on loopback, plain TCP, in
# a schema of its own. Tunables (environment): REPS (3), PATIENTS (2000),
# REQUESTS (4000), CONCURRENCY (16), JUNCTION (a binary to use instead of
# building this checkout's).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPS="${REPS:-3}"
PATIENTS="${PATIENTS:-2000}"
REQUESTS="${REQUESTS:-4000}"
CONCURRENCY="${CONCURRENCY:-16}"
pg="$root/target/postgres-test"
[ -f "$pg/url" ] || { echo "run tests/postgres/setup.sh first" >&2; exit 1; }

# JUNCTION: another build to measure (an A/B against an older commit)
if [ -z "${JUNCTION:-}" ]; then
    (cd "$root" && cargo build --release --locked --quiet)
fi
junction="${JUNCTION:-${CARGO_TARGET_DIR:-$root/target}/release/junction}"

# shellcheck source=bench/engine.sh
source "$root/bench/engine.sh"

work="$(mktemp -d "${TMPDIR:-/tmp}/junction-fhir-bench.XXXXXX")"
cleanup() {
    stop_engine
    rm -rf "$work"
}
trap cleanup EXIT

# the same random patients for every run
python3 -c "
import random
r = random.Random(20261123)
for _ in range($REQUESTS):
    print(r.randrange($PATIENTS))
" >"$work/picks.txt"

: >"$work/results.txt"
for rep in $(seq 1 "$REPS"); do
    for backend in sqlite postgres; do
        dir="$work/$backend-$rep"
        start_engine "$dir" "$backend" "fhirbench_$$_$rep"
        "$junction" load --to "127.0.0.1:$mllp" --connections 16 --messages "$PATIENTS" \
            --patients "$PATIENTS" >/dev/null 2>&1
        token="$(cd "$dir" && "$junction" token add bench --role clinical --config junction.toml 2>/dev/null)"
        # the drain, then each picked patient's id (by identifier), then the reads
        python3 - "$api" "$PATIENTS" "$token" "$work/picks.txt" "$dir/reads.cfg" <<'PY'
import json, sys, time, urllib.request
api, n, token, picks, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
base = f"http://127.0.0.1:{api}"
while True:
    queues = json.load(urllib.request.urlopen(f"{base}/api/queues"))["queues"]
    store = next((q for q in queues if q["destination"] == "store"), {})
    if store.get("delivered", 0) >= n and store.get("pending", 1) == 0:
        break
    time.sleep(0.2)
ids = {}
def patient_id(k):
    if k not in ids:
        req = urllib.request.Request(f"{base}/fhir/Patient?identifier=LOADP{k:07}",
                                     headers={"Authorization": f"Bearer {token}"})
        bundle = json.load(urllib.request.urlopen(req))
        ids[k] = bundle["entry"][0]["resource"]["id"]
    return ids[k]
with open(out, "w") as f:
    f.write(f'header = "Authorization: Bearer {token}"\n')
    for i, line in enumerate(open(picks)):
        k = int(line)
        kind = i % 4
        if kind == 0:
            path = f"/fhir/Patient?identifier=LOADP{k:07}"
        elif kind == 1:
            path = f"/fhir/Patient/{patient_id(k)}"
        elif kind == 2:
            path = f"/fhir/Patient/{patient_id(k)}/$everything"
        else:
            path = f"/fhir/Encounter?patient={patient_id(k)}"
        f.write(f'url = "{base}{path}"\noutput = "/dev/null"\nwrite-out = "%{{http_code}}\\n"\n')
PY
        start=$(date +%s.%N)
        curl -s --no-progress-meter --parallel --parallel-max "$CONCURRENCY" -K "$dir/reads.cfg" >"$dir/codes.txt"
        end=$(date +%s.%N)
        ok=$(grep -c '^200$' "$dir/codes.txt" || true)
        secs=$(python3 -c "print(f'{$end - $start:.2f}')")
        echo "$backend $secs $ok" | tee -a "$work/results.txt"
        stop_engine
    done
done

python3 - "$work/results.txt" "$REQUESTS" <<'PY'
import statistics, sys
runs = {}
n = int(sys.argv[2])
for line in open(sys.argv[1]):
    backend, secs, ok = line.split()
    runs.setdefault(backend, []).append((float(secs), int(ok)))
for backend, rs in runs.items():
    secs = statistics.median(s for s, _ in rs)
    print("%-8s %d reads in median %.2f s: %.0f reads/s; runs %s; all 200: %s" % (
        backend, n, secs, n / secs, " / ".join("%.2f s" % s for s, _ in rs),
        all(ok == n for _, ok in rs)))
PY
