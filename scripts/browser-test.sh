#!/usr/bin/env bash
# The web view in a real browser: installs Debian's Chromium and
# playwright-core if missing, starts `braid serve` on a free loopback port
# with a token, and runs crates/braid-server/tests/browser/view.mjs.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian's chromium" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
command -v node >/dev/null || { echo "error: node is required for the browser test" >&2; exit 1; }
( cd crates/braid-server/tests/browser && npm ci --no-audit --no-fund --silent )

cargo build --quiet --bin braid
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
log=$(mktemp)
BRAID_TOKEN="$token" ./target/debug/braid serve --bind "127.0.0.1:$port" --no-store >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 50); do
  curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$port/healthz" >/dev/null || { cat "$log" >&2; echo "error: braid serve did not start" >&2; exit 1; }

BRAID_URL="http://127.0.0.1:$port" BRAID_TOKEN="$token" BRAID_SCREENSHOT="${BRAID_SCREENSHOT:-target/web-view.png}" \
  node crates/braid-server/tests/browser/view.mjs
