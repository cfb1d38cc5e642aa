"""Writes the final draft as text, with its score."""
import json
import sys

state = json.load(sys.stdin)["state"]
draft, critique = state["final_draft"], state["final_critique"]
text = f"{draft['topic'].capitalize()}: " + " ".join(draft["points"]) + f" (score {critique['score']}/9)"
json.dump({"post": text}, sys.stdout)
