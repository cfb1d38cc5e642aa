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

bin="${BRAID_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --quiet --bin braid
  bin="${CARGO_TARGET_DIR:-target}/debug/braid"
fi
[ -x "$bin" ] || { echo "error: $bin is not an executable braid binary" >&2; exit 1; }
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

venv="${BRAID_MCP_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/braid-mcp-client-venv}"
if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$venv"
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip --disable-pip-version-check --quiet install -r crates/braid-server/tests/mcp_client/requirements.txt

cd crates/braid-server/tests/mcp_client
BRAID_BIN="$bin" "$venv/bin/python" -m pytest -q -p no:cacheprovider . "$@"
