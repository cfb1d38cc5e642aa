#!/usr/bin/env bash
# braid as an MCP server against the official MCP Python SDK: makes a
# virtualenv (kept in ${XDG_CACHE_HOME:-$HOME/.cache}/braid-mcp-client-venv,
# or BRAID_MCP_VENV), installs the pinned `mcp` and pytest into it, and runs
# crates/braid-server/tests/mcp_client with BRAID_BIN. The tests start
# `braid mcp` (stdio) and `braid serve --mcp` (HTTP, with a token) themselves.
# Extra arguments go to pytest (`-k stdio`, `-x`...).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v python3 >/dev/null || { echo "error: python3 is required for the MCP client tests" >&2; exit 1; }

. scripts/lib/python-tests.sh
braid_binary
venv="${BRAID_MCP_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/braid-mcp-client-venv}"
python_venv "$venv"
"$venv/bin/python" -m pip --disable-pip-version-check --quiet install -r crates/braid-server/tests/mcp_client/requirements.txt

cd crates/braid-server/tests/mcp_client
BRAID_BIN="$bin" "$venv/bin/python" -m pytest -q -p no:cacheprovider . "$@"
