#!/usr/bin/env bash
# Side-by-side MLLP benchmark: `junction load` against
#   - junction serve, [store] sync = "full"   (fresh journal per run)
#   - junction serve, [store] sync = "normal" (fresh journal per run)
#   - a bare ACK-only peer someone else wrote: @medplum/hl7 Hl7Server
#     (bench/peer/server.mjs; keeps nothing on disk)
# with 1 and 32 connections, REPS repetitions interleaved so drift hits every
# server alike. Prints a markdown table of medians; keeps the raw JSON lines
# and server logs under bench/results/<timestamp>/.
#
#   bench/run.sh            # full run (what BENCHMARKS.md reports)
#   bench/run.sh --quick    # smoke test: 1 repetition, small counts
#
# Tunables (environment): REPS (3), MESSAGES_1 (messages at 1 connection,
# 8000), MESSAGES_32 (messages at 32 connections, 60000), WARMUP (messages
# sent before measuring, 500), LOAD_TIMEOUT_SECS (600). Aim for runs of ~10 s
# each. A run whose `junction load` exits non-zero (a NAK, a lost connection)
# is reported and left out of the medians. Needs cargo, node/npm (the peer) and
# python3 (readiness checks and the summary); traffic stays on 127.0.0.1.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

REPS="${REPS:-3}"
MESSAGES_1="${MESSAGES_1:-8000}"
MESSAGES_32="${MESSAGES_32:-60000}"
WARMUP="${WARMUP:-500}"
LOAD_TIMEOUT_SECS="${LOAD_TIMEOUT_SECS:-600}"
if [ "${1:-}" = "--quick" ]; then
    REPS=1
    MESSAGES_1=300
    MESSAGES_32=3000
    WARMUP=100
