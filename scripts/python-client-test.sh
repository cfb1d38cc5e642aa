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

. scripts/lib/python-tests.sh
braid_binary
venv="${BRAID_PYTHON_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/braid-python-client-venv}"
python_venv "$venv"
pip() { "$venv/bin/python" -m pip --disable-pip-version-check --quiet "$@"; }
pip install "pytest==8.3.4"
# Installed, not imported from the source tree: the tests check the package
# a user gets from `pip install ./clients/python`.
pip install --force-reinstall --no-deps ./clients/python

cd clients/python
BRAID_BIN="$bin" "$venv/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
