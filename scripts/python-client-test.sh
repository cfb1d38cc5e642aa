#!/usr/bin/env bash
# The Python client (clients/python) against a real `braid serve`: makes a
# virtualenv (kept in ${XDG_CACHE_HOME:-$HOME/.cache}/braid-python-client-venv,
# or BRAID_PYTHON_VENV), installs the client from this checkout and a pinned
# pytest into it, and runs clients/python/tests with BRAID_BIN. The tests
# start their own server (free loopback port, token, temporary SQLite store).
# Extra arguments go to pytest (`-k events`, `-x`...).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v python3 >/dev/null || { echo "error: python3 is required for the Python client's tests" >&2; exit 1; }

# CI passes the binary its tests built; otherwise build one (cargo puts
# it in CARGO_TARGET_DIR when set, else ./target).
bin="${BRAID_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --quiet --bin braid
  bin="${CARGO_TARGET_DIR:-target}/debug/braid"
fi
[ -x "$bin" ] || { echo "error: $bin is not an executable braid binary" >&2; exit 1; }
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

venv="${BRAID_PYTHON_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/braid-python-client-venv}"
# A venv whose interpreter went away (python3 upgraded) is made anew.
if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$venv"
  python3 -m venv "$venv"
fi
pip() { "$venv/bin/python" -m pip --disable-pip-version-check --quiet "$@"; }
pip install "pytest==8.3.4"
# Installed, not imported from the source tree: the tests check the package
# a user gets from `pip install ./clients/python`.
pip install --force-reinstall --no-deps ./clients/python

cd clients/python
BRAID_BIN="$bin" "$venv/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
