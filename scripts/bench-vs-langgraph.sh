#!/usr/bin/env bash
# Runs `braid bench` and the LangGraph peer (../shared/peers/langgraph_peer.py)
# on this machine, interleaved, ROUNDS times, and prints a Markdown table of
# medians. With --write, also replaces the generated section of BENCHMARKS.md.
#
#   scripts/bench-vs-langgraph.sh [--rounds 3] [--write]
#
# Sets up the peer in .venv-peer (pip install langgraph langgraph-checkpoint-sqlite).
# PostgreSQL rows need BRAID_BENCH_POSTGRES_URL (e.g. postgres://postgres@127.0.0.1:5432/test).
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

peer=../shared/peers/langgraph_peer.py
[ -f "$peer" ] || { echo "error: $peer not found (run from a checkout with shared/ beside it)" >&2; exit 1; }
if [ ! -x .venv-peer/bin/python ]; then
  python3 -m venv .venv-peer
  .venv-peer/bin/pip install --quiet langgraph langgraph-checkpoint-sqlite
fi
cargo build --release --quiet

out=$(mktemp -d)
for round in $(seq 1 "$rounds"); do
  echo "round $round of $rounds" >&2
  # Alternate which engine goes first, so neither always gets the quieter machine.
  if [ $((round % 2)) -eq 1 ]; then order="braid langgraph"; else order="langgraph braid"; fi
  for engine in $order; do
    if [ "$engine" = braid ]; then
      # 10,000 concurrent runs first: right after the full suite, whose last
      # scenario commits to PostgreSQL, the server's background writer still
      # competes for the two cores (measured: ratio 2.16, then 1.35-1.5).
      ./target/release/braid bench --scenario many --concurrent 10000 \
        | sed 's/"scenario":"many"/"scenario":"many-10000"/' >> "$out/braid.jsonl"
      ./target/release/braid bench >> "$out/braid.jsonl"
      # Alone in its process, so its peak RSS is its own.
      ./target/release/braid bench --scenario fanout-large >> "$out/braid.jsonl"
    else
      .venv-peer/bin/python "$peer" >> "$out/langgraph.jsonl"
    fi
  done
done

