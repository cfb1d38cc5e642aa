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
# The console: a pipeline with typed inputs, started from its form; its
# `hold` agent waits for the file `go-form`, so the test can cancel the
# run and resume it. `report` is Markdown with markup that must stay text.
cat >"$work/form-view.yaml" <<'YAML'
pipeline: form-view
description: Started from the console's form.
inputs:
  topic: { type: string, default: braid }
  count: { type: integer, default: 2 }
  mode: { enum: [fast, slow], default: fast }
  loud: { type: boolean, default: false }
  tags: { type: array, items: { type: string }, default: [] }
agents:
  write:
    kind: command
    run: [sh, -c, 'cat >/dev/null; printf "%s\n" "{\"report\": \"# Report\\n\\n**done** <img src=x onerror=window.__pwned=1>\"}"']
    reads: [topic, count, mode, loud, tags]
    writes: [report]
  hold:
    kind: command
    run: [sh, -c, 'while [ ! -e go-form ]; do sleep 0.05; done; echo "{\"held\": 1}"']
    reads: [topic]
    writes: [held]
YAML
# A run without events (the API's default): the page polls it. `hold`
# waits for the file `go-quiet`.
cat >"$work/quiet-view.yaml" <<'YAML'
pipeline: quiet-view
agents:
  first: { kind: sleep, ms: 1, writes: [a] }
  hold:
    kind: command
    run: [sh, -c, 'while [ ! -e go-quiet ]; do sleep 0.05; done; echo "{\"b\": 1}"']
    reads: [a]
    writes: [b]
YAML
# Live logs (`events: full`): `talk` logs a line, waits for the file
# `go-log`, logs another.
cat >"$work/log-view.yaml" <<'YAML'
pipeline: log-view
agents:
  talk:
    kind: command
    run: [sh, -c, 'echo "step one" >&2; while [ ! -e go-log ]; do sleep 0.05; done; echo "step two" >&2; echo "{\"said\": 2}"']
    writes: [said]
YAML
# An agent that fails twice (one retry), saying why on stderr, and one
# skipped by its condition.
cat >"$work/fail-view.yaml" <<'YAML'
pipeline: fail-view
agents:
  prepare: { kind: sleep, ms: 1, writes: [plan], value: go }
  flaky:
    kind: command
    run: [sh, -c, 'echo "working on it"; echo "disk on fire" >&2; exit 3']
    retries: 1
    backoff: 10ms
    reads: [plan]
    writes: [result]
  publish: { kind: sleep, ms: 1, reads: [result], writes: [published] }
  optional: { kind: sleep, ms: 1, reads: [plan], writes: [extra], when: 'plan == "stop"' }
YAML
# Many quick runs, for the runs list's pages.
cat >"$work/many-view.yaml" <<'YAML'
pipeline: many-view
agents:
  one: { kind: sleep, ms: 1, writes: [x] }
YAML
# 50 agents in 5 layers of 10, each reading two or three of the layer
# before, some also one two layers up (edges that pass a layer): the
# layout must keep every edge off the boxes it does not join.
python3 - "$work/big-view.yaml" <<'PY'
import sys
lines = ["pipeline: big-view", "agents:"]
for i in range(50):
    layer, k = divmod(i, 10)
    reads = set()
    if layer:
        reads = {(layer - 1) * 10 + j for j in (k, (k + 3) % 10, (k * 7 + 1) % 10)}
        if layer >= 2 and k % 4 == 0:
            reads.add((layer - 2) * 10 + (k + 5) % 10)
    r = ", ".join(f"f{j}" for j in sorted(reads))
    lines.append(f"  a{i}: {{ kind: sleep, ms: 1, reads: [{r}], writes: [f{i}] }}")
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY
# A tool-calling agent: a scripted stand-in for its model (one call of the
# `lookup` tool agent, then the answer) on a free port, said on stdout.
cat >"$work/model.py" <<'PY'
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if any(m["role"] == "tool" for m in body["messages"]):
            message = {"role": "assistant", "content": "found it"}
        else:
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": \"braid\"}"}}]}
        data = json.dumps({"choices": [{"message": message}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(server.server_address[1], flush=True)
server.serve_forever()
PY
python3 "$work/model.py" >"$work/model.port" &
model=$!
for _ in $(seq 1 50); do [ -s "$work/model.port" ] && break; sleep 0.1; done
cat >"$work/tools-view.yaml" <<YAML
pipeline: tools-view
agents:
  lookup:
    kind: sleep
    ms: 1
    value: [hit one]
    tool: { description: Looks things up, parameters: { type: object, properties: { q: { type: string } }, required: [q] } }
    writes: [hits]
  ask:
    kind: llm
    endpoint: http://127.0.0.1:$(cat "$work/model.port")/v1
    model: stub
    prompt: Look it up.
    tools: [{ agent: lookup }]
    writes: [answer]
YAML
token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
log="$work/serve.log"
# Created now, so reading it cannot fail before the server writes to it.
: >"$log"
# Port 0: the server picks a free port and says which on stderr.
BRAID_TOKEN="$token" "$bin" serve --bind 127.0.0.1:0 --store "sqlite://$work/runs.db" --pipelines "$work" >"$log" 2>&1 &
server=$!
trap 'kill $server $model 2>/dev/null || true; rm -rf "$work"' EXIT
url=""
for _ in $(seq 1 100); do
  url=$(sed -n 's|^braid: serving on \(http://[0-9.:]*\).*|\1|p' "$log")
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] && curl -fs "$url/healthz" >/dev/null || { cat "$log" >&2; echo "error: braid serve did not start" >&2; exit 1; }

# Screenshots of each page go to $BRAID_SCREENSHOTS, a directory, only when it is set.
BRAID_URL="$url" BRAID_TOKEN="$token" BRAID_GATE="$work/go" BRAID_FAN_GATE="$work/go-fan" BRAID_GROUP_GATE="$work/go-group" \
  BRAID_FORM_GATE="$work/go-form" BRAID_QUIET_GATE="$work/go-quiet" BRAID_LOG_GATE="$work/go-log" BRAID_SCREENSHOTS="${BRAID_SCREENSHOTS:-}" \
  node crates/braid-server/tests/browser/view.mjs
