"""The stages of examples/fanout/per-document.yaml; argv[1] names the stage."""
import json
import sys

stage = sys.argv[1]
state = json.load(sys.stdin)["state"]
if stage == "words":
    text = state["doc"]["text"].strip()
    if not text:
        sys.exit(f"{state['doc']['name']} is empty")
    out = len(text.split())
elif stage == "gist":
    out = state["doc"]["text"].strip().split(". ")[0].rstrip(".") + "."
elif stage == "card":
    out = {"n": state["doc_index"] + 1, "name": state["doc"]["name"], "words": state["words"], "gist": state["gist"]}
else:  # index
    out = "\n".join(
        f"{c['n']}. {c['name']} ({c['words']} words): {c['gist']}" if c else "- (a document could not be read)"
        for c in state["cards"]
    )
json.dump({stage: out}, sys.stdout)
