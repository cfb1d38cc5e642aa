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

# CI passes the binary its tests built; otherwise build one (cargo puts
# it in CARGO_TARGET_DIR when set, else ./target).
bin="${BRAID_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --quiet --bin braid
  bin="${CARGO_TARGET_DIR:-target}/debug/braid"
fi
# The pipeline the page watches. Its first agent waits for a file the test
# creates once it has seen the agent running on screen, so the check does
# not depend on how fast the machine loads the page.
work=$(mktemp -d)
cat >"$work/web-view.yaml" <<YAML
pipeline: web-view
agents:
  triage:  { kind: command, run: [sh, -c, 'while [ ! -e "$work/go" ]; do sleep 0.05; done; echo "{\\"route\\": 1}"'], writes: [route] }
  data:    { kind: sleep, ms: 300, reads: [route], writes: [data] }
  metrics: { kind: sleep, ms: 300, reads: [route], writes: [metrics] }
  report:  { kind: sleep, ms: 300, reads: [data, metrics], writes: [report] }
YAML
# A fan-out of 4: instance 4 fails (skipped over), instance 3 waits for
# the file `go-fan` (command agents start in the pipeline's folder), so the
# test sees its progress live before it ends.
cat >"$work/fan-view.yaml" <<'YAML'
pipeline: fan-view
agents:
  plan: { kind: sleep, ms: 1, writes: [items], value: [1, 2, 3, 4] }
  work:
    kind: command
    run:
      - sh
      - -c
      - |
        x=$(cat)
        case "$x" in
          *'"item":3'*) while [ ! -e go-fan ]; do sleep 0.05; done ;;
          *'"item":4'*) echo "no four" >&2; exit 1 ;;
        esac
        echo '{"results": 1}'
    foreach: items
    on_item_failure: skip
    reads: [item]
    writes: [results]
  join: { kind: sleep, ms: 1, reads: [results], writes: [done] }
YAML
# A wider one, to check the expanded view stops at 200 rows.
cat >"$work/wide-view.yaml" <<YAML
pipeline: wide-view
agents:
  plan: { kind: sleep, writes: [items], value: [$(seq -s, 0 299)] }
  work: { kind: sleep, foreach: items, reads: [item], writes: [results] }
YAML
# Groups: a foreach group over [1, 2, 3] and a repeat group of 3 rounds.
# Element 3's `classify` and round 1's `draft` wait for the file
# `go-group`, so the test sees the fan-out's progress and the round live.
cat >"$work/group-view.yaml" <<'YAML'
pipeline: group-view
agents:
  plan: { kind: sleep, ms: 1, writes: [items], value: [1, 2, 3] }
  per_item:
    kind: pipeline
    foreach: items
    agents:
      extract: { kind: sleep, ms: 10, reads: [item], writes: [a] }
      classify:
        kind: command
        run: [sh, -c, 'case "$(cat)" in *"\"item\":3"*) while [ ! -e go-group ]; do sleep 0.05; done ;; esac; echo "{\"b\": 1}"']
        reads: [item, a]
        writes: [b]
    outputs: { results: b }
  refine:
    kind: pipeline
    repeat: { until: 'critique > 5', max: 3, on_max: continue }
    agents:
      draft:
        kind: command
        run: [sh, -c, 'case "$(cat)" in *"\"round\":1"*) while [ ! -e go-group ]; do sleep 0.05; done ;; esac; echo "{\"draft\": 1}"']
        reads: [round]
        writes: [draft]
      critique: { kind: sleep, ms: 10, reads: [draft], writes: [critique], value: 1 }
    outputs: { final: critique }
  join: { kind: sleep, ms: 1, reads: [results, final], writes: [done] }
YAML
# A wide foreach group: 150 elements and 150 members, 300 rows expanded.
cat >"$work/wide-group.yaml" <<YAML
pipeline: wide-group
agents:
  plan: { kind: sleep, writes: [items], value: [$(seq -s, 0 149)] }
  work:
    kind: pipeline
    foreach: items
    agents:
      one: { kind: sleep, reads: [item], writes: [x] }
    outputs: { results: x }
YAML
# A person in the loop: `approve` waits for an answer from the page.
cat >"$work/ask-view.yaml" <<'YAML'
pipeline: ask-view
agents:
  plan: { kind: sleep, ms: 1, writes: [plan], value: resize }
  approve:
    kind: input
    prompt: Apply the plan?
    reads: [plan]
    writes: [approval]
    schema: { type: object, properties: { approved: { type: boolean }, note: { type: string } }, required: [approved] }
  apply: { kind: sleep, ms: 1, reads: [approval], writes: [applied], value: yes }
YAML
token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
log="$work/serve.log"
# Created now, so reading it cannot fail before the server writes to it.
: >"$log"
# Port 0: the server picks a free port and says which on stderr.
BRAID_TOKEN="$token" "$bin" serve --bind 127.0.0.1:0 --store "sqlite://$work/runs.db" --pipelines "$work" >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
url=""
for _ in $(seq 1 100); do
  url=$(sed -n 's|^braid: serving on \(http://[0-9.:]*\).*|\1|p' "$log")
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] && curl -fs "$url/healthz" >/dev/null || { cat "$log" >&2; echo "error: braid serve did not start" >&2; exit 1; }

BRAID_URL="$url" BRAID_TOKEN="$token" BRAID_GATE="$work/go" BRAID_FAN_GATE="$work/go-fan" BRAID_GROUP_GATE="$work/go-group" BRAID_SCREENSHOT="${BRAID_SCREENSHOT:-target/web-view.png}" \
  node crates/braid-server/tests/browser/view.mjs
