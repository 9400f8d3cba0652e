#!/usr/bin/env bash
# Builds the sdist and wheel, checks them with twine and checks that the wheel
# holds the files beyond the Python code (the demo page, the browser client and
# its types, py.typed, the AsyncAPI document). Then installs the wheel in a
# fresh virtual environment outside the checkout and smoke-tests the installed
# `presence serve` from there, with its in-process Redis.
#
# Usage: PYTHON=.venv/bin/python tools/check_package.sh   (or: make package)
# PYTHON needs build and twine (the dev extra); the new environment downloads
# presence's dependencies from PyPI. Needs curl. Writes nothing in the checkout.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
# Absolute without resolving symlinks: a venv's python is a symlink to the base
# interpreter, which lacks the venv's packages.
if [[ $PYTHON == */* ]]; then
    PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"
fi
HEALTH_DEADLINE=60 # seconds the installed server may take to answer /healthz
# The smoke test runs the defaults: a PRESENCE_AUTH_SECRET or PRESENCE_REDIS_URL
# of the caller's shell would change what it checks.
for name in $(compgen -e); do
    if [[ $name == PRESENCE_* ]]; then unset "$name"; fi
done

WORK=$(mktemp -d)
SERVER_PID=
stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    local pid=$SERVER_PID rc=0
    SERVER_PID=
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 15))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    if kill -KILL "$pid" 2>/dev/null; then
        echo "check_package: presence serve ignored SIGTERM for 15s; killed" >&2
    fi
    wait "$pid" || rc=$?
    return "$rc"
}
cleanup() {
    local rc=$?
    stop_server || true
    if ((rc != 0)) && [[ -s $WORK/server.log ]]; then
        echo "--- last lines of the server's log:" >&2
        tail -n 20 "$WORK/server.log" >&2
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
fail() {
    echo "check_package: $*" >&2
    exit 1
}

# Build from a copy of the files git tracks or would track (as they are in the
# work tree), so that nothing ignored (a stale *.egg-info, build/) leaks into
# the sdist and nothing is written into the checkout.
SRC=$ROOT
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    SRC=$WORK/src
    mkdir "$SRC"
    git -C "$ROOT" ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' path; do
            if [[ -e $ROOT/$path || -L $ROOT/$path ]]; then printf '%s\0' "$path"; fi
        done |
        tar -C "$ROOT" --null -T - -cf - | tar -C "$SRC" -xf -
fi

echo "building the sdist and the wheel"
if ! "$PYTHON" -m build --outdir "$WORK/dist" "$SRC" >"$WORK/build.log" 2>&1; then
    cat "$WORK/build.log" >&2
    fail "python -m build failed"
fi
"$PYTHON" -m twine check --strict "$WORK"/dist/*
wheels=("$WORK"/dist/*.whl)
((${#wheels[@]} == 1)) || fail "expected one wheel, found ${#wheels[@]}"
WHEEL=${wheels[0]}

"$PYTHON" -c 'import sys, zipfile; print("\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))' \
    "$WHEEL" >"$WORK/wheel.txt"
echo "$(basename "$WHEEL"): $(wc -l <"$WORK/wheel.txt") files"
# The browser client and its types by name, and whatever else static/ holds.
mapfile -t required < <(
    {
        printf '%s\n' presence/py.typed presence/asyncapi.yaml \
            presence/static/presence-client.js presence/static/presence-client.d.ts
        for path in "$SRC"/presence/static/*; do echo "presence/static/${path##*/}"; done
    } | sort -u
)
missing=0
for path in "${required[@]}"; do
    if grep -qxF "$path" "$WORK/wheel.txt"; then
        echo "  has $path"
    else
        echo "  MISSING $path" >&2
        missing=1
    fi
done
((missing == 0)) || fail "the wheel lacks files presence needs"

echo "installing the wheel in a new virtual environment"
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$WHEEL"

# From outside the checkout, so that only the installed package can be imported.
cd "$WORK"
where=$("$WORK/venv/bin/python" -c 'import presence; print(presence.__file__)')
[[ $where == "$WORK/venv/"* ]] || fail "presence imported from $where, not the new environment"
version=$("$WORK/venv/bin/presence" --version)
echo "installed: $version"
"$WORK/venv/bin/python" -c 'import sys; from importlib.resources import files
sys.exit(not (files("presence") / "asyncapi.yaml").read_text().startswith("asyncapi:"))' ||
    fail "the installed package does not hold a readable asyncapi.yaml"

PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE=http://127.0.0.1:$PORT
"$WORK/venv/bin/presence" serve --host 127.0.0.1 --port "$PORT" --redis-url memory:// \
    >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

deadline=$((SECONDS + HEALTH_DEADLINE))
until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$BASE/healthz") == 200 ]]; do
    kill -0 "$SERVER_PID" 2>/dev/null || fail "presence serve exited before /healthz answered"
    ((SECONDS < deadline)) || fail "/healthz did not answer 200 within ${HEALTH_DEADLINE}s"
    sleep 0.2
done
echo "GET /healthz: 200"

# The stream stays open: curl ends it at --max-time (exit code 28).
curl -sN --max-time 3 "$BASE/clients/smoke/events" >"$WORK/events.txt" || true
grep -qx 'event: snapshot' "$WORK/events.txt" ||
    fail "GET /clients/smoke/events sent no snapshot: $(head -c 300 "$WORK/events.txt")"
echo "GET /clients/smoke/events: event: snapshot"

curl -sf --max-time 5 -o "$WORK/client.js" "$BASE/static/presence-client.js" ||
    fail "GET /static/presence-client.js failed"
cmp -s "$WORK/client.js" "$SRC/presence/static/presence-client.js" ||
    fail "GET /static/presence-client.js differs from presence/static/presence-client.js"
echo "GET /static/presence-client.js: served"

stop_server || fail "presence serve exited with status $? on SIGTERM"
echo "package OK: $(basename "$WHEEL") and its sdist"
