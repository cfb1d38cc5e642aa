#!/usr/bin/env bash
# Instructions and heap allocations the engine spends, counted by
# valgrind's callgrind: the same figures whatever else the machine is doing
# (unlike time on a shared machine), so a change that adds cost shows at
# once. Each figure is the difference between two sizes of one `braid
# bench` scenario, divided by the size difference, so process start-up and
# pipeline loading cancel out:
#
#   per no-op agent, seed runs:  `overhead` with R and 2R runs (6 agents each)
#   per no-op agent, one run:    `deep` chains of N and 2N agents (loading
#                                and compiling the chain included: it
#                                grows with N too)
#   per fan-out element:         `fanout` over N and 2N no-op items
#   per checkpointed agent:      `persist --checkpoint agent` minus
#                                `persist --checkpoint none`, R runs each,
#                                SQLite (what a per-agent checkpoint adds:
#                                the record, the writer thread, SQLite)
#
# Allocations are calls into mimalloc (alloc, alloc_zeroed and realloc)
# made by every thread: only Rust's global allocator reaches mimalloc here,
# inlined into its callers or not; C code (SQLite) allocates on its own and
# is not counted.
#
#   scripts/bench-instructions.sh [--runs 100] [--nodes 1000]
# Prints one JSON object per figure. BRAID_BIN=path skips the build.
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
if [ -n "${BRAID_BIN:-}" ]; then
  bin=$BRAID_BIN
else
  cargo build --release --quiet --bin braid
  bin=${CARGO_TARGET_DIR:-target}/release/braid
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# "INSTRUCTIONS ALLOCATIONS" of one `braid bench` invocation (every
# thread); fails if the bench does.
count() {
  local out=$work/callgrind.out log=$work/log
  if ! valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" bench --repeat 1 --latency-ms 0 "$@" \
      >/dev/null 2>"$log"; then
    echo "error: braid bench $* failed under valgrind:" >&2
    cat "$log" >&2
    return 1
  fi
  local instructions allocations
  instructions=$(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$log")
  # Calls into the global allocator, summed over every call site: callgrind
  # names a function once (`cfn=(id) name`), then by id alone.
  allocations=$(python3 - "$out" <<'PY'
import re, sys
names, current, total = {}, None, 0
# The binary's allocator (crates/braid-cli/src/allocator.rs) calls mi_malloc
# and mi_zalloc itself for alignments up to 16, the aligned entries otherwise.
mimalloc = {"mi_malloc", "mi_zalloc", "mi_malloc_aligned", "mi_zalloc_aligned", "mi_realloc_aligned"}
pattern = re.compile(r"^c?fn=\((\d+)\)(?: (.*))?$")
calls = {}
for line in open(sys.argv[1], errors="replace"):
    if line.startswith(("fn=", "cfn=")):
        m = pattern.match(line.rstrip("\n"))
        if m and m.group(2):
            names[m.group(1)] = m.group(2)
        if line.startswith("cfn="):
            current = names.get(m.group(1)) if m else None
    elif line.startswith("calls=") and current in mimalloc:
        calls[current] = calls.get(current, 0) + int(line.split()[0][len("calls="):])
print(sum(calls.values()))
PY
)
  echo "$instructions $allocations"
}

# figure NAME UNITS SMALL-ARGS LARGE-ARGS: (large - small) / units.
per_unit() {
  local name=$1 units=$2 small large
  read -r -a small_args <<<"$3"
  read -r -a large_args <<<"$4"
  small=$(count "${small_args[@]}")
  large=$(count "${large_args[@]}")
  python3 -c '
import json, sys
(a_i, a_a), (b_i, b_a) = (map(int, s.split()) for s in sys.argv[1:3])
u = float(sys.argv[3])
print(json.dumps({"figure": sys.argv[4], "instructions": round((b_i - a_i) / u),
                  "allocations": round((b_a - a_a) / u, 2), "small_total": a_i, "large_total": b_i}))' \
    "$small" "$large" "$units" "$name"
}

# `overhead` runs R runs twice (a warm-up, then one measured round): 2R runs
# of 6 agents; doubling R adds 2R × 6 agents.
per_unit per_seed_agent $((2 * runs * 6)) \
  "--scenario overhead --runs $runs" "--scenario overhead --runs $((2 * runs))"
# `deep` loads the chain once and runs it twice: doubling N adds N agents
# loaded and 2N run (counted per agent run).
per_unit per_chain_agent_with_load $((2 * nodes)) \
  "--scenario deep --nodes $nodes" "--scenario deep --nodes $((2 * nodes))"
# `fanout` runs its no-op and its L-ms variant (L = 0 here) twice each:
# doubling N adds 4N elements.
per_unit per_fanout_element $((4 * nodes)) \
  "--scenario fanout --nodes $nodes" "--scenario fanout --nodes $((2 * nodes))"
# `persist --checkpoint P` runs R seed runs twice (warm-up and one round),
# one at a time, each waiting for its commit: 2R × 6 agents.
per_unit checkpoint_added_per_agent $((2 * runs * 6)) \
  "--scenario persist --checkpoint none --runs $runs" "--scenario persist --checkpoint agent --runs $runs"
