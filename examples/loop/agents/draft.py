"""Drafts a paragraph on `topic`, addressing the previous round's critique (`feedback`) if there is one."""
import json
import sys

state = json.load(sys.stdin)["state"]
points = ["Independent agents run at the same time."]
feedback = state.get("feedback")
if feedback:
    points += feedback["add"]
json.dump({"draft": {"topic": state["topic"], "points": points}}, sys.stdout)
