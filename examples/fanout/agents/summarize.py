"""Summarises one document: its first sentence and its word count. Reads `doc` and `doc_index`."""
import json
import sys

state = json.load(sys.stdin)["state"]
doc = state["doc"]
text = doc["text"].strip()
if not text:
    sys.exit(f"{doc['name']} is empty")
first = text.split(". ")[0].rstrip(".") + "."
json.dump(
    {"summaries": {"n": state["doc_index"] + 1, "name": doc["name"], "words": len(text.split()), "gist": first}},
    sys.stdout,
)
