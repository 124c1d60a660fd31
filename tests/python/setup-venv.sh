#!/usr/bin/env bash
# Creates (or updates) the Python venv the tests use: .venv in the repository root,
# with the independent peers pinned in tests/python/requirements.txt
# (python-hl7, hl7apy, fhir.resources, mesh-sandbox, mesh-client).
#
#   bash tests/python/setup-venv.sh          # then: cargo test
#
# Set JUNCTION_VENV to use a venv elsewhere; the tests look there first.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${JUNCTION_VENV:-$root/.venv}"
requirements="$root/tests/python/requirements.txt"

if [ ! -x "$venv/bin/python" ]; then
    echo "creating venv at $venv" >&2
    python3 -m venv "$venv"
fi

check_imports() {
    "$venv/bin/python" -c 'import hl7, hl7apy, fhir.resources.R4B.bundle, mesh_client, mesh_sandbox' 2>/dev/null
}

# Skip pip when the requirements file has not changed since the last install and
# every package still imports.
stamp="$venv/.junction-requirements"
if [ -f "$stamp" ] && cmp -s "$stamp" "$requirements" && check_imports; then
    echo "venv at $venv is up to date" >&2
    exit 0
fi

"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
if ! check_imports; then
    echo "error: the venv at $venv cannot import its packages after pip install" >&2
    exit 1
fi
cp "$requirements" "$stamp"
echo "venv at $venv is ready" >&2
