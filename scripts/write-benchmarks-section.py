#!/usr/bin/env python3
"""Replaces the generated section NAME of BENCHMARKS.md (between
`<!-- NAME:start -->` and `<!-- NAME:end -->`) with the text on stdin.

    scripts/write-benchmarks-section.py bench-vs-langgraph < table.md

Used by the side-by-side scripts' --write.
"""
import sys

if len(sys.argv) != 2:
    sys.exit("usage: write-benchmarks-section.py NAME < TEXT")
name, table, path = sys.argv[1], sys.stdin.read().strip("\n"), "BENCHMARKS.md"
text = open(path).read()
start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
if start not in text or end not in text:
    sys.exit(f"error: {path} has no {start} … {end} section to replace")
i, j = text.index(start) + len(start), text.index(end)
open(path, "w").write(text[:i] + "\n" + table + "\n" + text[j:])
print(f"{path} updated", file=sys.stderr)