elif [ $# -gt 0 ]; then
    echo "usage: bench/run.sh [--quick]" >&2
    exit 2
fi

log() { echo "[bench $(date -u +%H:%M:%S)] $*" >&2; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until a TCP port accepts connections (or an HTTP URL answers 200 when given).
wait_for() {
    local port="$1" url="${2:-}"
    python3 - "$port" "$url" <<'PY'
import socket, sys, time, urllib.request
port, url = int(sys.argv[1]), sys.argv[2]
deadline = time.time() + 60
while time.time() < deadline:
    try:
        if url:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                sys.exit(0)
        else:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            sys.exit(0)
    except Exception:
        time.sleep(0.1)
print("not ready after 60 s: port %d %s" % (port, url), file=sys.stderr)
sys.exit(1)
PY
}

# ---- build ---------------------------------------------------------------
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="$root/bench/results/$stamp"
mkdir -p "$out"
results="$out/results.jsonl"
: >"$results"

log "building junction (release)"
cargo build --release --locked --quiet
junction="${CARGO_TARGET_DIR:-$root/target}/release/junction"
[ -x "$junction" ] || { echo "no binary at $junction" >&2; exit 1; }

if [ ! -d bench/peer/node_modules/@medplum/hl7 ]; then
    log "installing the peer (npm ci in bench/peer)"
    (cd bench/peer && npm ci --no-audit --no-fund --loglevel=error)
fi

# ---- the ACK-only peer (one process for the whole run) -------------------
peer_pid=""
engine_pid=""
cleanup() {
    # Only the processes this script started, by pid.
    [ -n "$engine_pid" ] && kill -TERM "$engine_pid" 2>/dev/null && wait "$engine_pid" 2>/dev/null
    [ -n "$peer_pid" ] && kill -TERM "$peer_pid" 2>/dev/null && wait "$peer_pid" 2>/dev/null
    return 0
}
trap cleanup EXIT

peer_port="$(free_port)"
node bench/peer/server.mjs "$peer_port" >"$out/peer.log" 2>&1 &
peer_pid=$!
wait_for "$peer_port"
log "peer (@medplum/hl7 Hl7Server) on 127.0.0.1:$peer_port"

# ---- one measurement -----------------------------------------------------
# run_load TARGET SYNC CONNECTIONS MESSAGES REP PORT
run_load() {
    local target="$1" sync="$2" connections="$3" messages="$4" rep="$5" port="$6"
    local name="$target-c$connections-r$rep"
    [ "$sync" = "-" ] || name="$target-$sync-c$connections-r$rep"
    log "$name: junction load --to 127.0.0.1:$port --connections $connections --messages $messages --warmup $WARMUP"
    if ! timeout "$LOAD_TIMEOUT_SECS" "$junction" load --to "127.0.0.1:$port" \
        --connections "$connections" --messages "$messages" --warmup "$WARMUP" \
        >"$out/$name.load.txt" 2>"$out/$name.load.err"; then
        log "$name: junction load FAILED (left out of the medians); last lines:"
        tail -n 5 "$out/$name.load.txt" "$out/$name.load.err" >&2 || true
        echo "$name" >>"$out/failed-runs.txt"
        return 0
    fi
    # The summary is the last line `junction load` prints: one JSON object.
    tail -n 1 "$out/$name.load.txt" | python3 -c '
import json, sys
summary = json.loads(sys.stdin.read())
for key in ("msgs_per_sec", "p50_ms", "p90_ms", "p99_ms", "max_ms"):
    if not isinstance(summary.get(key), (int, float)):
        sys.exit("summary line lacks a number for %r: %r" % (key, summary))
target, sync, connections, messages, rep = sys.argv[1:6]
summary.update(target=target, sync=sync, connections=int(connections),
               messages=int(messages), rep=int(rep))
print(json.dumps(summary))
' "$target" "$sync" "$connections" "$messages" "$rep" >>"$results"
    log "$name: $(tail -n 1 "$results")"
}

# run_junction SYNC CONNECTIONS MESSAGES REP: a fresh engine and journal per run.
run_junction() {
    local sync="$1" connections="$2" messages="$3" rep="$4"
    local dir mllp_port api_port
    dir="$(mktemp -d "${TMPDIR:-/tmp}/junction-bench.XXXXXX")"
    mllp_port="$(free_port)"
    api_port="$(free_port)"
    cat >"$dir/junction.toml" <<TOML
[listeners.bench]
bind = "127.0.0.1:$mllp_port"
max_connections = 256
idle_timeout_secs = 300
max_message_bytes = 4194304

[store]
path = "data/junction.db"
sync = "$sync"

[api]
bind = "127.0.0.1:$api_port"

[log]
format = "text"
TOML
    "$junction" serve --config "$dir/junction.toml" >"$out/junction-$sync-c$connections-r$rep.serve.log" 2>&1 &
    engine_pid=$!
    wait_for "$api_port" "http://127.0.0.1:$api_port/ready"
    run_load junction "$sync" "$connections" "$messages" "$rep" "$mllp_port"
    kill -TERM "$engine_pid"
    wait "$engine_pid" || true
    engine_pid=""
    du -sh "$dir/data" >>"$out/journal-sizes.txt" 2>/dev/null || true
    rm -rf "$dir"
}

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "machine: $(nproc) core(s), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "node: $(node --version); peer: @medplum/hl7 $(node -p 'require("./bench/peer/node_modules/@medplum/hl7/package.json").version')"
    echo "reps: $REPS; messages: $MESSAGES_1 at 1 connection, $MESSAGES_32 at 32 connections; warm-up $WARMUP"
    # sync = full pays one fsync per group commit: with one message in flight
    # per connection, msgs/s can not exceed connections / fsync latency.
    python3 - "${TMPDIR:-/tmp}" <<'PY'
import os, sys, tempfile, time
fd, path = tempfile.mkstemp(dir=sys.argv[1], prefix="junction-bench-fsync.")
try:
    times = []
    for _ in range(300):
        started = time.perf_counter()
        os.write(fd, b"x" * 4096)
        os.fsync(fd)
        times.append(time.perf_counter() - started)
    times.sort()
    median, p90 = times[len(times) // 2], times[len(times) * 9 // 10]
    print("fsync (4 KiB append in %s): median %.2f ms, p90 %.2f ms; ceiling at 32 connections "
          "with one fsync per commit: %.0f msgs/s (a busy machine makes this vary a lot)"
          % (sys.argv[1], median * 1000, p90 * 1000, 32 / median))
finally:
    os.close(fd)
    os.unlink(path)
PY
} | tee "$out/environment.txt" >&2

for rep in $(seq 1 "$REPS"); do
    for load in "1 $MESSAGES_1" "32 $MESSAGES_32"; do
        set -- $load
        run_junction full "$1" "$2" "$rep"
        run_junction normal "$1" "$2" "$rep"
        run_load peer - "$1" "$2" "$rep" "$peer_port"
    done
done

echo
echo "### junction load, medians of $REPS run(s) ($(grep '^machine:' "$out/environment.txt" | cut -d' ' -f2-))"
echo
python3 bench/summarize.py "$results"
if [ -s "$out/failed-runs.txt" ]; then
    echo
    echo "Failed runs (not in the medians): $(tr '\n' ' ' <"$out/failed-runs.txt")"
fi
echo
echo "Raw results and logs: ${out#"$root"/}"
