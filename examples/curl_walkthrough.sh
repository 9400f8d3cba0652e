#!/usr/bin/env bash
# Two clients, alice and bob, watch each other through a running presence server.
#
#   make serve ARGS="--heartbeat-interval 1"     # in one terminal
#   examples/curl_walkthrough.sh                 # in another
#
# PRESENCE_URL (default http://127.0.0.1:8080) points at the server; SECONDS_OPEN
# (default 6) is how long alice's stream stays open. bob leaves after half of it,
# and alice sees him go OFFLINE once the server's leave grace (2 s by default)
# has passed.
set -euo pipefail

url=${PRESENCE_URL:-http://127.0.0.1:8080}
open_for=${SECONDS_OPEN:-6}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

if ! curl -fsS "$url/healthz" >/dev/null; then
    echo "no presence server answers at $url (start one with: make serve)" >&2
    exit 1
fi

# curl -N: print each event as it arrives. --max-time ends the stream, which
# curl reports as exit code 28; that is expected here.
curl -sN --max-time "$open_for" "$url/clients/alice/events" >"$out/alice" || true &
alice=$!
sleep 0.5
curl -sN --max-time "$(awk "BEGIN { print $open_for / 2 }")" \
    "$url/clients/bob/events" >"$out/bob" || true &
bob=$!
sleep 0.5

echo "== GET /clients (both streams open)"
curl -sS "$url/clients"
echo
echo "== GET /clients/alice"
curl -sS "$url/clients/alice"
echo

wait "$bob" "$alice"

echo
echo "== what bob received (/clients/bob/events, open for $(awk "BEGIN { print $open_for / 2 }") s)"
cat "$out/bob"
echo "== what alice received (/clients/alice/events, open for $open_for s)"
cat "$out/alice"
echo "== GET /clients/alice (both streams just closed; ONLINE until her leave grace runs out)"
curl -sS "$url/clients/alice"
echo
