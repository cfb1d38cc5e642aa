#!/usr/bin/env bash
# Fuzzes the pipeline loader (`load`: YAML/JSON through compile) and `when`
# conditions (`condition`) for a bounded time, by default 30 s per target.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); runs on the stable
# toolchain through RUSTC_BOOTSTRAP=1, without a sanitizer (braid forbids
# unsafe code; what is looked for is panics, stack overflows, aborts, hangs
# and memory blow-ups). New inputs go to a scratch directory, not into the
# repository's corpus; crashes are written to fuzz/artifacts/TARGET/.
# With FUZZ_MINIMIZE=1 the scratch finds are merged into fuzz/corpus/TARGET
# (cargo fuzz cmin), to be committed when they add coverage.
# The corpus is replayed by `cargo test -p braid-core --test fuzz_corpus`.
set -euo pipefail

seconds="${1:-30}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(load condition)

cd "$(dirname "$0")/../fuzz"
if ! command -v cargo-fuzz >/dev/null; then
    echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
    exit 2
fi
export RUSTC_BOOTSTRAP=1

for target in "${targets[@]}"; do
    scratch="$(mktemp -d)"
    trap 'rm -rf "$scratch"' EXIT
    echo "== fuzzing $target for ${seconds}s"
    cargo fuzz run --sanitizer none "$target" "$scratch" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -timeout=30 -rss_limit_mb=2048 \
        -print_final_stats=1
    if [ "${FUZZ_MINIMIZE:-0}" = 1 ]; then
        cp -n "$scratch"/* "corpus/$target/" 2>/dev/null || true
        cargo fuzz cmin --sanitizer none "$target" "corpus/$target"
    fi
    rm -rf "$scratch"
done
