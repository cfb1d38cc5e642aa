#!/usr/bin/env bash
# Runs `braid bench` and the adk-graph peer (../shared/peers/adk_graph_peer,
# built from there, never copied here) on this machine, interleaved, ROUNDS
# times, and prints a Markdown table of medians. With --write, also replaces
# the generated section of BENCHMARKS.md.
#
#   scripts/bench-vs-adk-graph.sh [--rounds 3] [--write]
#
# Environment:
#   BRAID_BIN        an already built braid binary (then braid is not built)
#   CARGO_TARGET_DIR where braid is built otherwise (default target)
#   ADK_PEER_DIR     the peer's source (default ../shared/peers/adk_graph_peer)
#   ADK_PEER_TARGET  where the peer is built (default target/adk-peer)
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3
write=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --write) write=1; shift ;;
    *) echo "usage: $0 [--rounds N] [--write]" >&2; exit 2 ;;
  esac
done
case "$rounds" in
  '' | *[!0-9]* | 0) echo "error: --rounds expects a positive whole number, found '$rounds'" >&2; exit 2 ;;
esac

peer_dir="${ADK_PEER_DIR:-../shared/peers/adk_graph_peer}"
[ -f "$peer_dir/Cargo.toml" ] || {
  echo "error: $peer_dir/Cargo.toml not found (run from a checkout with shared/ beside it, or set ADK_PEER_DIR)" >&2
  exit 1
}
peer_target="${ADK_PEER_TARGET:-target/adk-peer}"
CARGO_TARGET_DIR="$peer_target" cargo build --release --quiet --manifest-path "$peer_dir/Cargo.toml"
peer_bin="$peer_target/release/adkbench"

if [ -n "${BRAID_BIN:-}" ]; then
  braid_bin="$BRAID_BIN"
else
  cargo build --release --quiet --bin braid
  braid_bin="${CARGO_TARGET_DIR:-target}/release/braid"
fi
[ -x "$braid_bin" ] || { echo "error: braid binary $braid_bin not found or not executable" >&2; exit 1; }
[ -x "$peer_bin" ] || { echo "error: peer binary $peer_bin not found after the build" >&2; exit 1; }
# braid's memory figures depend on its code layout (BENCHMARKS.md, "Issue
# 16, third pass"): say whether the binary still has the functions the
# linker was told to group.
if command -v nm >/dev/null; then
  BRAID_BIN="$braid_bin" bash scripts/symbol-order.sh --check >&2 || true
fi

# The same scenarios with the same parameters, given to both explicitly:
# L = 50 ms, 200 runs for overhead, 1,000 agents in wide and deep and items
# in fanout, 1,000 concurrent runs in many (and 10,000 in a run of its own).
# Each runs in its own process; `many` above all, so its peak RSS is its own.
scenarios="seed skewed overhead wide deep fanout loop many"
params=(--latency-ms 50 --runs 200 --nodes 1000)

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for round in $(seq 1 "$rounds"); do
  echo "round $round of $rounds" >&2
  # Alternate which engine goes first, so neither always gets the quieter machine.
  if [ $((round % 2)) -eq 1 ]; then order="braid adk-graph"; else order="adk-graph braid"; fi
  for engine in $order; do
    if [ "$engine" = braid ]; then
      for s in $scenarios; do
        "$braid_bin" bench --scenario "$s" "${params[@]}" --concurrent 1000 >> "$out/braid.jsonl"
      done
      "$braid_bin" bench --scenario many "${params[@]}" --concurrent 10000 \
        | sed 's/"scenario":"many"/"scenario":"many-10000"/' >> "$out/braid.jsonl"
    else
      for s in $scenarios; do
        "$peer_bin" --scenario "$s" "${params[@]}" --concurrent 1000 >> "$out/adk.jsonl"
      done
      if ! "$peer_bin" --scenario many "${params[@]}" --concurrent 10000 > "$out/adk-10000.json"; then
        echo "warning: the peer failed at 10,000 concurrent runs; that row stays n/a" >&2
      else
        sed 's/"scenario":"many"/"scenario":"many-10000"/' "$out/adk-10000.json" >> "$out/adk.jsonl"
      fi
    fi
  done
done

