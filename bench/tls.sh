#!/usr/bin/env bash
# MLLP over TLS beside plain MLLP, side by side: one `junction serve` with the
# shipped [store], routes and mappings (sync = "full": every message routed,
# mapped and stored behind the ACK) and two listeners that differ only in
# [listeners.<id>.tls] (an EC P-256 certificate made here by openssl). Runs
# `junction load` against each in turn, REPS times, and prints each run's
# summary line and the medians.
#
#   bench/tls.sh            # what BENCHMARKS.md reports (REPS=5, MESSAGES=50000)
#
# Tunables (environment): REPS (5), MESSAGES (50000), CONNECTIONS (32),
# WARMUP (500). Needs cargo, openssl and python3; traffic stays on 127.0.0.1.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPS="${REPS:-5}"
MESSAGES="${MESSAGES:-50000}"
CONNECTIONS="${CONNECTIONS:-32}"
WARMUP="${WARMUP:-500}"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

(cd "$root" && cargo build --release --locked --quiet)
junction="${CARGO_TARGET_DIR:-$root/target}/release/junction"

dir="$(mktemp -d "${TMPDIR:-/tmp}/junction-tls-bench.XXXXXX")"
engine_pid=""
cleanup() {
    [ -n "$engine_pid" ] && kill -TERM "$engine_pid" 2>/dev/null && wait "$engine_pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
cd "$dir"

# a CA and the listener's certificate for 127.0.0.1
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout ca.key -out ca.pem -days 2 -subj "/CN=Junction bench CA" 2>/dev/null
printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout server.key -out server.req -subj "/CN=127.0.0.1" 2>/dev/null
openssl x509 -req -in server.req -CA ca.pem -CAkey ca.key -set_serial 7 -days 2 \
    -extfile server.ext -out server.pem 2>/dev/null

plain_port="$(free_port)"
tls_port="$(free_port)"
api_port="$(free_port)"
ln -s "$root/routes" routes
ln -s "$root/mappings" mappings
{
    for id in plain tls; do
        port="$plain_port"
        [ "$id" = tls ] && port="$tls_port"
        printf '[listeners.%s]\nbind = "127.0.0.1:%s"\nmax_connections = 256\n\n' "$id" "$port"
    done
    printf '[listeners.tls.tls]\ncert_file = "server.pem"\nkey_file = "server.key"\n\n'
    # the shipped config from [store] on, with our own API port
    sed -n '/^\[store\]/,$p' "$root/junction.toml" | sed "s/127.0.0.1:8080/127.0.0.1:$api_port/"
} >junction.toml

"$junction" serve --config junction.toml >engine.log 2>&1 &
engine_pid=$!
for _ in $(seq 1 100); do
    python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$api_port/ready', timeout=1)" 2>/dev/null && break
    sleep 0.2
done

: >results.txt
for rep in $(seq 1 "$REPS"); do
    for mode in plain tls; do
        if [ "$mode" = plain ]; then
            args=(--to "127.0.0.1:$plain_port")
        else
            args=(--to "127.0.0.1:$tls_port" --tls-ca ca.pem)
        fi
        line="$("$junction" load "${args[@]}" --connections "$CONNECTIONS" \
            --messages "$MESSAGES" --warmup "$WARMUP" 2>/dev/null | tail -n 1)"
        echo "$mode $line" | tee -a results.txt
    done
done

python3 - results.txt <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    mode, summary = line.split(" ", 1)
    runs.setdefault(mode, []).append(json.loads(summary))
for mode, rs in runs.items():
    med = lambda k: statistics.median(r[k] for r in rs)
    print("%-5s median %.0f msgs/s, p50 %.2f ms, p99 %.2f ms; runs %s; all accepted: %s" % (
        mode, med("msgs_per_sec"), med("p50_ms"), med("p99_ms"),
        " / ".join("%.0f" % r["msgs_per_sec"] for r in rs),
        all(r["not_accepted"] == 0 and r["errors"] == 0 for r in rs)))
PY
