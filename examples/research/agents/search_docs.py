"""The `search_docs` tool: the lines of braid's Markdown docs that share the
most words with the query. A command agent: its arguments arrive on stdin
as {"state": {"q": ..., "limit": ...}}; it prints {"hits": [...]}."""
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[3]
FILES = ["README.md", "ARCHITECTURE.md", "BENCHMARKS.md", *sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
STOP = {"the", "a", "an", "and", "or", "of", "to", "in", "is", "are", "how", "what", "does", "do", "it", "for", "with"}

args = json.load(sys.stdin)["state"]
words = {w for w in re.findall(r"[a-z0-9_]+", args["q"].lower()) if w not in STOP}
limit = int(args.get("limit") or 5)
hits = []
for name in FILES:
    path = ROOT / name
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        found = set(re.findall(r"[a-z0-9_]+", line.lower())) & words
        if found:
            hits.append((len(found), name, number, line.strip(), str(path)))
hits.sort(key=lambda h: (-h[0], h[1], h[2]))
print(json.dumps({"hits": [
    {"file": f, "line": n, "text": t[:300], "path": p} for _, f, n, t, p in hits[:limit]
]}))
