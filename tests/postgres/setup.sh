#!/usr/bin/env bash
# Starts the machine's PostgreSQL 15 and makes a role and a database for the
# tests of the PostgreSQL record store (src/store/tests/postgres.rs,
# tests/store_postgres.rs). The role's password is made anew, at random, on
# every run and written to target/postgres-test/password; the URL (without
# it) to target/postgres-test/url. The tests read both from there, or from
# JUNCTION_TEST_POSTGRES_URL and JUNCTION_TEST_POSTGRES_PASSWORD_FILE.
#
#   bash tests/postgres/setup.sh          # then: cargo test
#
# Needs root or sudo (to start the cluster and to run psql as postgres).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="$root/target/postgres-test"
role="junction_test"
database="junction_test"
port=5432

as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then
        su postgres -s /bin/bash -c "$*"
    else
        sudo -u postgres bash -c "$*"
    fi
}
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
fi
cluster="$(pg_lsclusters --no-header | awk 'NR == 1 { print $1 " " $2 }')"
if [ -z "$cluster" ]; then
    echo "error: no PostgreSQL cluster on this machine (pg_lsclusters is empty)" >&2
    exit 1
fi
# shellcheck disable=SC2086
if ! pg_lsclusters --no-header | awk 'NR == 1 { exit ($4 == "online") ? 0 : 1 }'; then
    as_root pg_ctlcluster $cluster start
fi
port="$(pg_lsclusters --no-header | awk 'NR == 1 { print $3 }')"

password="$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24)"
as_postgres "psql -q -v ON_ERROR_STOP=1 -p $port" <<SQL
SELECT 'CREATE ROLE $role LOGIN CREATEDB'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$role') \gexec
ALTER ROLE $role WITH LOGIN CREATEDB PASSWORD '$password';
SELECT 'CREATE DATABASE $database OWNER $role'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$database') \gexec
SQL

mkdir -p "$out"
umask 077
printf '%s\n' "$password" > "$out/password"
printf 'postgres://%s@127.0.0.1:%s/%s\n' "$role" "$port" "$database" > "$out/url"
echo "PostgreSQL on 127.0.0.1:$port, database $database, role $role (password in $out/password)" >&2