table=$(python3 - "$out" "$rounds" "$peer_dir/Cargo.lock" <<'PY'
import datetime, json, os, platform, re, statistics, subprocess, sys
out, rounds, lock = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def load(name):
    rows = {}
    path = os.path.join(out, name)
    for line in open(path) if os.path.exists(path) else []:
        if line.strip():
            r = json.loads(line)
            rows.setdefault(r["scenario"], []).append(r)
    return rows
b, a = load("braid.jsonl"), load("adk.jsonl")
def med(rows, scenario, field):
    vals = [r[field] for r in rows.get(scenario, []) if r.get(field) is not None]
    return statistics.median(vals) if vals else None
def fmt(v, unit=""):
    return "n/a" if v is None else (f"{v:,.3f}".rstrip("0").rstrip(".") + unit)
def quotient(av, bv):
    if av is None or bv is None or bv == 0:
        return "n/a"
    q = av / bv
    return f"{q:,.2f}x" if q < 10 else f"{q:,.1f}x"
# label, scenario, field (both engines use the same names), unit, adk-graph only
spec = [
    ("overhead: per agent, no-op", "overhead", "per_agent_us", " µs"),
    ("overhead: per run of 6 no-op agents", "overhead", "per_run_us", " µs"),
    ("many: 1,000 concurrent seed runs, makespan / ideal (4L)", "many", "ratio", ""),
    ("many: 1,000 concurrent seed runs, runs per second", "many", "runs_per_s", ""),
    ("many: 1,000 concurrent seed runs, peak RSS", "many", "peak_rss_mb", " MB"),
    ("many: 10,000 concurrent seed runs, makespan / ideal (4L)", "many-10000", "ratio", ""),
    ("many: 10,000 concurrent seed runs, runs per second", "many-10000", "runs_per_s", ""),
    ("many: 10,000 concurrent seed runs, peak RSS", "many-10000", "peak_rss_mb", " MB"),
    ("seed, L = 50 ms: makespan / ideal (4L)", "seed", "ratio", ""),
    ("skewed, L = 50 ms: makespan / ideal (12L)", "skewed", "ratio", ""),
    ("wide: 1,000 no-op agents", "wide", "makespan_ms", " ms"),
    ("deep: chain of 1,000 no-op agents", "deep", "makespan_ms", " ms"),
    ("fanout: 1,000 no-op items, per item", "fanout", "per_item_us", " µs"),
    ("fanout: 1,000 items of L = 50 ms, makespan / L", "fanout", "ratio", ""),
    ("loop: 10 rounds of draft/critique at L, makespan / 20L", "loop", "ratio", ""),
    ("loop: 1,000 no-op rounds, per round", "loop", "per_round_us", " µs"),
]
lines = ["| scenario | adk-graph | braid | adk-graph / braid |", "|---|---|---|---|"]
for label, scenario, field, unit in spec:
    av, bv = med(a, scenario, field), med(b, scenario, field)
    lines.append(f"| {label} | {fmt(av, unit)} | {fmt(bv, unit)} | {quotient(av, bv)} |")
# adk-graph has no Send: its best fan-out has the planner start the workers itself.
inplan = med(a, "fanout-inplan", "per_item_us")
if inplan is not None:
    lines.append(f"| fanout: 1,000 no-op items, per item, the planner dispatching itself (adk-graph only) "
                 f"| {fmt(inplan, ' µs')} | n/a | n/a |")

def goal(text, ok, figures):
    state = "n/a" if ok is None else ("met" if ok else "not met")
    return f"- {text}: **{state}** ({figures})"
a_agent, b_agent = med(a, "overhead", "per_agent_us"), med(b, "overhead", "per_agent_us")
many_ratio, many_rss = med(b, "many", "ratio"), med(b, "many", "peak_rss_mb")
rss_10k = med(b, "many-10000", "peak_rss_mb")
lines.append("")
lines.append("The goals (braid's figures):")
lines.append("")
lines.append(goal("per-agent overhead at least 4x less than adk-graph's",
                  None if a_agent is None or not b_agent else a_agent / b_agent >= 4,
                  f"{fmt(a_agent, ' µs')} / {fmt(b_agent, ' µs')} = {quotient(a_agent, b_agent)}"))
lines.append(goal("1,000 concurrent seed runs, makespan / ideal ≤ 1.05",
                  None if many_ratio is None else many_ratio <= 1.05, fmt(many_ratio)))
lines.append(goal("1,000 concurrent seed runs, peak RSS ≤ 20 MB",
                  None if many_rss is None else many_rss <= 20, fmt(many_rss, " MB")))
lines.append(goal("10,000 concurrent seed runs, peak RSS ≤ 80 MB",
                  None if rss_10k is None else rss_10k <= 80, fmt(rss_10k, " MB")))

adk = "?"
m = re.search(r'name = "adk-graph"\nversion = "([^"]+)"', open(lock).read()) if os.path.exists(lock) else None
if m:
    adk = m.group(1)
rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip() or "rustc ?"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
lines.append("")
lines.append((f"Medians of {rounds} interleaved rounds (alternating which engine goes first), " if rounds > 1
              else "One round (no medians across rounds), ") +
             f"{datetime.date.today().isoformat()}, {os.cpu_count()} cores ({cpu}), "
             f"{platform.system()} {platform.release()}, {rustc}; adk-graph {adk}. "
             "Every scenario runs in a process of its own, so each peak RSS is that of its `many` alone. "
             "Each braid figure is itself the median of 5 measurements after a warm-up; each adk-graph "
             "figure is the peer's own statistic (the best of 5 for seed, of 3 for skewed, 200 runs after "
             "20 warm-up runs for overhead, one run otherwise). adk-graph / braid above 1 means braid takes "
             "less time or memory; for runs per second, below 1 means braid completes more.")
print("\n".join(lines))
PY
)
echo "$table"
if [ "$write" = 1 ]; then
  printf '%s\n' "$table" | scripts/write-benchmarks-section.py bench-vs-adk-graph
fi
