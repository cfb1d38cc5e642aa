# Shared by the scripts that run a Python test suite against the braid
# binary (python-client-test.sh, mcp-client-test.sh); sourced from the
# checkout's root.
#
#   braid_binary      sets $bin: BRAID_BIN (CI passes the binary its tests
#                     built) or a debug build (cargo puts it in
#                     CARGO_TARGET_DIR when set, else ./target), made absolute
#   python_venv DIR   makes the virtualenv DIR if it has no working
#                     interpreter (a venv whose python3 went away is made anew)

braid_binary() {
  bin="${BRAID_BIN:-}"
  if [ -z "$bin" ]; then
    cargo build --quiet --bin braid
    bin="${CARGO_TARGET_DIR:-target}/debug/braid"
  fi
  [ -x "$bin" ] || { echo "error: $bin is not an executable braid binary" >&2; exit 1; }
  bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
}

python_venv() {
  if ! "$1/bin/python" -c 'import sys' >/dev/null 2>&1; then
    rm -rf "$1"
    python3 -m venv "$1"
  fi
}
