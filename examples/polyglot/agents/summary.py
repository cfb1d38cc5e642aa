"""Writes a one-line summary from the counts. `top_words` is an optional read."""
import json
import sys

state = json.load(sys.stdin)["state"]
top = ", ".join(state.get("top_words", [])) or "n/a"
summary = (
    f"{state['word_count']} words, {state['char_count']} characters; "
    f"most common: {top}"
)
json.dump({"summary": summary}, sys.stdout)
