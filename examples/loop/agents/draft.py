"""Drafts a paragraph on `topic`: the previous round's draft (`previous`), plus what its critique (`feedback`) asked to add."""
import json
import sys

state = json.load(sys.stdin)["state"]
previous = state.get("previous")
points = list(previous["points"]) if previous else ["Independent agents run at the same time."]
feedback = state.get("feedback")
if feedback:
    points += feedback["add"]
json.dump({"draft": {"topic": state["topic"], "points": points}}, sys.stdout)
