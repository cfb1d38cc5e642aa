#!/usr/bin/env bash
# Remote workers' throughput: 1, 2 and 4 `braid worker --slots 50`
# processes serving 2,000 concurrent seed runs with L = 50 ms agents, the
# coordinator being `braid bench --scenario workers` (agents dispatched over
# NATS JetStream). Prints one JSON line per worker count, then the ratio of
# 4 workers' throughput to 1's. The agents wait (I/O-bound), so the figure
# measures dispatch, not CPU: it holds on a two-core machine.
#
#   cargo build --release -p braid-cli && scripts/bench-workers.sh
#
# Settings (environment): BRAID_BIN (target/release/braid), RUNS (2000),
# L (50 ms), SLOTS (50), REPEAT (3), WORKERS ("1 2 4"), BRAID_NATS_SERVER.
set -euo pipefail
cd "$(dirname "$0")/.."
BRAID="${BRAID_BIN:-target/release/braid}"
NATS="${BRAID_NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}"
RUNS="${RUNS:-2000}"; L="${L:-50}"; SLOTS="${SLOTS:-50}"; REPEAT="${REPEAT:-3}"
WORKERS="${WORKERS:-1 2 4}"
[ -x "$BRAID" ] || { echo "error: $BRAID not found; build it (cargo build --release -p braid-cli)" >&2; exit 1; }
[ -x "$NATS" ] || { echo "error: nats-server not found" >&2; exit 1; }

dir="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
url="nats://127.0.0.1:$port"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
"$NATS" -a 127.0.0.1 -p "$port" -js -sd "$dir/js" >"$dir/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

mkdir -p "$dir/pipelines"
"$BRAID" bench --scenario workers --latency-ms "$L" --emit-pipeline >"$dir/pipelines/seed.yaml"

results="$dir/results.jsonl"
for n in $WORKERS; do
  workers=()
  for _ in $(seq 1 "$n"); do
    "$BRAID" worker --nats "$url" --slots "$SLOTS" --pipelines "$dir/pipelines" --grace 0s \
      2>>"$dir/workers.log" &
    workers+=($!)
  done
  sleep 1
  line="$("$BRAID" bench --scenario workers --nats "$url" --concurrent "$RUNS" \
    --latency-ms "$L" --repeat "$REPEAT")"
  line="$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["workers"]=int(sys.argv[2]); d["slots"]=int(sys.argv[3]); print(json.dumps(d))' "$line" "$n" "$SLOTS")"
  echo "$line" | tee -a "$results"
  for pid in "${workers[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${workers[@]}"; do wait "$pid" 2>/dev/null || true; done
done
python3 - "$results" <<'PY'
import json, sys
rows = {r["workers"]: r for r in map(json.loads, open(sys.argv[1]))}
lo, hi = min(rows), max(rows)
if lo != hi:
    ratio = rows[hi]["runs_per_s"] / rows[lo]["runs_per_s"]
    print(json.dumps({"throughput_ratio": round(ratio, 2), "from_workers": lo, "to_workers": hi}))
PY
