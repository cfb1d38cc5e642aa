#!/usr/bin/env bash
# Throughput of `POST /v1/runs?wait=true` for the seed pipeline with no-op
# agents, measured with wrk (Debian's package) against a release `braid
# serve` on loopback. Prints wrk's report.
#
#   scripts/bench-http.sh [--connections 50] [--duration 10s] [--events off|summary] [--run-threads N]
set -euo pipefail
cd "$(dirname "$0")/.."
connections=50 duration=10s events=off run_threads=
while [ $# -gt 0 ]; do
  case "$1" in
    --connections) connections="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --events) events="$2"; shift 2 ;;
    --run-threads) run_threads="$2"; shift 2 ;;
    *) echo "usage: $0 [--connections N] [--duration 10s] [--events off|summary] [--run-threads N]" >&2; exit 2 ;;
  esac
done
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
cargo build --release --quiet --bin braid

dir=$(mktemp -d)
cat > "$dir/noop.yaml" <<'YAML'
pipeline: seed-noop
agents:
  triage:       { kind: sleep, writes: [triage_result] }
  data:         { kind: sleep, reads: [triage_result], writes: [data_analysis] }
  metrics:      { kind: sleep, reads: [triage_result], writes: [metrics_result] }
  cost:         { kind: sleep, reads: [triage_result], writes: [cost_result] }
  optimization: { kind: sleep, reads: [data_analysis, metrics_result, cost_result], writes: [optimization_plan] }
  report:       { kind: sleep, reads: [optimization_plan], writes: [report] }
YAML
cat > "$dir/post.lua" <<LUA
wrk.method = "POST"
wrk.body   = '{"pipeline": "seed-noop", "events": "$events", "checkpoint": "none"}'
wrk.headers["Content-Type"] = "application/json"
LUA
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
./target/release/braid serve --bind "127.0.0.1:$port" --pipelines "$dir" --no-store --max-runs 100000 ${run_threads:+--run-threads "$run_threads"} 2>"$dir/log" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
# Two client threads, pinned to the same 2 cores as the server: the figures
# include the load generator's own cost.
wrk -t2 -c"$connections" -d"$duration" --latency -s "$dir/post.lua" "http://127.0.0.1:$port/v1/runs?wait=true"
