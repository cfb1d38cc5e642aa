#!/usr/bin/env bash
# Writes crates/braid-cli/symbol-order.txt: the `braid` binary's functions
# that run when it runs pipelines, which the linker puts next to each other
# at the start of the binary's code (crates/braid-cli/build.rs).
#
# Why: the kernel maps a binary's code into memory 64 KB at a time around
# each page a process first touches. The functions a run executes (about
# 1,000 of them, 1.5 MB; 2,800 and 3.8 MB with loading, checking and the
# main example's agents) were spread over the whole 24 MB of code, so a
# `braid` process that runs pipelines had 9-12 MB of code resident
# (BENCHMARKS.md, "Issue 16, third pass"). Grouped, they fit in a few
# windows.
#
# The functions are those callgrind sees executed in the binary while it
# runs the `many` and `overhead` benchmark scenarios, then validates,
# explains and runs the main example, listed in that order. Symbols are
# mangled names with a hash that stays the same while a function's path,
# generic arguments and crate do; a crate's hash changes with its version,
# its dependencies and the compiler, so a new toolchain, or a dependency
# added to braid-cli (which renames braid-cli's own functions), calls for a
# new list. The linker ignores names it no longer finds (those functions
# then sit where they would have anyway). `--check` says how many of the
# listed names the binary still has; rerun this script when that drops.
#
#   scripts/symbol-order.sh [--check]     BRAID_BIN=path skips the build.
set -euo pipefail
cd "$(dirname "$0")/.."
out=crates/braid-cli/symbol-order.txt
check=false
case "${1:-}" in
  --check) check=true ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac
if [ -n "${BRAID_BIN:-}" ]; then
  bin=$BRAID_BIN
else
  cargo build --release --quiet --bin braid
  bin=${CARGO_TARGET_DIR:-target}/release/braid
fi
bin=$(realpath "$bin")
[ -x "$bin" ] || { echo "error: braid binary $bin not found or not executable" >&2; exit 1; }

if $check; then
  python3 - "$bin" "$out" <<'EOF'
import subprocess, sys
binary, listed = sys.argv[1], sys.argv[2]
have = set(l.split()[-1] for l in subprocess.run(["nm", binary], capture_output=True, text=True, check=True).stdout.splitlines())
names = [l.strip() for l in open(listed) if l.strip()]
found = sum(1 for n in names if n in have)
print(f"{found} of the {len(names)} symbols in {listed} are in {binary} ({100 * found / len(names):.0f}%)")
EOF
  exit 0
fi

command -v valgrind >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
profile() {
  local name=$1; shift
  if ! valgrind --tool=callgrind --demangle=no --compress-strings=no \
      --callgrind-out-file="$work/$name.out" "$bin" "$@" >/dev/null 2>"$work/$name.log"; then
    echo "error: braid $* failed under valgrind:" >&2
    cat "$work/$name.log" >&2
    exit 1
  fi
}
pipeline=examples/optimize/pipeline.yaml
# Most used first: what every run executes, then what loading, checking
# and the main example's agents add.
profile 1-many bench --scenario many --concurrent 1000 --repeat 1
profile 2-overhead bench --scenario overhead --runs 20 --repeat 1
profile 3-validate validate "$pipeline"
profile 4-explain explain "$pipeline"
profile 5-run run "$pipeline" --out "$work/report.md" \
  --input '{"request": "How can we cut our LLM spend without hurting latency?"}'

python3 - "$bin" "$out" "$work"/*.out <<'EOF'
import re, subprocess, sys
binary, out, profiles = sys.argv[1], sys.argv[2], sys.argv[3:]
# Rust's mangled names and C's plain ones (mimalloc, SQLite) alike.
symbols = set(l.split()[-1] for l in subprocess.run(["nm", binary], capture_output=True, text=True, check=True).stdout.splitlines())
names, ordered = set(), []
for path in profiles:
    obj, group = None, set()
    for line in open(path, errors="replace"):
        if line.startswith("ob="):
            obj = line[3:].strip()
        elif line.startswith("fn=") and obj == binary:
            # `'2` marks a recursive call's cycle.
            name = re.sub(r"'\d+$", "", line[3:].strip())
            if name in symbols and name not in names:
                group.add(name)
    # Sorted within a profile, so that a regenerated list diffs well.
    ordered += sorted(group)
    names |= group
with open(out, "w") as f:
    f.write("".join(n + "\n" for n in ordered))
print(f"{len(names)} functions written to {out}")
EOF
