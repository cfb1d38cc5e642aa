"""Lists the `.txt` documents of `folder` (relative to the pipeline's folder), sorted by name."""
import json
import pathlib
import sys

folder = pathlib.Path(json.load(sys.stdin)["state"]["folder"])
docs = [
    {"name": p.name, "text": p.read_text(encoding="utf-8")}
    for p in sorted(folder.glob("*.txt"))
]
print(f"found {len(docs)} documents in {folder}", file=sys.stderr)
json.dump({"docs": docs}, sys.stdout)
