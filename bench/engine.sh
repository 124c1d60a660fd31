# Sourced by bench/store.sh and bench/fhir_reads.sh: a fresh `junction serve` on
# either record store backend, and what it needs. Expects `root` and `pg` (the
# folder tests/postgres/setup.sh fills) to be set, and `junction` (the binary).

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

psql_test() {
    PGOPTIONS="-c client_min_messages=warning" PGPASSWORD="$(cat "$pg/password")" psql -q -v ON_ERROR_STOP=1 "$(cat "$pg/url")" -c "$1"
}

engine_pid=""
schema=""

# start_engine DIR BACKEND SCHEMA: the shipped routes, mappings and destinations,
# journal and record store `sync = "full"` (or $SYNC), the record store in SQLite or (BACKEND
# postgres) in a new schema SCHEMA of the test database; waits until it is ready.
# Sets engine_pid, mllp, api and schema.
start_engine() {
    local dir="$1" backend="$2" store_extra=""
    mkdir -p "$dir"
    ln -s "$root/routes" "$dir/routes"
    ln -s "$root/mappings" "$dir/mappings"
    mllp="$(free_port)"
    api="$(free_port)"
    if [ "$backend" = postgres ]; then
        schema="$3"
        psql_test "CREATE SCHEMA $schema"
        store_extra="url = \"$(cat "$pg/url")?options=-csearch_path%3D$schema\"
password_file = \"$pg/password\""
    fi
    {
        printf '[listeners.pas]\nbind = "127.0.0.1:%s"\nmax_connections = 256\n\n' "$mllp"
        printf '[store]\npath = "data/junction.db"\nrecords = "data/records.db"\nsync = "%s"\n%s\n\n' "${SYNC:-full}" "$store_extra"
        printf '[api]\nbind = "127.0.0.1:%s"\n\n[log]\nformat = "text"\n\n' "$api"
        sed -n '/^\[destinations/,$p' "$root/junction.toml"
    } >"$dir/junction.toml"
    (cd "$dir" && exec "$junction" serve --config junction.toml >engine.log 2>&1) &
    engine_pid=$!
    for _ in $(seq 1 100); do
        python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$api/ready', timeout=1)" 2>/dev/null && break
        sleep 0.2
    done
}

# stop_engine: SIGTERM and wait; drops the run's PostgreSQL schema.
stop_engine() {
    if [ -n "$engine_pid" ]; then
        kill -TERM "$engine_pid" 2>/dev/null && wait "$engine_pid" 2>/dev/null || true
        engine_pid=""
    fi
    if [ -n "$schema" ]; then
        psql_test "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
        schema=""
    fi
}
