#!/usr/bin/env bash
# Fuzzes the HTTP API against its own OpenAPI document: starts `braid serve`
# on a free loopback port with a token, a fresh SQLite store and the seed
# and approval pipelines, then runs schemathesis (pinned, in a venv under
# the cache dir) on /openapi.json: no 5xx, and every response matches the
# document (its body's schema, and a status and content type the route
# documents). Any finding fails the script. Bounded: a few examples per
# operation, and at most 10 minutes a pass.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
MAX_EXAMPLES="${BRAID_FUZZ_MAX_EXAMPLES:-20}"

cache="${XDG_CACHE_HOME:-$HOME/.cache}/braid-schemathesis"
venv="$cache/venv-$SCHEMATHESIS_VERSION"
if [ ! -x "$venv/bin/st" ]; then
  echo "installing schemathesis $SCHEMATHESIS_VERSION into $venv" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

# CI passes the binary its tests built; otherwise build one.
bin="${BRAID_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --quiet --bin braid
  bin="${CARGO_TARGET_DIR:-target}/debug/braid"
fi

work=$(mktemp -d)
cp examples/seed.yaml "$work/"
cp examples/approval/pipeline.yaml "$work/approval.yaml"
token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
log="$work/serve.log"
: >"$log"
# Port 0: the server picks a free port and says which on stderr.
BRAID_TOKEN="$token" "$bin" serve --bind 127.0.0.1:0 --store "sqlite://$work/runs.db" \
  --pipelines "$work" --max-pipelines 50 >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$work"' EXIT
url=""
for _ in $(seq 1 100); do
  url=$(sed -n 's|^braid: serving on \(http://[0-9.:]*\).*|\1|p' "$log")
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] && curl -fs "$url/healthz" >/dev/null || { cat "$log" >&2; echo "error: braid serve did not start" >&2; exit 1; }

# Requests reach past the 404s with real names. Pass 1: every operation,
# with one finished run of the seed pipeline as every `{id}` (its events are
# replayed from the store). Pass 2: the run routes, with a run of the
# approval pipeline waiting for an answer as `{id}` (its questions, the
# answer, fork, resume and cancel of a waiting run).
start_run() {
  curl -fsS -X POST "$url/v1/runs?wait=true" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' -d "$1" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["run_id"])'
}
config() {
  cat <<TOML
[parameters]
"path.id" = "$1"
"path.name" = "$2"
"path.agent" = "$3"
"body.pipeline" = "$2"
TOML
}
seed_run=$(start_run '{"pipeline": "seed-optimization", "input": {"request": "cut costs"}, "events": "summary"}')
config "$seed_run" seed-optimization triage >"$work/seed.toml"
waiting_run=$(start_run '{"pipeline": "approval", "input": {"request": "cut costs"}}')
config "$waiting_run" approval approve >"$work/approval.toml"

fuzz() {
  local config=$1
  shift
  local status=0
  # From the scratch folder: schemathesis keeps a cache where it runs.
  (cd "$work" && timeout 600 "$venv/bin/st" --config-file "$config" run "$url/openapi.json" \
    --header "Authorization: Bearer $token" \
    --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance \
    --max-examples "$MAX_EXAMPLES" \
    --request-timeout 10 \
    --no-color \
    "$@") \
    || status=$?
  if [ "$status" -ne 0 ]; then
    echo "error: schemathesis found problems (exit $status); the server's log:" >&2
    tail -n 50 "$log" >&2
    exit "$status"
  fi
}
fuzz "$work/seed.toml"
fuzz "$work/approval.toml" --include-tag runs
echo "api-fuzz: no server errors, every response matches docs/openapi.json"
