#!/usr/bin/env bash
# Instructions the engine spends, counted by valgrind's callgrind: the same
# figure whatever else the machine is doing (unlike time on a shared
# machine), so a change that adds cost shows at once. Each figure is the
# difference between two sizes of one `braid bench` scenario, divided by
# the size difference, so process start-up and pipeline loading cancel out:
#
#   per no-op agent, seed runs:  `overhead` with R and 2R runs (6 agents each)
#   per no-op agent, one run:    `deep` chains of N and 2N agents (loading
#                                and compiling the chain included: it
#                                grows with N too)
#   per fan-out element:         `fanout` over N and 2N no-op items
#
#   scripts/bench-instructions.sh [--runs 100] [--nodes 1000]
# Prints one JSON object per figure.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=100 nodes=1000
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --nodes) nodes="$2"; shift 2 ;;
    *) echo "usage: $0 [--runs R] [--nodes N]" >&2; exit 2 ;;
  esac
done
command -v valgrind >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
cargo build --release --quiet --bin braid
bin=./target/release/braid

# Instructions of one `braid bench` invocation (every thread); fails if
# the bench does.
count() {
  local log
  log=$(mktemp)
  if ! valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" bench --repeat 1 --latency-ms 0 "$@" \
      >/dev/null 2>"$log"; then
    echo "error: braid bench $* failed under valgrind:" >&2
    cat "$log" >&2
    rm -f "$log"
    return 1
  fi
  sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$log"
  rm -f "$log"
}

# figure NAME UNITS_PER_STEP SCENARIO-ARGS-SMALL -- SCENARIO-ARGS-LARGE
per_unit() {
  local name=$1 units=$2 small=$3 large=$4 scenario=$5
  local a b
  a=$(count --scenario "$scenario" $small)
  b=$(count --scenario "$scenario" $large)
  python3 -c "import json,sys; a,b,u=int(sys.argv[1]),int(sys.argv[2]),float(sys.argv[3]); print(json.dumps({'figure': sys.argv[4], 'instructions': round((b-a)/u), 'small_total': a, 'large_total': b}))" \
    "$a" "$b" "$units" "$name"
}

# `overhead` runs R runs twice (a warm-up, then one measured round): 2R runs
# of 6 agents; doubling R adds 2R × 6 agents.
per_unit per_seed_agent $((2 * runs * 6)) "--runs $runs" "--runs $((2 * runs))" overhead
# `deep` loads the chain once and runs it twice: doubling N adds N agents
# loaded and 2N run (counted per agent run).
per_unit per_chain_agent_with_load $((2 * nodes)) "--nodes $nodes" "--nodes $((2 * nodes))" deep
# `fanout` runs its no-op and its L-ms variant (L = 0 here) twice each:
# doubling N adds 4N elements.
per_unit per_fanout_element $((4 * nodes)) "--nodes $nodes" "--nodes $((2 * nodes))" fanout