table=$(python3 - "$out" "$rounds" <<'PY'
import json, platform, statistics, subprocess, sys, datetime, os
out, rounds = sys.argv[1], int(sys.argv[2])
def load(name):
    rows = {}
    for line in open(os.path.join(out, name)):
        r = json.loads(line)
        key = r["scenario"]
        if key == "persist" and "backend" in r:
            key = f"persist-{r['backend']}-{r['checkpoint']}-{r['in_flight']}-{'wait' if r['wait_each'] else 'batch'}"
        rows.setdefault(key, []).append(r)
    return rows
b, l = load("braid.jsonl"), load("langgraph.jsonl")
def med(rows, scenario, field):
    vals = [r[field] for r in rows.get(scenario, []) if r.get(field) is not None]
    return statistics.median(vals) if vals else None
def fmt(v, unit=""):
    return "n/a" if v is None else (f"{v:,.3f}".rstrip("0").rstrip(".") + unit)
def ratio(a, c):
    return "n/a" if a is None or c is None or a == 0 else f"{c / a:,.1f}x"
lines = []
spec = [
    ("seed, L = 50 ms: makespan / ideal (4L)", "seed", "ratio", "seed", "ratio", ""),
    ("seed: makespan", "seed", "makespan_ms", "seed", "makespan_ms", " ms"),
    ("skewed, L = 50 ms: makespan / ideal (12L)", "skewed", "ratio", "skewed", "ratio", ""),
    ("sequential seed: makespan (ideal 6L = 300 ms)", "sequential", "makespan_ms", None, None, " ms"),
    ("overhead: per agent, no-op", "overhead", "per_agent_us", "overhead", "per_agent_us", " µs"),
    ("overhead: per run of 6 no-op agents", "overhead", "per_run_us", "overhead", "per_run_us", " µs"),
    ("wide: 1,000 no-op agents", "wide", "makespan_ms", "wide", "makespan_ms", " ms"),
    ("deep: chain of 1,000 no-op agents", "deep", "makespan_ms", "deep", "makespan_ms", " ms"),
    ("many: 1,000 concurrent seed runs, makespan / ideal", "many", "ratio", "many", "ratio", ""),
    ("many: 1,000 concurrent runs, peak RSS", "many", "peak_rss_mb", "many", "peak_rss_mb", " MB"),
    ("many: 10,000 concurrent seed runs, makespan / ideal", "many-10000", "ratio", None, None, ""),
    ("many: 10,000 concurrent seed runs, the process's first round (cold)", "many-10000", "cold_ratio", None, None, ""),
    ("many: 10,000 concurrent runs, peak RSS", "many-10000", "peak_rss_mb", None, None, " MB"),
    ("fanout: 1,000 no-op items, per item", "fanout", "per_item_us", "fanout", "per_item_us", " µs"),
    ("fanout: 1,000 items of L = 50 ms, makespan / L", "fanout", "ratio", "fanout", "ratio", ""),
    ("fanout: one run over 100,000 no-op items", "fanout-large", "makespan_ms", None, None, " ms"),
    ("mapchain: 100 items through 3 stages, slow items, makespan / 14L", "mapchain", "ratio", "mapchain", "ratio", ""),
    ("loop: 10 rounds of draft/critique at L, makespan / 20L", "loop", "ratio", "loop", "ratio", ""),
    ("loop: 1,000 no-op rounds, per round", "loop", "per_round_us", "loop", "per_round_us", " µs"),
    ("fanout: one run over 100,000 no-op items, peak RSS", "fanout-large", "peak_rss_mb", None, None, " MB"),
    ("persist, SQLite, per run committed before the next: LangGraph exit / braid end", "persist-sqlite-end-1-wait", "per_run_us", "persist-exit", "per_run_us", " µs"),
    ("persist, SQLite, per run committed before the next: LangGraph sync / braid agent", "persist-sqlite-agent-1-wait", "per_run_us", "persist-sync", "per_run_us", " µs"),
    ("persist, SQLite, amortised over 100 runs in flight: end (the peer runs one at a time)", "persist-sqlite-end-100-batch", "per_run_us", None, None, " µs"),
    ("persist, SQLite, amortised over 100 runs in flight: agent", "persist-sqlite-agent-100-batch", "per_run_us", None, None, " µs"),
    ("persist, SQLite, transactions per run: end, one run at a time", "persist-sqlite-end-1-wait", "transactions_per_run", None, None, ""),
    ("persist, SQLite, transactions per run: end, 100 in flight", "persist-sqlite-end-100-batch", "transactions_per_run", None, None, ""),
    ("persist, PostgreSQL, per run committed before the next: end", "persist-postgres-end-1-wait", "per_run_us", None, None, " µs"),
    ("persist, PostgreSQL, amortised over 100 runs in flight: end", "persist-postgres-end-100-batch", "per_run_us", None, None, " µs"),
    ("persist, PostgreSQL, amortised over 100 runs in flight: agent", "persist-postgres-agent-100-batch", "per_run_us", None, None, " µs"),
]
lines.append("| scenario | braid | LangGraph | LangGraph / braid |")
lines.append("|---|---|---|---|")
for label, bs, bf, ls, lf, unit in spec:
    bv = med(b, bs, bf) if bs else None
    lv = med(l, ls, lf) if ls else None
    cmp = ratio(bv, lv) if bf not in ("ratio", "transactions_per_run") else "n/a"
    bcell = fmt(bv, unit)
    lines.append(f"| {label} | {bcell} | {fmt(lv, unit)} | {cmp} |")
try:
    lg = subprocess.run([".venv-peer/bin/python", "-c", "import importlib.metadata as m; print(m.version('langgraph'))"], capture_output=True, text=True).stdout.strip()
except Exception:
    lg = "?"
rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
lines.append("")
lines.append(f"Medians of {rounds} interleaved rounds, {datetime.date.today().isoformat()}, "
             f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; "
             f"braid built with {rustc}; LangGraph {lg} on Python {platform.python_version()}. "
             "Each braid figure is itself the median of 5 runs after a warm-up; each LangGraph "
             "figure is the peer script's own statistic (the best of 5 for seed, of 3 for skewed, one run otherwise).")
print("\n".join(lines))
PY
)
echo "$table"
if [ "$write" = 1 ]; then
  printf '%s\n' "$table" | scripts/write-benchmarks-section.py bench-vs-langgraph
fi
rm -rf "$out"
