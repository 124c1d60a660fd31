#!/usr/bin/env bash
# Starts the machine's PostgreSQL 15 and makes a role and a database for the
# tests of the PostgreSQL record store (src/store/tests/postgres.rs,
# tests/store_postgres.rs). The role's password is made at random on the first
# run (kept in the cluster's data folder, so every checkout on the machine
# shares it) and copied to target/postgres-test/password; the URL (without
# it) to target/postgres-test/url. The tests read both from there, or from
# JUNCTION_TEST_POSTGRES_URL and JUNCTION_TEST_POSTGRES_PASSWORD_FILE.
#
# For the TLS tests it also makes a test CA (target/postgres-test/ca.pem), a
# server certificate from it for 127.0.0.1 and localhost, which the cluster is
# set to serve (ssl = on, reloaded), and a second CA the server's certificate
# does not come from (other-ca.pem). Needs openssl.
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

mkdir -p "$out"
# The password, the test CAs and the server's certificate are the machine's,
# kept in the cluster's data folder (readable by root and postgres only) and
# made on the first run: every checkout on this machine gets the same ones.
data_dir="$(pg_lsclusters --no-header | awk 'NR == 1 { print $6 }')"
if ! as_root test -s "$data_dir/junction-test-password"; then
    (umask 077 && head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24 >"$out/password.new")
    as_root install -o postgres -g postgres -m 0600 "$out/password.new" "$data_dir/junction-test-password"
    rm -f "$out/password.new"
fi
password="$(as_root cat "$data_dir/junction-test-password")"
as_postgres "psql -q -v ON_ERROR_STOP=1 -p $port" <<SQL
SELECT 'CREATE ROLE $role LOGIN CREATEDB'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$role') \gexec
ALTER ROLE $role WITH LOGIN CREATEDB PASSWORD '$password';
SELECT 'CREATE DATABASE $database OWNER $role'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$database') \gexec
SQL

# TLS: the cluster serves a certificate from the test CA
if ! as_root test -f "$data_dir/junction-test-server.pem" || ! as_root test -f "$data_dir/junction-test-other-ca.pem"; then
    tmp="$(mktemp -d)"
    for ca in ca other-ca; do
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout "$tmp/$ca.key" -out "$tmp/$ca.pem" -days 3650 \
            -subj "/CN=Junction test $ca" 2>/dev/null
    done
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$tmp/server.ext"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$tmp/server.key" -out "$tmp/server.req" -subj "/CN=127.0.0.1" 2>/dev/null
    openssl x509 -req -in "$tmp/server.req" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" \
        -set_serial 11 -days 3650 -extfile "$tmp/server.ext" -out "$tmp/server.pem" 2>/dev/null
    as_root install -o postgres -g postgres -m 0600 "$tmp/server.key" "$data_dir/junction-test-server.key"
    as_root install -o postgres -g postgres -m 0644 "$tmp/ca.pem" "$data_dir/junction-test-ca.pem"
    as_root install -o postgres -g postgres -m 0644 "$tmp/other-ca.pem" "$data_dir/junction-test-other-ca.pem"
    as_root install -o postgres -g postgres -m 0644 "$tmp/server.pem" "$data_dir/junction-test-server.pem"
    rm -rf "$tmp"
fi
as_root cat "$data_dir/junction-test-ca.pem" >"$out/ca.pem"
as_root cat "$data_dir/junction-test-other-ca.pem" >"$out/other-ca.pem"
as_postgres "psql -q -v ON_ERROR_STOP=1 -p $port" >/dev/null <<SQL
ALTER SYSTEM SET ssl = on;
ALTER SYSTEM SET ssl_cert_file = '$data_dir/junction-test-server.pem';
ALTER SYSTEM SET ssl_key_file = '$data_dir/junction-test-server.key';
SELECT pg_reload_conf();
SQL

umask 077
printf '%s\n' "$password" > "$out/password"
printf 'postgres://%s@127.0.0.1:%s/%s\n' "$role" "$port" "$database" > "$out/url"
echo "PostgreSQL on 127.0.0.1:$port, database $database, role $role (password in $out/password)" >&2
